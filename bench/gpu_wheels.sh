#!/usr/bin/env bash
# Download the wheels of bench/gpu_wheels.txt into .whl/ (git-ignored), for a GPU machine whose
# python3 is CPython 3.12 on x86-64 Linux and that cannot reach a package index itself:
# bench/gpu_session.sh installs them there. Run here, where PyPI is reachable.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON_VERSION=${PYTHON_VERSION:-3.12}
mkdir -p .whl
# antlr4-python3-runtime (hydra-core's, dvc's) is published as source only: build its wheel,
# pure Python, here.
grep -i '^antlr4-python3-runtime==' bench/gpu_wheels.txt |
	xargs python3 -m pip wheel --quiet --no-deps --wheel-dir .whl
grep -v -i -e '^#' -e '^antlr4-python3-runtime==' bench/gpu_wheels.txt >.whl/binary.txt
python3 -m pip download --quiet --no-deps --only-binary=:all: --dest .whl \
	--python-version "$PYTHON_VERSION" --implementation cp \
	--platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
	--platform manylinux_2_26_x86_64 --platform manylinux_2_17_x86_64 \
	--platform manylinux2014_x86_64 -r .whl/binary.txt
rm .whl/binary.txt
echo "$(ls .whl/*.whl | wc -l) wheels, $(du -sh .whl | cut -f1) in .whl/"
