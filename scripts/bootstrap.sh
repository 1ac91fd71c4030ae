#!/usr/bin/env bash
# Create .venv and install turbovaed with everything it needs. Every install goes through
# constraints.txt, which pins torch to the local CPU wheel (never the multi-GB CUDA build).
#   bash scripts/bootstrap.sh        # library + video + export stack
#   bash scripts/bootstrap.sh dev    # ... plus test tools
set -euo pipefail
cd "$(dirname "$0")/.."
extras="video,export"
[ "${1:-}" = "dev" ] && extras="video,export,dev"
if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -c constraints.txt "torch==2.13.0"
.venv/bin/python -m pip install -q -c constraints.txt -e ".[${extras}]"
.venv/bin/python -c "import torch, diffusers; print(f'turbovaed ready: torch {torch.__version__}, diffusers {diffusers.__version__}')"
