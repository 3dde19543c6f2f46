#!/usr/bin/env bash
# Every CUDA path of the project against the CPU, at small sizes, in one command (a few minutes
# on one GPU): training fp32 and --amp (in the dtypes it promises), the attention decoder,
# --shuffle-frames and SCST, the three feature-bank paths, torchrun (one process per GPU, 2 when
# two exist), extraction fp32 / bf16 (the precision computed and recorded) and its batch-size
# invariance, timm and RAFT, caption (with --attention), evaluate, and resuming a CPU checkpoint
# on the GPU; each check also runs alone (--only NAME ...).
# Writes $OUT/gpu_check.json ({"device", "torch", "checks": {name: {"pass", "detail"}}}) and
# exits 1 when a check fails. Assumes the project is installed (pip install -e .); evaluate's
# METEOR needs Java, found or installed as scripts/_env.sh does.
#
#   OUT=/tmp/g scripts/gpu_check.sh                    # on a machine with a CUDA GPU
#   DEVICE=cpu QUICK=1 OUT=/tmp/g scripts/gpu_check.sh # the CPU against itself: the script and its paths still work
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/_java.sh
OUT="${OUT:-gpu_check_results}"
DEVICE="${DEVICE:-cuda}"
PY="${PYTHON:-python}"
mkdir -p "$OUT"
exec "$PY" -m s2vt.apps.gpu_check --device "$DEVICE" --out "$OUT/gpu_check.json" ${QUICK:+--quick} "$@"
