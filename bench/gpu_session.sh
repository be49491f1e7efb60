#!/usr/bin/env bash
# The GPU measurement in one command, on a GPU machine with no network:
#   bash bench/gpu_session.sh [--out FOLDER] [--budget SECONDS] [gpu_session.py options]
# The lent machine's exact call (carry, timeout_s) is in bench/README.md. Uses the machine's
# python3 (its torch) and adds what it lacks (dvc, dvclive, ...) from the wheels in .whl/
# (bench/gpu_wheels.sh makes them). Resumable: run it again and it goes on where the last run
# stopped (bench/gpu_session.py). What the machine lacks costs only the steps that need it.
set -euo pipefail
cd "$(dirname "$0")/.."

# Nothing below may end the run: what fails here costs only the steps that need it, which
# bench/gpu_session.py then skips, saying why.

# The DVC steps clone HEAD. The device tool may send the working tree without .git: commit the
# tree as it came, so they measure exactly what was sent.
if command -v git >/dev/null && ! git rev-parse --verify -q HEAD >/dev/null 2>&1; then
	echo "no git repository here: committing the working tree as sent, for the DVC steps"
	{ git init -q && git add -A &&
		git -c user.name=gpu-session -c user.email=gpu-session@normbench commit -qm "as sent"; } ||
		echo "warning: could not commit the working tree" >&2
fi

site=${TMPDIR:-/tmp}/normbench-site
if ! python3 -c 'import dvc, dvclive' 2>/dev/null; then
	if ls .whl/*.whl >/dev/null 2>&1; then
		python3 -m pip install --quiet --root-user-action=ignore --no-index --no-deps \
			--no-compile --no-cache-dir --upgrade --target "$site" .whl/*.whl ||
			echo "warning: the wheels in .whl/ did not install" >&2
		export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}" PATH="$site/bin:$PATH"
	else
		echo "warning: python3 lacks dvc and dvclive and .whl/ holds no wheels: the DVC steps" \
			"are skipped (bench/gpu_wheels.sh makes .whl/ where PyPI is reachable)" >&2
	fi
fi
# The stages' commands say `python`.
if ! command -v python >/dev/null; then
	mkdir -p "$site-bin"
	ln -sf "$(command -v python3)" "$site-bin/python"
	export PATH="$site-bin:$PATH"
fi
exec python3 bench/gpu_session.py "$@"
