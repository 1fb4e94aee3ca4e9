"""Running the host tools the image builders need, with errors that name the missing package."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path

# Debian package that provides each tool, so a missing tool is a one-line fix.
TOOL_PACKAGES = {
    "dpkg-deb": "dpkg",
    "dpkg-query": "dpkg",
    "apt-get": "apt",
    "depmod": "kmod",
    "cpio": "cpio",
    "mkfs.vfat": "dosfstools",
    "syslinux": "syslinux",
    "mcopy": "mtools",
    "mmd": "mtools",
    "genisoimage": "genisoimage",
    "xorriso": "xorriso",
    "qemu-img": "qemu-utils",
    "qemu-io": "qemu-utils",
}


class ImageToolError(RuntimeError):
    """A host tool is missing or failed; the message says which and why."""


def which(tool: str) -> str:
    """Path of `tool`, searching sbin too (depmod and mkfs.vfat live there for non-root users)."""
    found = shutil.which(tool) or shutil.which(tool, path="/usr/sbin:/sbin:/usr/bin:/bin")
    if found is None:
        pkg = TOOL_PACKAGES.get(tool, "?")
        raise ImageToolError(f"{tool} not found: install the Debian package {pkg!r}")
    return found


def run(args: Sequence[str | Path], *, cwd: Path | None = None, env: dict[str, str] | None = None) -> str:
    """Run a tool, return its stdout; raise ImageToolError with its stderr on failure."""
    argv = [which(str(args[0])), *map(str, args[1:])]
    proc = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        detail = (proc.stderr or proc.stdout).strip()
        raise ImageToolError(f"{' '.join(argv)} failed ({proc.returncode}): {detail}")
    return proc.stdout
