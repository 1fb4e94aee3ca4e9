#!/usr/bin/env bash
# Sets up everything (scripts/setup.sh), checks lint and types, and runs the whole test suite in
# parallel (pytest-xdist): STRATO_TEST_WORKERS workers (default 2, one per core: more overcommit the
# cores with TCG guests), a module's tests on one worker (--dist loadscope, see tests/conftest.py).
# STRATO_TEST_WORKERS=0 runs serially; extra arguments go to pytest.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$here"
bash scripts/setup.sh
.venv/bin/ruff check src tests bench
.venv/bin/ruff format --check src tests bench
.venv/bin/mypy src
workers=${STRATO_TEST_WORKERS:-2}
if [[ $workers == 0 ]]; then
  exec .venv/bin/python -m pytest -q "$@"
fi
exec .venv/bin/python -m pytest -q -n "$workers" --dist loadscope "$@"
