"""Fixtures of the storage-motion tests: the fault tests' clouds (a real server, one simulator or QEMU
agent with its local pool, a cluster pool, an image store, a template and offerings), loaded from
tests/faults/conftest.py so both suites build their clouds one way. Helpers are in motionlib.py."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

_FAULTS = Path(__file__).resolve().parents[1] / "faults" / "conftest.py"
_spec = importlib.util.spec_from_file_location("motion_clouds", _FAULTS)
assert _spec is not None and _spec.loader is not None
clouds = importlib.util.module_from_spec(_spec)
sys.modules["motion_clouds"] = clouds
_spec.loader.exec_module(clouds)

FaultCloud = clouds.FaultCloud
simcloud = clouds.simcloud
qemucloud = clouds.qemucloud
unique = clouds.unique
