#!/usr/bin/env bash
# Creates .venv (if absent), installs the test dependencies (torch's CPU build first, libtpu apart) and runs the tests,
# one test file per worker process on up to 4 cores (pytest-xdist); extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
.venv/bin/pip install --quiet --upgrade pip
.venv/bin/pip install --quiet torch==2.13.0
.venv/bin/pip install --quiet -r requirements-test.txt
# libtpu, at the version jax pins for TPUs, in a folder of its own: tests/test_tpu.py compiles for a TPU
# slice with it (a ~140 MB download, ~700 MB installed); the rest of the suite never loads it.
LIBTPU=$(.venv/bin/python -c 'import importlib.metadata as m; print(next(r.split(";")[0].replace(" ", "") for r in m.requires("jax") if r.startswith("libtpu")))')
if [ "$(cat .venv/libtpu.version 2>/dev/null)" != "$LIBTPU" ]; then
  rm -rf .venv/libtpu .venv/libtpu.version
  if .venv/bin/pip install --quiet --no-deps --target .venv/libtpu "$LIBTPU"; then
    echo "$LIBTPU" > .venv/libtpu.version
  else
    rm -rf .venv/libtpu
    echo "libtpu ($LIBTPU) could not be installed: the TPU compilation tests will skip" >&2
  fi
fi
HF_HUB_OFFLINE=1 .venv/bin/python -m pytest -n auto --maxprocesses 4 --dist loadfile "$@"
