#!/usr/bin/env bash
# ConvNeXt-Tiny GPU throughput check from a bare repository checkout: no crossderm install, no internet, no pip
# unless wheels were carried in .whl/ (installed offline into a temporary folder). See benchmarks/README.md.
# Usage: bash benchmarks/gpu_check.sh [--compile] [--batch-size N] [--json FILE] [--cpu-smoke] ...
set -euo pipefail
cd "$(dirname "$0")/.."
if compgen -G ".whl/*.whl" > /dev/null; then
    site="${TMPDIR:-/tmp}/crossderm-gpu-check-site"
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$site" .whl/*.whl
    export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
exec python3 benchmarks/gpu_check.py "$@"
