#!/usr/bin/env bash
# The CIFAR section of the paper (issue 23) in GPU windows: the bf16 check, then table 6's five ResNets
# and fig. 6's four plain nets (64k iterations each) within a budget, resumable in the next window.
# See scripts/gpu_cifar_section.py for the steps and benchmarks/README.md for the window plan.
#
#   bash scripts/gpu_cifar_section.sh --out "$OUT"                 # on the lent GPU, data carried in .carry/
#   bash scripts/gpu_cifar_section.sh --dry-run --out /tmp/cs      # every step on the CPU, tiny sizes
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON_BIN:-}
if [ -z "$PY" ]; then
    for candidate in .venv/bin/python /opt/torch/.venv/bin/python python3; do
        if command -v "$candidate" >/dev/null; then PY=$candidate; break; fi
    done
fi
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
exec "$PY" scripts/gpu_cifar_section.py "$@"
