#!/bin/sh
# The GPU benchmark as one device call (bench/RESULTS.md, "Next GPU run"): install the
# carried wheels (.whl: transformers 5.24, pymupdf), then the attention kernels (decode steps
# and prefills with and without cuDNN, on new shapes and again, and a prefill's profile), and
# three end-to-end runs on the same 192 pages at 900 tokens, each with its device timeline:
# the engine's own decode slots (128 on an 80 GB card since session 9; session 8 ran 96:
# 2.89 pages/s), the same with prefills kept off cuDNN (do prefill plans cost the ~0.6 s a
# call session 8 saw?), and 192 slots; last the step table (decode step by rows for each MoE
# experts setting and for generate). Session 8's engine comparison (refill 8.6x naive) is
# left out for time. Each step has its own time limit so that a slow one still leaves the
# others' numbers in $OUT: 80 + 3 x 130 + 50 = 520 s of limits, ~9 minutes with the wheels.
set -u
OUT=${OUT:-/tmp/ocrpress-gpu}
mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
  --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1
export PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
python3 -c "import sys, torch, transformers, pymupdf; print(sys.version.split()[0], \
torch.__version__, transformers.__version__, pymupdf.__version__)" | tee -a "$OUT/gpu.txt"
timeout 80 python3 bench/gpu_profile.py --plans 16,96 --long 48 --batches 1 2>&1 \
  | grep -v USDT | tee "$OUT/plans.log"
E2E="--end-to-end --pages 192 --min-tokens 900 --max-tokens 900 --workers 6"
timeout "${E2E_S:-130}" python3 bench/gpu_throughput.py $E2E --slots 0 2>&1 \
  | tee "$OUT/e2e_auto.log"
timeout "${E2E_S:-130}" python3 bench/gpu_throughput.py $E2E --slots 0 --prefill-no-cudnn 2>&1 \
  | tee "$OUT/e2e_auto_prefill_nocudnn.log"
timeout "${E2E_S:-130}" python3 bench/gpu_throughput.py $E2E --slots 192 2>&1 \
  | tee "$OUT/e2e192.log"
timeout "${PROFILE_S:-50}" python3 bench/gpu_profile.py --batches 1,16,32,64 --long 48 \
  --prep-threads 1,4 2>&1 | grep -v USDT | tee "$OUT/profile.log"
