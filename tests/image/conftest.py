"""Session fixture: the tiny guest image, built once (or reused from $STRATO_IMAGE_DIR when current)."""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

_HERE = str(Path(__file__).resolve().parent)
if _HERE not in sys.path:
    sys.path.insert(0, _HERE)

from tinyvm import have_qemu  # noqa: E402

import strato.image  # noqa: E402
from strato.image.tiny import build_tiny_image  # noqa: E402


def _newest_source() -> float:
    """Newest mtime of the image builder and guest scripts: a prebuilt image older than that is stale."""
    pkg = Path(strato.image.__file__).parent
    return max(p.stat().st_mtime for p in pkg.rglob("*") if p.is_file() and "__pycache__" not in p.parts)


@pytest.fixture(scope="session")
def tiny_image() -> Iterator[Path]:
    if not have_qemu():
        pytest.skip("qemu-system-x86_64 / qemu-img not installed")
    shared = os.environ.get("STRATO_IMAGE_DIR")
    if shared:
        prebuilt = Path(shared) / "tiny.qcow2"
        if prebuilt.is_file() and prebuilt.stat().st_mtime >= _newest_source():
            yield prebuilt
            return
    tmp = Path(tempfile.mkdtemp(prefix="strato-tiny-image-"))
    try:
        yield build_tiny_image(tmp / "tiny.qcow2")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
