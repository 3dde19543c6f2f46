#!/usr/bin/env bash
# Set up .venv (idempotent) and run the test suite. Extra args go to pytest.
S2VT_EXTRAS=test
source "$(dirname "$0")/_env.sh"
exec python -m pytest -n "${S2VT_TEST_WORKERS:-auto}" "$@"
