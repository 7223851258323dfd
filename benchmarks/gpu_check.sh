#!/usr/bin/env bash
# The GPU check: run this first in a session with a lent GPU (about 15 minutes of device time in all).
#   benchmarks/gpu_check.sh                      # cuda, GPT-2 Small layer 6, figures in ./gpu-check-out/
#   benchmarks/gpu_check.sh --out $OUT --layer 6 # where the figures go ($OUT on the device machine)
#   benchmarks/gpu_check.sh --device cpu --budget tiny   # the dry run tests/benchmarks/test_gpu_check.py does
# It installs nothing that `make env` doesn't (the locked .venv), then runs benchmarks/gpu_check.py:
# the gpt2-small preset at a reduced budget on one layer, the caching benchmark against SAELens and
# the prune-vs-retrain benchmark, each under its own time limit; every figure lands in
# <out>/gpu_check.json (+ gpu_check.md, logs/). See docs/benchmarks.md "GPU check".
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "${GPU_CHECK_SKIP_ENV:-0}" != 1 ]; then
  make --no-print-directory env
fi
exec .venv/bin/python benchmarks/gpu_check.py "$@"
