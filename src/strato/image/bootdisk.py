"""A raw BIOS-bootable disk: one FAT file system over the whole disk with syslinux, made without mounting."""

from __future__ import annotations

from pathlib import Path

from strato.image.tools import run

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
    run(["mkfs.vfat", "-n", LABEL, "-i", VOLUME_ID, raw])
    run(["syslinux", "--install", raw])
    cfg = raw.with_name(raw.name + ".syslinux.cfg")
    cfg.write_text(syslinux_cfg(cmdline))
    try:
        env = {"MTOOLS_SKIP_CHECK": "1", "PATH": "/usr/bin:/bin"}
        for src, name in ((kernel, "vmlinuz"), (initrd, "initrd.img"), (cfg, "syslinux.cfg")):
            run(["mcopy", "-o", "-i", raw, src, f"::{name}"], env=env)
    finally:
        cfg.unlink(missing_ok=True)
