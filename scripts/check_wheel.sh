#!/usr/bin/env bash
# Build the wheel, install it into a fresh virtual environment (torch from the same pins as
# scripts/_env.sh) and run the installed `s2vt` end to end on a tiny embedded dataset:
# --version, synth, extract, train and one caption. Run by .ci/run after the test suite.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PY="${PYTHON:-python3}"
WORK="$(mktemp -d "${TMPDIR:-/tmp}/s2vt-wheel.XXXXXX")"
trap 'rm -rf "$WORK"' EXIT
cd "$WORK"

"$PY" -m venv venv
venv/bin/python -m pip install --quiet --upgrade pip setuptools wheel
venv/bin/python -m pip wheel --quiet --no-deps -w dist "$ROOT"
TORCH_INDEX=()
if [ -n "${S2VT_TORCH_INDEX:-}" ]; then TORCH_INDEX=(--index-url "$S2VT_TORCH_INDEX"); fi
venv/bin/python -m pip install --quiet ${TORCH_INDEX[@]+"${TORCH_INDEX[@]}"} "torch==2.14.1" "torchvision==0.29.1" \
    || venv/bin/python -m pip install --quiet ${TORCH_INDEX[@]+"${TORCH_INDEX[@]}"} "torch>=2.11,<3" "torchvision>=0.26,<1"
venv/bin/python -m pip install --quiet dist/s2vt-*.whl

cd "$WORK"  # not the clone: the installed package must stand alone
S2VT=venv/bin/s2vt
"$S2VT" --version
"$S2VT" synth data --train 6 --val 2 --test 2 --frames 12 --width 64 --height 48 --workers 1 >/dev/null
"$S2VT" extract data/videos --out rgb.h5 --stride 3 --input-size 64 --workers 0 >/dev/null
"$S2VT" train --recipe small --dataset synthetic --annotations data --features rgb.h5 --out run --epochs 2 \
    --embed 16 --hidden 16 --no-val-meteor --quiet >/dev/null
video="$(ls data/videos | head -n 1)"
out="$("$S2VT" caption "data/videos/$video" --checkpoint run/best.pt --beam 2)"
echo "$out"
case "$out" in
    "data/videos/$video"$'\t'?*) echo "[s2vt] the wheel installs and captions a video" ;;
    *) echo "[s2vt] error: the installed s2vt gave no caption" >&2; exit 1 ;;
esac
