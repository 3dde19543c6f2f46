# Shared set-up for scripts/demo.sh and scripts/test.sh: an idempotent .venv in the
# checkout with the project installed, and a Java runtime for METEOR / PTB tokenizer.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PY="${PYTHON:-python3}"
VENV="$ROOT/.venv"
EXTRAS="${S2VT_EXTRAS:-}"

if [ ! -x "$VENV/bin/python" ]; then
    echo "[s2vt] creating virtual environment in $VENV"
    "$PY" -m venv "$VENV"
fi
STAMP="$VENV/.s2vt-installed${EXTRAS:+-$EXTRAS}"
if [ ! -f "$STAMP" ] || [ setup.cfg -nt "$STAMP" ]; then
    echo "[s2vt] installing the project and its dependencies (first run takes a few minutes)"
    "$VENV/bin/python" -m pip install --quiet --upgrade pip setuptools wheel
    # torch/torchvision pinned to the release pair this project is tested with; a
    # machine that already has a compatible pair keeps it (see setup.cfg ranges).
    # pip's own settings (PIP_INDEX_URL, PIP_EXTRA_INDEX_URL, pip.conf) apply to every
    # install here; S2VT_TORCH_INDEX names an index for torch alone, e.g. the CPU-only
    # build: S2VT_TORCH_INDEX=https://download.pytorch.org/whl/cpu scripts/test.sh
    TORCH_INDEX=()
    if [ -n "${S2VT_TORCH_INDEX:-}" ]; then TORCH_INDEX=(--index-url "$S2VT_TORCH_INDEX"); fi
    "$VENV/bin/python" -m pip install --quiet ${TORCH_INDEX[@]+"${TORCH_INDEX[@]}"} "torch==2.14.1" "torchvision==0.29.1" \
        || "$VENV/bin/python" -m pip install --quiet ${TORCH_INDEX[@]+"${TORCH_INDEX[@]}"} "torch>=2.11,<3" "torchvision>=0.26,<1"
    "$VENV/bin/python" -m pip install --quiet -e ".${EXTRAS:+[$EXTRAS]}"
    touch "$STAMP"
fi

source "$ROOT/scripts/_java.sh"
export PATH="$VENV/bin:$PATH"
