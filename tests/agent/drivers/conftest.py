"""Fixtures of the QEMU driver tests: a short data dir whose QEMUs are killed pass or fail, a started
driver on it, and the tiny guest image."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from helpers.faultlib import kill_qemus_under
from strato.agent.drivers.qemu import QemuDriver


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def data_dir() -> Iterator[Path]:
    """A short temp dir (unix socket paths are limited); every QEMU in it is killed, pass or fail."""
    path = Path(tempfile.mkdtemp(prefix="strato-drv-"))
    try:
        yield path
    finally:
        kill_qemus_under(path)
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
async def driver(data_dir: Path) -> AsyncIterator[QemuDriver]:
    drv = QemuDriver(data_dir, accel="tcg")
    await drv.start()
    try:
        yield drv
    finally:
        await drv.close()


@pytest.fixture
def tiny_image(data_dir: Path) -> Path:
    """The tiny guest image: the prebuilt one when current, else built here."""
    try:
        import strato.image
        from strato.image.tiny import build_tiny_image, default_image_path
        from strato.image.tools import ImageToolError
    except ImportError:
        pytest.skip("strato.image.tiny is not available")
    pkg = Path(strato.image.__file__).parent
    newest = max(p.stat().st_mtime for p in pkg.rglob("*") if p.is_file() and "__pycache__" not in p.parts)
    prebuilt = default_image_path()
    if prebuilt.is_file() and prebuilt.stat().st_mtime >= newest:
        return prebuilt
    try:
        return build_tiny_image(data_dir / "tiny-build" / "tiny.qcow2")
    except ImageToolError as exc:
        pytest.skip(f"cannot build the tiny guest image here: {exc}")
