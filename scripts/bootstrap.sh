#!/usr/bin/env bash
# Create .venv and install turbovaed with everything it needs. Every install goes through
# constraints.txt, which pins torch to the local CPU wheel (never the multi-GB CUDA build).
#   bash scripts/bootstrap.sh        # library + video + every export backend (Apple Core AI included: it runs on Linux)
#   bash scripts/bootstrap.sh dev    # ... plus the test tools
#   bash scripts/bootstrap.sh gpu    # a CUDA training node: PyPI's Linux torch wheel (the CUDA build), video, TensorBoard
set -euo pipefail
cd "$(dirname "$0")/.."
extras="video,export,coreai"
[ "${1:-}" = "dev" ] && extras="video,export,coreai,dev,tensorboard"
[ "${1:-}" = "gpu" ] && extras="video,tensorboard"
if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
# pip's and the build backend's chatter goes to a log; a failure prints its end.
log=.venv/bootstrap.log
pip_install() {
  if ! .venv/bin/python -m pip install -q "$@" >>"$log" 2>&1; then
    echo "error: pip install $* failed; the end of $log:" >&2
    tail -n 30 "$log" >&2
    exit 1
  fi
}
echo "installing turbovaed[${extras}] into .venv (pip's output: $log)"
pip_install --upgrade pip
pip_install -c constraints.txt "torch==2.13.0"
pip_install -c constraints.txt -e ".[${extras}]"
if [ "${1:-}" = "dev" ]; then
  # The browser test (tests/test_web_demo.py) needs Debian's Chromium and onnxruntime-web from npm.
  # Best effort: without them that one test skips and says why.
  if ! command -v chromium >/dev/null 2>&1; then
    SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo -n"
    (DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q chromium >/dev/null 2>&1 || {
       $SUDO apt-get update -q >/dev/null 2>&1 && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q chromium >/dev/null 2>&1; }) \
      || echo "note: could not install chromium; the web demo test will skip"
  fi
  if command -v npm >/dev/null 2>&1; then
    npm ci --prefix device_apps/web --no-audit --no-fund --silent || echo "note: npm ci failed; the web demo test will skip"
  else
    echo "note: npm not found; the web demo test will skip"
  fi
fi
.venv/bin/python -c "import torch, diffusers; print(f'turbovaed ready: torch {torch.__version__}, diffusers {diffusers.__version__}, CUDA devices: {torch.cuda.device_count()}')"
