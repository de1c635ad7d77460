#!/usr/bin/env bash
# One short call on a machine with one NVIDIA GPU (under 8 minutes, nothing downloaded):
#   1. the gpu-marked tests (bf16 step and master weights on CUDA, resume on CUDA),
#   2. `sift bench engine` on CUDA (4096x4096 and 4096x14336 blocks among its shapes),
#   3. a few bf16 training steps of a random-initialised Llama-2-7B-shaped model (full depth if it fits,
#      else fewer layers) with AdamW, Muon and SIFT: step time as ratios to Muon, peak memory against
#      the dry-run estimate.
# Run from anywhere: scripts/gpu_check.sh   (PYTHON=... picks the interpreter; default: python)
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python}"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false

"$PYTHON" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'gpu_check.sh needs a CUDA device')"
"$PYTHON" -c "import torch; print('device:', torch.cuda.get_device_name(0), '| torch', torch.__version__)"

echo "== 1/3 gpu tests"
"$PYTHON" -m pytest -q -m gpu tests

echo "== 2/3 engine bench (cuda)"
"$PYTHON" -m sift_cli.cli bench engine --device cuda

echo "== 3/3 bf16 training steps, Llama-2-7B shapes"
"$PYTHON" scripts/gpu_steps.py --model configs/models/llama-2-7b --steps 3 --batch 1 --length 512
