#!/usr/bin/env bash
# Set up .venv (idempotent) and run the whole pipeline on the embedded dataset.
# Extra args go to `s2vt demo` (see `s2vt demo --help`).
source "$(dirname "$0")/_env.sh"
exec s2vt demo "$@"
