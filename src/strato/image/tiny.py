"""Build the tiny test guest: Debian kernel + busybox initramfs on a syslinux FAT disk, as qcow2.

Used by tests and demos that need a real guest that boots in seconds under TCG; see docs/tiny-image.md.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

from strato.image.bootdisk import build_boot_disk
from strato.image.initramfs import pack_cpio, stage_tree
from strato.image.kernel import KernelSource, find_kernel
from strato.image.tools import ImageToolError, run

KERNEL_CMDLINE = "console=ttyS0 panic=1"
MIN_SIZE_MIB = 16


def default_image_dir() -> Path:
    """`$STRATO_IMAGE_DIR`, else ~/.cache/strato/images (shared with scripts/build-guest-image.sh)."""
    env = os.environ.get("STRATO_IMAGE_DIR")
    return Path(env) if env else Path.home() / ".cache" / "strato" / "images"


def default_image_path() -> Path:
    """Where the tiny image is built once and reused."""
    return default_image_dir() / "tiny.qcow2"


def build_tiny_image(
    dest: Path,
    *,
    size_mib: int = 64,
    progress: Callable[[str], None] | None = None,
    cache_dir: Path | None = None,
    kernel_source: KernelSource | None = None,
    cmdline: str = KERNEL_CMDLINE,
) -> Path:
    """Build the bootable qcow2 at `dest` (replaced atomically) and return its path; the kernel comes
    from `kernel_source`, else `$STRATO_KERNEL_SOURCE`, else the Debian package (see kernel.py)."""
    if size_mib < MIN_SIZE_MIB:
        raise ImageToolError(f"size_mib must be at least {MIN_SIZE_MIB}")
    say = progress or (lambda _msg: None)
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="strato-tiny-", dir=dest.parent) as tmp:
        work = Path(tmp)
        say("locating the Debian kernel")
        tree = find_kernel(cache_dir, kernel_source)
        say(f"staging initramfs (kernel {tree.version}, busybox, modules)")
        modules = stage_tree(tree, work / "root")
        say(f"packing initramfs ({len(modules)} modules)")
        pack_cpio(work / "root", work / "initrd.img")
        shutil.copyfile(tree.vmlinuz, work / "vmlinuz")
        say(f"writing {size_mib} MiB FAT boot disk with syslinux")
        build_boot_disk(
            work / "disk.raw",
            size_mib=size_mib,
            kernel=work / "vmlinuz",
            initrd=work / "initrd.img",
            cmdline=cmdline,
        )
        say("converting to qcow2")
        partial = work / "tiny.qcow2"
        run(["qemu-img", "convert", "-f", "raw", "-O", "qcow2", work / "disk.raw", partial])
        partial.replace(dest)
    say(f"done: {dest}")
    return dest
