"""Fixtures for these tests: real simulator agents over HTTP (see tests/helpers)."""

from __future__ import annotations

import sys
from pathlib import Path

# `helpers` lives in tests/; make it importable whatever rootdir layout pytest picks.
_TESTS = str(Path(__file__).resolve().parents[1])
if _TESTS not in sys.path:
    sys.path.insert(0, _TESTS)

from helpers.fixtures import agent_factory, sim_agent  # noqa: E402

__all__ = ["agent_factory", "sim_agent"]
