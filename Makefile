# The two commands of the README: `make repro` and `make test`. Both set up .venv first.
VENV := .venv
STAMP := $(VENV)/.installed
# Stage commands say `python`; this makes it the virtual environment's.
export PATH := $(abspath $(VENV))/bin:$(PATH)

.PHONY: setup repro test weights compare clean-venv

$(STAMP): requirements.txt pyproject.toml
	python3 -m venv $(VENV)
	$(VENV)/bin/pip install --quiet -r requirements.txt
	touch $@

setup: $(STAMP)

repro: setup
	dvc repro

test: setup
	python -m pytest -q

# ImageNet weights of the configured models into $$TORCH_HOME, for machines that go offline later.
weights: setup
	PYTHONPATH=src python -m normbench.fetch_weights

# Tables 1-3 and Figure 1 over all DVC experiments of this repository, into compare/.
compare: setup
	PYTHONPATH=src python -m normbench.compare

clean-venv:
	rm -rf $(VENV)
