#!/usr/bin/env bash
# Sets up .venv (if absent), trains the demo config on the built-in synthetic set, evaluates its
# panoptic output and draws its semantic, panoptic and instance predictions for four scenes.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
.venv/bin/pip install --quiet --upgrade pip
.venv/bin/pip install --quiet -r requirements.txt
# glibc's allocator otherwise returns and re-faults XLA's CPU buffers page by page every step.
export GLIBC_TUNABLES="${GLIBC_TUNABLES:-glibc.malloc.hugetlb=1}"
workdir="${WORKDIR:-runs/demo}"
.venv/bin/python train.py --workdir "$workdir" "$@"
.venv/bin/python eval.py --config configs/demo.py --workdir "$workdir" --config.inference.task=panoptic "$@"
.venv/bin/python -m maskformer_jax.data.synthetic --output "$workdir/scenes" --count 4
for task in semantic panoptic instance; do
  .venv/bin/python predict.py --config configs/demo.py --checkpoint "$workdir" --output "$workdir/pictures/$task" \
    --config.inference.task=$task "$@" "$workdir/scenes"
done
