#!/usr/bin/env bash
# The GPU checks of benchmarks/gpu.py, on a machine with a CUDA GPU, from a fresh clone:
#   bash benchmarks/gpu.sh            results printed and appended to benchmarks/RESULTS.md
#   bash benchmarks/gpu.sh --cpu      the same code paths, tiny, on the CPU, printed only (checks the script)
set -euo pipefail
cd "$(dirname "$0")/.."
make install >/dev/null
if [[ "${1:-}" == "--cpu" ]]; then
    exec .venv/bin/python -m benchmarks.gpu --cpu
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
exec .venv/bin/python -m benchmarks.gpu --out benchmarks/RESULTS.md
