"""Guest networking tests: the helpers of tests/ importable from here."""

from __future__ import annotations

import sys
from pathlib import Path

_HERE = Path(__file__).resolve().parent
for path in (_HERE, _HERE.parent, _HERE.parent / "engine"):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))
