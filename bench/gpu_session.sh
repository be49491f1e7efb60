#!/usr/bin/env bash
# The GPU measurement in one command, on a GPU machine with no network:
#   bash bench/gpu_session.sh [--budget SECONDS] [--pack FILE.tar.gz] [gpu_session.py options]
# Uses the machine's python3 (its torch) and adds what it lacks (dvc, dvclive, ...) from the
# wheels in .whl/ (bench/gpu_wheels.sh makes them). Resumable: run it again and it goes on
# where the last run stopped (bench/gpu_session.py). --pack writes bench/results/ into one
# archive at the end, whatever happened, for machines whose files are lost when they go back.
set -euo pipefail
cd "$(dirname "$0")/.."
pack=
args=()
while [ $# -gt 0 ]; do
	case $1 in
	--pack) pack=$2; shift 2 ;;
	*) args+=("$1"); shift ;;
	esac
done
if [ -n "$pack" ]; then
	trap 'tar czf "$pack" bench/results && echo "bench/results packed into $pack"' EXIT
fi
if ! command -v git >/dev/null; then
	echo "error: git is not installed here; the DVC steps need it" >&2
	exit 2
fi
if ! git rev-parse --verify -q HEAD >/dev/null; then
	echo "error: run inside a git clone of normbench with its changes committed:" \
		"the DVC steps clone HEAD" >&2
	exit 2
fi

site=${TMPDIR:-/tmp}/normbench-site
if ! python3 -c 'import dvc, dvclive' 2>/dev/null; then
	if ! ls .whl/*.whl >/dev/null 2>&1; then
		echo "error: python3 lacks dvc and dvclive, and .whl/ holds no wheels;" \
			"run bench/gpu_wheels.sh where PyPI is reachable and bring .whl/ along" >&2
		exit 2
	fi
	python3 -m pip install --quiet --root-user-action=ignore --no-index --no-deps --no-compile \
		--no-cache-dir --upgrade --target "$site" .whl/*.whl
	export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}" PATH="$site/bin:$PATH"
fi
# The stages' commands say `python`.
if ! command -v python >/dev/null; then
	mkdir -p "$site-bin"
	ln -sf "$(command -v python3)" "$site-bin/python"
	export PATH="$site-bin:$PATH"
fi
python3 bench/gpu_session.py "${args[@]}"
