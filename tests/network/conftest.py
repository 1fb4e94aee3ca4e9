"""Guest networking tests: the helpers of tests/ importable from here."""

from __future__ import annotations

import sys
from pathlib import Path

for path in (Path(__file__).resolve().parent, Path(__file__).resolve().parents[1], Path(__file__).resolve().parents[1] / "engine"):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))
