"""Fixtures for these tests: real simulator agents over HTTP (see tests/helpers), and a loopback
HTTP server for image downloads."""

from __future__ import annotations

import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

# `helpers` lives in tests/; make it importable whatever rootdir layout pytest picks.
_TESTS = str(Path(__file__).resolve().parents[1])
if _TESTS not in sys.path:
    sys.path.insert(0, _TESTS)
_HERE = str(Path(__file__).resolve().parent)
if _HERE not in sys.path:
    sys.path.insert(0, _HERE)

from imageserver import ImageServer  # noqa: E402

from helpers.fixtures import agent_factory, sim_agent  # noqa: E402

__all__ = ["agent_factory", "image_server", "sim_agent"]


@pytest.fixture
def image_server() -> Iterator[ImageServer]:
    """Serves the files put into `image_server.root` over http://127.0.0.1:<port>/."""
    root = Path(tempfile.mkdtemp(prefix="strato-http-"))
    server = ImageServer(root)
    try:
        yield server
    finally:
        server.close()
        for path in root.iterdir():
            path.unlink()
        root.rmdir()
