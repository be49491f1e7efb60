# The two commands of the README: `make repro` and `make test`. Both set up .venv first.
VENV := .venv
STAMP := $(VENV)/.installed
# Stage commands say `python`; this makes it the virtual environment's.
export PATH := $(abspath $(VENV))/bin:$(PATH)

.PHONY: setup system-packages repro test weights compare study figure clean-venv mutation

# pyproject.toml's requires-python, checked before anything is installed. Then the pinned
# requirements, then normbench itself, editable (src/ as it is) and offline: built by the venv's
# own setuptools (requirements.txt), so `python -m normbench` works in the activated venv.
$(STAMP): requirements.txt pyproject.toml
	@python3 -c 'import sys; sys.exit(sys.version_info < (3, 11, 4))' || \
		{ echo "normbench needs Python >= 3.11.4 (hashlib.file_digest, tarfile's extraction filters); python3 is $$(python3 -V)"; exit 1; }
	python3 -m venv $(VENV)
	$(VENV)/bin/pip install --quiet -r requirements.txt
	$(VENV)/bin/pip install --quiet --no-deps --no-build-isolation -e .
	touch $@

# The `dvc plots` page template: vega, vega-lite and vega-embed inlined from vl-convert-python,
# so `dvc plots show` / `diff` render offline. Named in .dvc/config.local (this machine's, git-
# ignored by DVC); without it .dvc/config's page says to run `make setup`.
PLOTS_PAGE := .dvc/plots/offline.html
$(PLOTS_PAGE): $(STAMP) src/normbench/plots_page.py
	PYTHONPATH=src python -m normbench.plots_page $@

setup: $(STAMP) $(PLOTS_PAGE)
	@grep -qs '^ *html_template = plots/offline.html' .dvc/config.local || \
		dvc config --local plots.html_template plots/offline.html

# Ends by saying whether this machine reproduced the committed dvc.lock, and if not, what to
# compare against instead (normbench.reproduction).
repro: setup
	dvc repro
	PYTHONPATH=src python -m normbench.reproduction

# Debian packages the tests drive for real: a headless browser (the HTML pages) and a one-node
# Slurm (the cluster launcher). Installed when missing and apt-get can be used (root); otherwise
# the command is printed, and the tests that need them fail naming it.
DEBIAN_PACKAGES := chromium slurmd slurmctld munge
system-packages:
	@missing=$$(for p in $(DEBIAN_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	if [ -z "$$missing" ]; then exit 0; fi; \
	if [ "$$(id -u)" = 0 ]; then \
		echo "installing Debian packages:" $$missing; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
			apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	else \
		echo "missing Debian packages; run: sudo apt-get install" $$missing; \
	fi

# In parallel (pytest-xdist), two workers per core, a whole test module per worker (--dist
# loadfile): a module's tests share its module-scoped fixtures (a reproduced DVC repository, a
# trained model), built once, and each shared resource (the one-node Slurm, the Chromium browser)
# is driven by one module. (--dist loadgroup would group by xdist_group marks, but pytest-xdist
# 3.8 loses them under pytest 9.2: pytest-xdist#1386.) The modules go out in the order of
# tests/conftest.py, longest first, not xdist's default of the most tests first. Two per core:
# the suite is CPU-bound in all (bench/suite_time.py), but each test also waits (DVC's queue
# workers starting, polls), and one worker per core left the cores idle then. At most 16: the
# longest modules set the end, and a worker with no module left only holds memory.
TEST_WORKERS := $(shell n=$$((2 * $$(nproc))); echo $$((n < 16 ? n : 16)))
test: setup system-packages
	python -m pytest -q -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder

# ImageNet weights of the configured models into $$TORCH_HOME, for machines that go offline later.
weights: setup
	PYTHONPATH=src python -m normbench.fetch_weights

# Tables 1-3 and Figure 1 over HEAD and its DVC experiments, into compare/; ALL_COMMITS=1: over
# every commit and experiment of the repository (slower: DVC reads each commit).
ALL_COMMITS ?=
compare: setup
	PYTHONPATH=src python -m normbench.compare $(if $(ALL_COMMITS),--all-commits)

# Every setting with seeds as DVC experiments, run, then compared into compare/. What to run:
#   make study NORMS="dataset minmax" WEIGHTS="scratch imagenet" SEEDS="1 2 3 4 5 6 7 8 9 10"
#   BASELINE=dataset (the norm each other norm is compared with, under the same weights)
#   WEIGHTS=pretrained PRETRAIN_NORMS="dataset minmax" NORMS="pretraining dataset minmax" (the
#   mismatch study: the pipeline's own pretraining under each norm, fine-tuned under each norm)
#   SET="train.epochs=30" (further params for every experiment), JOBS=4 (experiments at once),
#   EXECUTOR=slurm SLURM="slurm_partition=gpu gpus_per_node=1 timeout_min=600" (one Slurm job
#   per experiment; SPLIT_SEEDS=1: one per setting and seed).
NORMS ?= dataset imagenet instance minmax none
BASELINE ?= dataset
PRETRAIN_NORMS ?= dataset
WEIGHTS ?= scratch
# 10: a verdict on the default page (8 comparisons) needs 9 seeds, the exact sign-flip test's
# floor 2/2^n below 0.05 / 8 (docs/statistics.md, How many seeds).
SEEDS ?= 1 2 3 4 5 6 7 8 9 10
SET ?=
JOBS ?= auto
EXECUTOR ?= local
SLURM ?=
SPLIT_SEEDS ?=
study: setup
	PYTHONPATH=src python -m normbench.study --norms $(NORMS) --weights $(WEIGHTS) --baseline $(BASELINE) \
		--pretrain-norms $(PRETRAIN_NORMS) \
		--seeds $(SEEDS) --set $(SET) --jobs $(JOBS) --executor $(EXECUTOR) --slurm $(SLURM) \
		$(if $(SPLIT_SEEDS),--split-seeds)

# The README's picture, from the embedded study as the README shows it (3 seeds, 30 cells; a
# SEEDS given on the command line still wins): `make study` trains only what is not done yet,
# rewrites compare/, and its verdict figure becomes docs/study.png.
figure: SEEDS = 1 2 3
figure: study
	mkdir -p docs
	cp compare/verdicts.png docs/study.png

clean-venv:
	rm -rf $(VENV)

# Mutation testing (mutmut 3, configured in pyproject.toml [tool.mutmut]): the files it lists
# (significance.py, normalizations.py, stats.py; runs.py, compare.py and weightcompare.py but
# their I/O) mutated one change at a time, each mutant run against the fast unit tests that
# call it; ends with the list of mutants no test killed (`mutmut show NAME`).
# From scratch each time (mutmut's working copy is ./mutants/). MUTATION_JOBS: mutants at once
# (default: one per CPU).
MUTATION_JOBS ?=
mutation: setup
	rm -rf mutants
	mutmut run $(if $(MUTATION_JOBS),--max-children $(MUTATION_JOBS))
	mutmut results
