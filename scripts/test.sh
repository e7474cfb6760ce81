#!/usr/bin/env bash
# Creates .venv (if absent), installs the test dependencies (torch's CPU build first) and runs the tests,
# one test file per worker process on up to 4 cores (pytest-xdist); extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
.venv/bin/pip install --quiet --upgrade pip
.venv/bin/pip install --quiet torch==2.13.0
.venv/bin/pip install --quiet -r requirements-test.txt
HF_HUB_OFFLINE=1 .venv/bin/python -m pytest -n auto --maxprocesses 4 --dist loadfile "$@"
