#!/usr/bin/env bash
# The test command of the README (`make test` calls this).
#   scripts/test.sh          ruff, then the fast default suite (under 8 minutes on 2 cores)
#   scripts/test.sh --slow   only the tests marked slow
# Both run in TEST_WORKERS pytest-xdist processes (default 2: most of a test is one XLA compile
# on one thread, so two processes use the two cores a small machine has; 0 runs in this one).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-.venv/bin/python}
export TF_ENABLE_ONEDNN_OPTS=0 TF_CPP_MIN_LOG_LEVEL=2
workers=(-n "${TEST_WORKERS:-2}")
if [[ "${1:-}" == "--slow" ]]; then
  exec "$PYTHON" -m pytest -m slow "${workers[@]}" "${@:2}"
fi
"$PYTHON" -m ruff format --check .
"$PYTHON" -m ruff check .
exec "$PYTHON" -m pytest -m "not slow" "${workers[@]}" "$@"
