#!/usr/bin/env bash
# The first-GPU check, one command, under 9 minutes on one H100/H200 (issue 21): three teacher families through
# the trainer in bf16 (tiny configs, real mp4 files), full-size Wan 2.1 and LTX-Video decoders at batch 4,
# 17x256^2 in bf16 and fp32 (TF32): s/step, clips/s, peak memory; on >= 2 GPUs also a torchrun pair (NCCL)
# killed with SIGKILL mid-run and resumed. Writes benchmarks/results/gpu_check.json.
#   bash benchmarks/gpu_check.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
[ -x "$PY" ] || PY=python3
"$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'gpu_check needs a CUDA build of torch and a GPU')"
exec "$PY" benchmarks/gpu_smoke.py --families wan21 ltx hunyuan --tiny-steps 20 --full-steps 12 \
  --full-precisions bf16 fp32 --run-timeout 100 --out benchmarks/results/gpu_check.json
