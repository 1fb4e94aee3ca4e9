"""Boot the tiny guest under TCG for a test and read its serial console; QEMU is always killed by pid."""

from __future__ import annotations

import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from helpers.console import whole_lines

QEMU = "qemu-system-x86_64"
SLOW_FACTOR = 4  # a guest still printing may take this many times a wait's timeout


def have_qemu() -> bool:
    return shutil.which(QEMU) is not None and shutil.which("qemu-img") is not None


@dataclass
class TinyVM:
    """One QEMU process; `serial` is the guest's console (ttyS0) written to a file."""

    proc: subprocess.Popen[bytes]
    serial: Path
    stderr: Path
    started: float = field(default_factory=time.monotonic)

    def console(self) -> str:
        """The console's complete lines (a line still being written is held back while QEMU runs)."""
        exited = self.proc.poll() is not None
        text = self.serial.read_text(errors="replace") if self.serial.exists() else ""
        return whole_lines(text, final=exited)

    def wait_for(self, pattern: str, timeout: float = 60.0) -> re.Match[str]:
        """First match of `pattern` (a regex, multiline) on the console; fails with the console tail.

        `timeout` is how long the guest may stay silent: while its console keeps growing it is making
        progress, just slowly (TCG on cores shared with parallel tests), so the wait goes on, up to
        SLOW_FACTOR times `timeout` in all."""
        regex = re.compile(pattern, re.MULTILINE)
        now = time.monotonic()
        deadline, cap, seen = now + timeout, now + SLOW_FACTOR * timeout, -1
        while True:
            exited = self.proc.poll() is not None  # before the read: after exit the read is final
            text = self.console()
            match = regex.search(text)
            if match:
                return match
            if len(text) > seen:
                seen, deadline = len(text), min(cap, max(deadline, time.monotonic() + timeout))
            if exited or time.monotonic() > deadline:
                why = f"exited {self.proc.returncode}" if exited else "timeout"
                raise AssertionError(
                    f"{pattern!r} not on console ({why}, {time.monotonic() - self.started:.1f}s)\n"
                    f"--- console tail ---\n{self.console()[-3000:]}\n"
                    f"--- qemu stderr ---\n{self.stderr.read_text(errors='replace')[-2000:]}"
                )
            time.sleep(0.1)

    def wait_exit(self, timeout: float = 60.0) -> int:
        """Wait for the guest to power off (QEMU exits by itself); as patient as wait_for."""
        now = time.monotonic()
        deadline, cap, seen = now + timeout, now + SLOW_FACTOR * timeout, -1
        while self.proc.poll() is None:
            size = self.serial.stat().st_size if self.serial.exists() else 0
            if size > seen:
                seen, deadline = size, min(cap, max(deadline, time.monotonic() + timeout))
            if time.monotonic() > deadline:
                return self.proc.wait(timeout=0.1)  # raises TimeoutExpired, as before
            time.sleep(0.1)
        return self.proc.returncode


def data_disk(path: Path, size_mib: int, fmt: str = "qcow2") -> Path:
    subprocess.run(["qemu-img", "create", "-q", "-f", fmt, str(path), f"{size_mib}M"], check=True)
    return path


@contextmanager
def boot_tiny(
    image: Path,
    workdir: Path,
    *,
    disks: list[Path] | None = None,
    cdrom: Path | None = None,
    cd_bus: str = "ide",
    run: str | None = None,
    name: str = "vm",
) -> Iterator[TinyVM]:
    """Boot `image` through a throw-away overlay with virtio data disks, an optional config drive
    (IDE CD on the default pc machine, or a CD on virtio-scsi) and `strato.run` items via fw_cfg."""
    workdir.mkdir(parents=True, exist_ok=True)
    overlay = workdir / f"{name}-root.qcow2"
    subprocess.run(
        ["qemu-img", "create", "-q", "-f", "qcow2", "-b", str(image), "-F", "qcow2", str(overlay)], check=True
    )
    serial, stderr = workdir / f"{name}-serial.log", workdir / f"{name}-qemu.err"
    argv = [
        QEMU, "-accel", "tcg", "-m", "128", "-nodefaults", "-display", "none", "-no-reboot",
        "-serial", f"file:{serial}", "-monitor", "none",
        "-drive", f"file={overlay},if=virtio,format=qcow2",
    ]  # fmt: skip
    for disk in disks or []:
        fmt = "raw" if disk.suffix in (".raw", ".img") else "qcow2"
        argv += ["-drive", f"file={disk},if=virtio,format={fmt},cache=writeback"]
    if cdrom is not None:
        if cd_bus == "ide":
            argv += ["-drive", f"file={cdrom},if=ide,media=cdrom,format=raw,readonly=on"]
        else:
            argv += [
                "-device", "virtio-scsi-pci,id=scsi0",
                "-drive", f"file={cdrom},if=none,id=cd0,media=cdrom,format=raw,readonly=on",
                "-device", "scsi-cd,drive=cd0,bus=scsi0.0",
            ]  # fmt: skip
    if run is not None:
        argv += ["-fw_cfg", f"name=opt/strato/run,string={run.replace(',', ',,')}"]
    with stderr.open("wb") as err:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err)
    try:
        yield TinyVM(proc, serial, stderr)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=30)
        overlay.unlink(missing_ok=True)
