#!/usr/bin/env bash
# GPU acceptance (issue 16): the CUDA tests, ResNet-50 and CIFAR ResNet-56 throughput, the real loop's
# time per 1,000 iterations, and the paper's degradation grid on Fashion-MNIST, with figures and a
# summary in benchmarks/results/gpu/<date>-<gpu>/. See scripts/gpu_acceptance.py for the steps.
#
#   bash scripts/gpu_acceptance.sh                    # on a CUDA machine (about 8 minutes on an H100/H200)
#   bash scripts/gpu_acceptance.sh --dry-run --out /tmp/acc   # every step on the CPU, tiny sizes
#   bash scripts/gpu_acceptance.sh --steps tests,bench,cifar  # some steps
#
# Fashion-MNIST is read from .gpudata/FashionMNIST/raw/ (copy the four .gz files there) or --data-dir.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON_BIN:-}
if [ -z "$PY" ]; then
    if [ -x .venv/bin/python ]; then PY=.venv/bin/python; else PY=python3; fi
fi
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
exec "$PY" scripts/gpu_acceptance.py "$@"
