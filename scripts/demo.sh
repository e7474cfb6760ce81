#!/usr/bin/env bash
# Sets up .venv (if absent) and trains the demo config on the built-in synthetic set.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
.venv/bin/pip install --quiet --upgrade pip
.venv/bin/pip install --quiet -r requirements.txt
.venv/bin/python train.py --workdir "${WORKDIR:-runs/demo}" "$@"
