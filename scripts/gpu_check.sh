#!/usr/bin/env bash
# The prepared GPU check: scripts/gpu_check.sh OUTDIR [--cpu-smoke]
# Runs the project from this source tree (PYTHONPATH, no install, no network) on a stock CUDA machine
# and writes OUTDIR/gpu_check.log and OUTDIR/gpu_check.json; the sections are described in
# train/gpu_check/. PYTHON picks the interpreter (default python3).
set -euo pipefail
if [ $# -lt 1 ]; then
    echo "usage: scripts/gpu_check.sh OUTDIR [--cpu-smoke]" >&2
    exit 2
fi
mkdir -p "$1"
OUT=$(cd "$1" && pwd)
shift
cd "$(dirname "$0")/.."
PYTHONPATH=. HF_HUB_OFFLINE=1 "${PYTHON:-python3}" -m train.gpu_check "$OUT" "$@" 2>&1 | tee "$OUT/gpu_check.log"
exit "${PIPESTATUS[0]}"
