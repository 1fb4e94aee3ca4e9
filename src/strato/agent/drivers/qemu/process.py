"""QEMU processes: command line, launch with -daemonize, and finding them again by pidfile.

QEMU daemonizes itself so that it belongs to no agent process: the agent may restart or crash and the
VMs keep running. The run directory holds everything needed to find a VM again: the pidfile, the QMP
socket and the spec it was started with.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import signal
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from strato.agent.drivers.base import DriverError
from strato.protocol.messages import ErrorCode, VmSpec

Accel = Literal["auto", "kvm", "tcg"]
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,79}$")
UNIX_PATH_MAX = 107
VNC_BASE_PORT = 5900
VNC_DISPLAYS = 1000
LAUNCH_TIMEOUT_S = 30.0


def resolve_accel(accel: Accel) -> Literal["kvm", "tcg"]:
    """`auto` = kvm when /dev/kvm can be opened read-write, else tcg.

    On hosts where KVM is present but guests hang (nested/paravirtual KVM), configure `tcg`.
    """
    if accel != "auto":
        return accel
    try:
        os.close(os.open("/dev/kvm", os.O_RDWR | os.O_CLOEXEC))
    except OSError:
        return "tcg"
    return "kvm"


@dataclass(frozen=True)
class RunDir:
    """The files of one VM under DATA_DIR/vms/<name>/."""

    path: Path

    @property
    def qmp_sock(self) -> Path:
        return self.path / "qmp.sock"

    @property
    def pidfile(self) -> Path:
        return self.path / "qemu.pid"

    @property
    def serial_log(self) -> Path:
        return self.path / "serial.log"

    @property
    def spec_json(self) -> Path:
        return self.path / "spec.json"

    @property
    def runtime_json(self) -> Path:
        """What the agent learnt at start (vnc port, accel, command line); for reports and debugging."""
        return self.path / "runtime.json"

    def read_spec(self) -> VmSpec | None:
        try:
            return VmSpec.model_validate_json(self.spec_json.read_text())
        except (OSError, ValueError):
            return None

    def read_runtime(self) -> dict[str, object]:
        try:
            data = json.loads(self.runtime_json.read_text())
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    def remove_stale(self) -> None:
        """Forget a process that is gone; spec.json and serial.log stay for post-mortems."""
        for path in (self.qmp_sock, self.pidfile, self.runtime_json):
            path.unlink(missing_ok=True)


def check_name(name: str) -> None:
    if not NAME_RE.match(name):
        raise DriverError(ErrorCode.BAD_REQUEST, f"invalid VM name {name!r}")


def live_pid(run: RunDir) -> int | None:
    """The pid of this VM's QEMU if it is alive; checks the command line to be safe from pid reuse."""
    try:
        pid = int(run.pidfile.read_text().strip())
    except (OSError, ValueError):
        return None
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return None
    state = stat.rsplit(")", 1)[1].split()[0]
    if state in ("Z", "X"):  # a zombie nobody reaped (daemonized: its parent is pid 1) is gone
        return None
    if str(run.qmp_sock).encode() not in cmdline:
        return None
    return pid


def cpu_time_ns(pid: int) -> int:
    """User + system CPU time of the whole QEMU process (vCPU threads and I/O)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0
    ticks = int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15 of stat)
    return ticks * 1_000_000_000 // os.sysconf("SC_CLK_TCK")


def free_vnc_display(start: int = 0) -> int:
    """The first display number whose TCP port on loopback can be bound now (QEMU retries further)."""
    for display in range(start, VNC_DISPLAYS):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind(("127.0.0.1", VNC_BASE_PORT + display))
            except OSError:
                continue
            return display
    raise DriverError(ErrorCode.INSUFFICIENT_CAPACITY, "no free VNC display on 127.0.0.1")


def _opt(value: str) -> str:
    """Escape a value for QEMU's comma-separated option syntax."""
    return value.replace(",", ",,")


def command_line(
    qemu_binary: str,
    spec: VmSpec,
    run: RunDir,
    accel: Literal["kvm", "tcg"],
    disk_paths: dict[int, Path],
    vnc_display: int,
) -> list[str]:
    """The full QEMU command line for a spec whose disk files are already resolved."""
    if len(str(run.qmp_sock)) > UNIX_PATH_MAX:
        raise DriverError(ErrorCode.BAD_REQUEST, f"socket path too long for a unix socket: {run.qmp_sock}")
    argv = [
        qemu_binary,
        "-name", f"guest={spec.name},debug-threads=on",
        "-uuid", spec.uuid,
        "-machine", "pc",
        "-accel", accel,
        "-m", f"{spec.memory_mib}M",
        "-smp", str(spec.cpus),
        "-nodefaults",
        "-no-user-config",
        "-qmp", f"unix:{_opt(str(run.qmp_sock))},server=on,wait=off",
        "-pidfile", str(run.pidfile),
        "-daemonize",
        "-chardev", f"file,id=serial0,path={_opt(str(run.serial_log))}",
        "-serial", "chardev:serial0",
        "-device", "VGA",
        "-vnc", f"127.0.0.1:{vnc_display},to={VNC_DISPLAYS - 1}",
    ]  # fmt: skip
    if accel == "tcg":
        argv += ["-cpu", "max"]
    ide_units = iter([("ide.0", 0), ("ide.0", 1)])  # ide.1 is kept for the cdrom
    has_scsi = False
    for index, disk in enumerate(sorted(spec.disks, key=lambda d: d.device_id)):
        fmt, file = f"disk{disk.device_id}-fmt", f"disk{disk.device_id}-file"
        readonly = disk.readonly
        argv += [
            "-blockdev",
            json.dumps({"driver": "file", "node-name": file, "filename": str(disk_paths[disk.device_id]),
                        "read-only": readonly, "discard": "unmap"}),
            "-blockdev",
            json.dumps({"driver": "qcow2", "node-name": fmt, "file": file, "read-only": readonly,
                        "discard": "unmap"}),
        ]  # fmt: skip
        serial = f",serial={_opt(disk.serial)}" if disk.serial else ""
        common = f"drive={fmt},id=disk{disk.device_id}{serial},bootindex={index + 1}"
        if disk.bus == "virtio":
            argv += ["-device", f"virtio-blk-pci,{common}"]
        elif disk.bus == "ide":
            try:
                bus, unit = next(ide_units)
            except StopIteration:
                raise DriverError(ErrorCode.BAD_REQUEST, "at most two IDE disks") from None
            argv += ["-device", f"ide-hd,{common},bus={bus},unit={unit}"]
        else:
            if not has_scsi:
                argv += ["-device", "virtio-scsi-pci,id=scsi0"]
                has_scsi = True
            argv += ["-device", f"scsi-hd,{common},bus=scsi0.0"]
    if spec.cdrom is not None:
        # ide-cd on the pc machine's secondary IDE channel: readable by any guest kernel without
        # extra drivers (the tiny Debian kernel has ata_piix built in, virtio only as modules).
        cd = f"ide-cd,id=cdrom0,bus=ide.1,unit=0,bootindex={len(spec.disks) + 1}"
        if spec.cdrom.path:
            argv += [
                "-blockdev",
                json.dumps({"driver": "file", "node-name": "cdrom0-file", "filename": spec.cdrom.path,
                            "read-only": True}),
                "-blockdev",
                json.dumps({"driver": "raw", "node-name": "cdrom0-fmt", "file": "cdrom0-file",
                            "read-only": True}),
            ]  # fmt: skip
            cd += ",drive=cdrom0-fmt"
        argv += ["-device", cd]
    return argv


async def launch(argv: list[str], run: RunDir) -> int:
    """Start QEMU; -daemonize returns once the VM is set up, so errors come back on stderr."""
    proc = await asyncio.create_subprocess_exec(
        *argv,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
        start_new_session=True,
    )
    try:
        _, err = await asyncio.wait_for(proc.communicate(), LAUNCH_TIMEOUT_S)
    except BaseException:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        await proc.wait()
        pid = live_pid(run)
        if pid is not None:
            kill(pid)
        raise
    if proc.returncode != 0:
        message = err.decode(errors="replace").strip() or f"QEMU exited with {proc.returncode}"
        # QEMU's image locking: another QEMU has one of the disks open for writing.
        code = ErrorCode.INVALID_STATE if 'Failed to get "write" lock' in message else ErrorCode.INTERNAL
        raise DriverError(code, f"QEMU failed to start: {message}")
    pid = live_pid(run)
    if pid is None:
        raise DriverError(ErrorCode.INTERNAL, "QEMU daemonized but its process is gone")
    return pid


def kill(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)


async def wait_exit(run: RunDir, timeout: float, interval: float = 0.05) -> bool:
    """Poll until the VM's process is gone (it is not our child, so it cannot be waited for)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while live_pid(run) is not None:
        if loop.time() >= deadline:
            return False
        await asyncio.sleep(interval)
    return True
