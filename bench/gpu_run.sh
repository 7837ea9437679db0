#!/bin/sh
# The GPU benchmark as one device call (bench/RESULTS.md, "Next GPU run"): install the carried
# wheels (.whl: transformers 5.24, pymupdf), then the kernel checks in one process (decode
# steps eager against CUDA graphs at 1, 16 and 64 rows, the host's waits in a 64-row decode
# with graphs and tokens read late, counted by CUDA's sync debug mode and by wrapping the
# events' synchronize (which it does not see), then in an 8-row one whose cache budget parks
# rows; last, as the time limit may cut them, decode steps and prefills with and without
# cuDNN, on new shapes and again, and a prefill's profile), and three end-to-end runs on the
# same 192 pages at 900 tokens with the engine's own decode slots (128 on an 80 GB card;
# session 8 ran 96: 2.89 pages/s), each with its device timeline: eager decode steps, decode
# steps as CUDA graphs, and graphs with each step's tokens read a step late (the prefill's
# cuDNN question is the checks' to answer). Session 8's step table and engine comparison
# (refill 8.6x naive) are left out for time. Each step has its own time limit so that a slow
# one still leaves the others' numbers in $OUT: 120 + 3 x 130 = 510 s of limits, ~9 minutes
# with the wheels.
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
timeout "${CHECK_S:-120}" python3 bench/gpu_profile.py --plans 16,96 --graphs 1,16,64 --long 48 \
  --batches 1 2>&1 | grep -v USDT | tee "$OUT/checks.log"
E2E="--end-to-end --pages 192 --min-tokens 900 --max-tokens 900 --workers 6 --slots 0"
timeout "${E2E_S:-130}" python3 bench/gpu_throughput.py $E2E 2>&1 | tee "$OUT/e2e_eager.log"
timeout "${E2E_S:-130}" python3 bench/gpu_throughput.py $E2E --cuda-graphs 2>&1 \
  | tee "$OUT/e2e_graphs.log"
timeout "${E2E_S:-130}" python3 bench/gpu_throughput.py $E2E --cuda-graphs --read-late 2>&1 \
  | tee "$OUT/e2e_graphs_read_late.log"
