#!/usr/bin/env bash
# One command that checks a GPU machine and measures it: the parity tests at "highest" precision,
# compare.py against Hugging Face (R50 and Swin-T at 512² batch 8 in bfloat16, R50 in float32),
# memory.py for Swin-L 640² with and without remat, a 100-step train.py run on synthetic 512² scenes,
# and the COCO canvas benchmark. Every part gets what is left of DEADLINE_S (default 480 s) and is
# stopped at its own limit; OUT/summary.txt names each part's status and its result lines, and
# OUT/details.log holds everything printed.
#
#   bash benchmarks/gpu_check.sh [OUT] [PART ...]
#   PARTS: parity compare_r50 compare_swin_t compare_r50_fp32 memory train canvas (default: all, in this order)
#
# Python packages missing on the machine can come as wheels: WHEELS=DIR installs DIR/*.whl into a
# temporary folder first (pip --no-index --no-deps --target).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-runs/gpu_check}
shift || true
PARTS=${*:-parity compare_r50 compare_swin_t compare_r50_fp32 memory train canvas}
DEADLINE=$(( $(date +%s) + ${DEADLINE_S:-480} ))
PYTHON=${PYTHON:-python3}
mkdir -p "$OUT"
SUMMARY="$OUT/summary.txt" DETAILS="$OUT/details.log"
export PYTHONUNBUFFERED=1 XLA_PYTHON_CLIENT_PREALLOCATE=false HF_HUB_OFFLINE=1
if [ -n "${WHEELS:-}" ]; then
  $PYTHON -m pip install -q --no-index --no-deps --no-compile --target /tmp/gpu_check_site "$WHEELS"/*.whl || exit 1
  export PYTHONPATH=/tmp/gpu_check_site${PYTHONPATH:+:$PYTHONPATH}
fi
{
  echo "gpu_check $(date -u +%Y-%m-%dT%H:%MZ), commit $(git rev-parse --short HEAD 2>/dev/null)"
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null
  $PYTHON -c "import jax, flax; print('jax', jax.__version__, 'flax', flax.__version__, jax.devices())"
} | tee "$SUMMARY"

# part NAME LIMIT_S PATTERN COMMAND...: run COMMAND with at most LIMIT_S seconds (less if the deadline
# is nearer), log it, and copy the lines matching PATTERN into the summary.
part() {
  local name=$1 limit=$2 pattern=$3
  shift 3
  local left=$(( DEADLINE - $(date +%s) ))
  if [ "$left" -lt 30 ]; then
    echo "[$name] skipped: the deadline is reached" | tee -a "$SUMMARY"
    return
  fi
  [ "$limit" -gt "$left" ] && limit=$left
  echo "=== $name (limit ${limit}s): $*" >> "$DETAILS"
  local start=$(date +%s) log
  log=$(timeout -k 20 "$limit" "$@" 2>&1)
  local status=$?
  echo "$log" >> "$DETAILS"
  local verdict="ok"
  [ $status -eq 124 ] && verdict="stopped at its limit"
  [ $status -ne 0 ] && [ $status -ne 124 ] && verdict="failed (exit $status)"
  echo "[$name] $verdict in $(( $(date +%s) - start ))s" | tee -a "$SUMMARY"
  echo "$log" | grep -E "$pattern" | tail -n 12 | sed 's/^/    /' | tee -a "$SUMMARY"
}

for name in $PARTS; do
  case $name in
    parity) part parity 240 "passed|failed|error" $PYTHON -m pytest -q -p no:cacheprovider \
      tests/test_weights_hf.py tests/test_weights_imagenet.py tests/test_padding.py tests/test_losses.py \
      tests/test_models.py -k "equal or hf or reference or canvas or padding or precision" ;;
    compare_r50) part compare_r50 200 "ours|theirs|train step|batch" $PYTHON -m benchmarks.compare \
      --config configs/ade20k_r50.py --config.batch_size=8 "--config.dataset.image_size=(512, 512)" \
      --config.loss.max_targets=10 --config.model.dtype=bfloat16 --steps 10 ;;
    compare_swin_t) part compare_swin_t 200 "ours|theirs|train step|batch" $PYTHON -m benchmarks.compare \
      --config configs/ade20k_swin_t.py --config.batch_size=8 "--config.dataset.image_size=(512, 512)" \
      --config.loss.max_targets=10 --config.model.dtype=bfloat16 --steps 10 ;;
    compare_r50_fp32) part compare_r50_fp32 200 "ours|theirs|train step|batch" $PYTHON -m benchmarks.compare \
      --config configs/ade20k_r50.py --config.batch_size=8 "--config.dataset.image_size=(512, 512)" \
      --config.loss.max_targets=10 --steps 10 ;;
    memory) part memory 240 "device|state|temporary|total|remat" bash -c \
      "$PYTHON -m benchmarks.memory --config configs/ade20k_swin_l.py --config.batch_size=2 --config.model.dtype=bfloat16 && \
       $PYTHON -m benchmarks.memory --config configs/ade20k_swin_l.py --config.batch_size=2 --config.model.dtype=bfloat16 --remat" ;;
    train) rm -rf /tmp/gpu_check_train
      part train 240 "^step (10|50|100)/|compil|input wait" $PYTHON train.py --workdir /tmp/gpu_check_train \
      --config configs/ade20k_r50.py --config.dataset.name=synthetic "--config.dataset.synthetic_size=(512,683)" \
      --config.batch_size=16 --config.num_steps=100 --config.model.dtype=bfloat16 --config.dataset.num_workers=12 \
      --config.log_every=10 --config.checkpoint_every=100 --config.compilation_cache_dir=none ;;
    canvas) part canvas 300 "padding|coco_panoptic" $PYTHON -m benchmarks.coco_canvas --config.batch_size=2 \
      --config.loss.max_targets=20 --config.model.dtype=bfloat16 --steps 5 ;;
    *) echo "unknown part $name" | tee -a "$SUMMARY" ;;
  esac
done
echo "summary: $SUMMARY, everything: $DETAILS"
