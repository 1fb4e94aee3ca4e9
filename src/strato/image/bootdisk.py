"""A raw BIOS-bootable disk: one FAT file system over the whole disk with syslinux, made without mounting."""

from __future__ import annotations

import os
from pathlib import Path

from strato.image.tools import run

FIXED_MTIME = 946684800  # files get this timestamp on the FAT so rebuilds give the same bytes
VOLUME_ID = "5354524f"  # fixed FAT serial ("STRO") so builds differ only where their inputs differ
LABEL = "STRATO"


def syslinux_cfg(cmdline: str) -> str:
    """Boot straight into the kernel: no prompt, no menu (serial-only guests)."""
    return (
        "DEFAULT strato\nPROMPT 0\nTIMEOUT 0\n"
        f"LABEL strato\n  KERNEL vmlinuz\n  INITRD initrd.img\n  APPEND {cmdline}\n"
    )


def build_boot_disk(raw: Path, *, size_mib: int, kernel: Path, initrd: Path, cmdline: str) -> None:
    """Write `raw`: mkfs.vfat on the file, `syslinux --install`, then mcopy the kernel, initrd and config."""
    raw.unlink(missing_ok=True)
    with raw.open("wb") as f:
        f.truncate(size_mib * 1024 * 1024)
    env = {**os.environ, "MTOOLS_SKIP_CHECK": "1", "SOURCE_DATE_EPOCH": str(FIXED_MTIME)}
    run(["mkfs.vfat", "-n", LABEL, "-i", VOLUME_ID, raw], env=env)
    run(["syslinux", "--install", raw], env=env)
    cfg = raw.with_name(raw.name + ".syslinux.cfg")
    cfg.write_text(syslinux_cfg(cmdline))
    try:
        for src, name in ((kernel, "vmlinuz"), (initrd, "initrd.img"), (cfg, "syslinux.cfg")):
            os.utime(src, (FIXED_MTIME, FIXED_MTIME))
            run(["mcopy", "-o", "-m", "-i", raw, src, f"::{name}"], env=env)
    finally:
        cfg.unlink(missing_ok=True)
