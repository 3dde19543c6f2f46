#!/usr/bin/env bash
# Every GPU measurement of BENCHMARKS.md in one run, for a machine with one CUDA GPU:
# training (bf16 and fp32, batch 64 and 256), extraction (RGB and flow), beam search, and
# optionally the gpu demo preset. Each bench's JSON line goes to OUT/<name>.json, its full
# output to OUT/<name>.log. Assumes the project is installed (pip install -e .).
#
#   OUT=/tmp/gpu scripts/gpu_benchmarks.sh                 # benches only (a few minutes)
#   OUT=/tmp/gpu DEMO=1 scripts/gpu_benchmarks.sh          # and `s2vt demo --preset gpu`
#   OUT=/tmp/gpu MSVD=1 scripts/gpu_benchmarks.sh          # and extraction at MSVD scale (1,970 clips)
#   OUT=/tmp/cpu DEVICE=cpu QUICK=1 scripts/gpu_benchmarks.sh   # a small dry run on the CPU
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-gpu_results}"
DEVICE="${DEVICE:-cuda}"
PY="${PYTHON:-python}"
mkdir -p "$OUT"
if [ -n "${QUICK:-}" ]; then
    TRAIN="--feat-dim 256 --vocab 500 --batch-sizes 8 --steps 1 --videos 8 --skip-loop"
    EXTRACT="--clips 2 --frames 30 --batch-size 16"
    DECODE="--clips 4 --batch-size 4 --single 1 --feat-dim 256 --vocab 500"
    SHARES="--short 4 --long 2 --short-frames 20 --long-frames 60 --repeats 1"
    BACKBONES="--models timm:resnet18 raft_small --images 2 --batch-size 2 --repeats 1"
    AMP=""
else
    TRAIN="--batch-sizes 64 256 --steps 20"
    EXTRACT="--clips 96 --batch-size 256 --workers 12"
    DECODE=""
    SHARES="--workers 14 --short 112 --long 28"
    BACKBONES="--batch-size 64 --images 2048"
    AMP="--amp"
fi
BF16=$([ "$DEVICE" = cpu ] || echo --bf16)

json_string() {  # stdin -> one JSON string
    printf '"%s"' "$(tr -d '\000-\037' | sed 's/\\/\\\\/g; s/"/\\"/g')"
}

run() {  # name, command...: keep the log, and the last line (the JSON) apart; a failed run: {"error": ...}
    local name=$1; shift
    echo "== $name: $*" | tee -a "$OUT/commands.txt"
    local t0=$SECONDS
    "$@" > "$OUT/$name.log" 2>&1
    local rc=$?
    local last; last=$(tail -n 1 "$OUT/$name.log")
    if [ "$rc" = 0 ] && [ "${last:0:1}" = "{" ]; then
        printf '%s\n' "$last" > "$OUT/$name.json"
    else
        printf '{"error": %s, "rc": %d}\n' "$(printf '%s' "${last:-no output}" | cut -c1-500 | json_string)" "$rc" \
            > "$OUT/$name.json"
    fi
    echo "   rc=$rc, $((SECONDS - t0)) s: $(printf '%s' "$last" | cut -c1-300)"
}

"$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), torch.cuda.get_device_name() if torch.cuda.is_available() else '')" | tee "$OUT/device.txt" \
    || echo "could not import torch with $PY" | tee "$OUT/device.txt"
run train_bf16 "$PY" scripts/bench_train.py --device "$DEVICE" $AMP $TRAIN --json
run train_fp32 "$PY" scripts/bench_train.py --device "$DEVICE" $TRAIN --json
run extract_rgb "$PY" scripts/bench_extract.py --device "$DEVICE" $BF16 $EXTRACT --stream rgb --json
run extract_flow "$PY" scripts/bench_extract.py --device "$DEVICE" $BF16 $EXTRACT --stream flow --json
run shares "$PY" scripts/bench_shares.py $SHARES --json
run decode "$PY" scripts/bench_decode.py --device "$DEVICE" $AMP $DECODE --json
run backbones "$PY" scripts/bench_backbones.py --device "$DEVICE" $BACKBONES --json
if [ -n "${MSVD:-}" ]; then  # 1,970 clips x 120 frames -> 23,640 images per stream
    MSVD_CLIPS=$([ -n "${QUICK:-}" ] && echo 6 || echo 1970)
    MSVD_ARGS=$([ -n "${QUICK:-}" ] && echo "--frames 30 --batch-size 16" || echo "--batch-size 256 --workers 14")
    run extract_msvd_rgb "$PY" scripts/bench_extract.py --device "$DEVICE" $BF16 --clips "$MSVD_CLIPS" $MSVD_ARGS --stream rgb --json
    run extract_msvd_flow "$PY" scripts/bench_extract.py --device "$DEVICE" $BF16 --clips "$MSVD_CLIPS" $MSVD_ARGS --stream flow --json
fi
if [ -n "${DEMO:-}" ]; then
    run demo_gpu "$PY" -m s2vt demo --preset gpu --device "$DEVICE" --workdir "$OUT/demo"
    cp "$OUT/demo/results.json" "$OUT/demo_results.json" 2>/dev/null || true
fi
