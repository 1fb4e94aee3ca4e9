"""Long API fuzz: the short suite fuzz (tests/api/test_fuzz.py) with a random seed and many more requests.

    PYTHONPATH=src .venv/bin/python scripts/fuzz_api.py [EXAMPLES]

Runs pytest on that module with STRATO_FUZZ_EXAMPLES set and Hypothesis randomised; prints the summary line.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> int:
    examples = sys.argv[1] if len(sys.argv) > 1 else "20000"
    env = {**os.environ, "STRATO_FUZZ_EXAMPLES": examples, "STRATO_FUZZ_RANDOM": "1"}
    test = "tests/api/test_fuzz.py::test_fuzzed_requests_get_no_server_error_and_change_nothing_when_refused"
    argv = [sys.executable, "-m", "pytest", "-q", "-s", "-p", "no:cacheprovider", test]
    return subprocess.call(argv, cwd=ROOT, env=env)


if __name__ == "__main__":
    raise SystemExit(main())
