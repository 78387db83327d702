#!/usr/bin/env bash
# Zero-shot throughput on a GPU machine: the old code and this checkout in one run, same card.
#
# Prepared here (a machine without a GPU):
#   mkdir -p .gpubase/benchmarks && cp -r /tmp/base/labeler .gpubase/ \
#       && cp /tmp/base/benchmarks/throughput.py .gpubase/benchmarks/     # old code (git worktree add /tmp/base REV)
#   python -m pip download --no-deps --only-binary=:all: -d .whl transformers==5.24.0   # the version used here
# then run with .gpubase and .whl carried to the GPU machine. Logs go to $OUT (or ./gpu_logs).
set -u -o pipefail
OUT=${OUT:-gpu_logs}; mkdir -p "$OUT"
N=${N:-4096}; B=${B:-256}; TIER=${TIER:-16}; WORKERS=${WORKERS:-8}
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH=/tmp/site
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/gpu.txt"
python3 -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__)" \
  | tee -a "$OUT/gpu.txt"
if [ -d .gpubase ]; then
  echo "== old code (.gpubase)"
  (cd .gpubase && PYTHONPATH=.:${PYTHONPATH:-} timeout ${BASE_TIMEOUT:-180} python3 benchmarks/throughput.py \
     --model full --images "$N" --batch "$B" --device cuda --skip-baseline) 2>&1 | grep -v "it/s\]" | tee "$OUT/old.log"
fi
echo "== this checkout"
PYTHONPATH=.:${PYTHONPATH:-} timeout ${NEW_TIMEOUT:-300} python3 benchmarks/throughput.py --model full --images "$N" \
  --batch "$B" --device cuda --skip-baseline --compile --tier-gb "$TIER" --workers "$WORKERS" 2>&1 \
  | grep -v "it/s\]" | tee "$OUT/new.log"
