"""Boot the tiny guest under TCG for a test and read its serial console; QEMU is always killed by pid."""

from __future__ import annotations

import json
import re
import shutil
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from helpers.console import cpu_seconds, guest_timer, whole_lines
from strato.agent.drivers.qemu.process import free_vnc_display

QEMU = "qemu-system-x86_64"


def have_qemu() -> bool:
    return shutil.which(QEMU) is not None and shutil.which("qemu-img") is not None


@dataclass
class TinyVM:
    """One QEMU process; `serial` is the guest's console (ttyS0) written to a file."""

    proc: subprocess.Popen[bytes]
    serial: Path
    stderr: Path
    started: float = field(default_factory=time.monotonic)
    qmp_path: Path | None = None

    def qmp(self, command: str) -> object:
        """One QMP command on the VM's monitor socket (booted with qmp=True), e.g. system_powerdown;
        answers its return value."""
        assert self.qmp_path is not None, "booted without qmp=True"
        with socket.socket(socket.AF_UNIX) as sock:
            sock.settimeout(10)
            sock.connect(str(self.qmp_path))
            reader = sock.makefile("rb")
            reader.readline()  # the greeting
            answer: dict[str, object] = {}
            for execute in ("qmp_capabilities", command):
                sock.sendall(json.dumps({"execute": execute}).encode() + b"\n")
                while "return" not in (answer := json.loads(reader.readline())):
                    assert "error" not in answer, answer
            return answer["return"]

    def vnc_port(self) -> int:
        """The port QEMU's VNC server took (it moves on to a free display when the one asked is taken)."""
        info = self.qmp("query-vnc")
        assert isinstance(info, dict) and info.get("enabled"), info
        return int(info["service"])

    def console(self) -> str:
        """The console's complete lines (a line still being written is held back while QEMU runs)."""
        exited = self.proc.poll() is not None
        text = self.serial.read_text(errors="replace") if self.serial.exists() else ""
        return whole_lines(text, final=exited)

    def cpu_seconds(self) -> float:
        return cpu_seconds(self.proc.pid)

    def _timer(self, timeout: float) -> Callable[[], bool]:
        return guest_timer(lambda: self.proc.pid, timeout)

    def wait_for(self, pattern: str, timeout: float = 60.0) -> re.Match[str]:
        """First match of `pattern` (a regex, multiline) on the console; fails with the console tail."""
        regex = re.compile(pattern, re.MULTILINE)
        over = self._timer(timeout)
        while True:
            exited = self.proc.poll() is not None  # before the read: after exit the read is final
            match = regex.search(self.console())
            if match:
                return match
            if exited or over():
                why = f"exited {self.proc.returncode}" if exited else "timeout"
                raise AssertionError(
                    f"{pattern!r} not on console ({why}, {time.monotonic() - self.started:.1f}s, "
                    f"QEMU CPU {self.cpu_seconds():.1f}s)\n"
                    f"--- console tail ---\n{self.console()[-3000:]}\n"
                    f"--- qemu stderr ---\n{self.stderr.read_text(errors='replace')[-2000:]}"
                )
            time.sleep(0.1)

    def wait_exit(self, timeout: float = 60.0) -> int:
        """Wait for the guest to power off (QEMU exits by itself); as patient as wait_for."""
        over = self._timer(timeout)
        while self.proc.poll() is None:
            if over():
                return self.proc.wait(timeout=0.1)  # raises TimeoutExpired
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
    vnc: bool = False,
    qmp: bool = False,
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
    qmp_path = None
    if vnc:
        # A graphics card as the agent's VMs have: without a console QEMU's VNC passes no keys on.
        argv += ["-device", "VGA", "-vnc", f"127.0.0.1:{free_vnc_display()},to=999"]
    if qmp or vnc:  # the VNC port is asked of QEMU
        qmp_path = workdir / f"{name}-qmp.sock"
        argv += ["-qmp", f"unix:{qmp_path},server=on,wait=off"]
    with stderr.open("wb") as err:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err)
    try:
        yield TinyVM(proc, serial, stderr, qmp_path=qmp_path)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=30)
        overlay.unlink(missing_ok=True)
