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
from strato.protocol.messages import DiskSpec, ErrorCode, NicSpec, VmSpec

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

    def write_spec(self, spec: VmSpec) -> None:
        """Atomically (temp + rename): a crash never leaves half a spec."""
        tmp = self.spec_json.with_name(".spec.json.tmp")
        tmp.write_text(spec.model_dump_json(indent=2))
        os.replace(tmp, self.spec_json)

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


SCSI_CONTROLLER = "scsi0"
USER_CD = "cdrom0"
"""The user's CD drive (ide.1 unit 0): its qdev id; its medium's nodes are cdrom0-file/cdrom0-fmt."""
CONFIG_CD = "cdrom1"
"""The config drive (ide.1 unit 1)."""
GUEST_COMMANDS_FW_CFG = "opt/strato/run"


def disk_device_id(device_id: int) -> str:
    """The qdev id of a disk's device: the same at start and when hot-plugged."""
    return f"disk{device_id}"


def disk_node_names(device_id: int) -> tuple[str, str]:
    """(file node, qcow2 node) of a disk's top layer."""
    return f"disk{device_id}-file", f"disk{device_id}-fmt"


def disk_blockdevs(disk: DiskSpec, path: Path) -> list[dict[str, object]]:
    """The blockdev-add arguments of a disk's top layer, file node first (QEMU opens the backing chain)."""
    file, fmt = disk_node_names(disk.device_id)
    readonly = disk.readonly
    return [
        {"driver": "file", "node-name": file, "filename": str(path), "read-only": readonly,
         "discard": "unmap"},
        {"driver": "qcow2", "node-name": fmt, "file": file, "read-only": readonly, "discard": "unmap"},
    ]  # fmt: skip


def disk_device(disk: DiskSpec) -> dict[str, str]:
    """The device_add / -device properties of a disk (without boot order or IDE position)."""
    driver = {"virtio": "virtio-blk-pci", "ide": "ide-hd", "scsi": "scsi-hd"}[disk.bus]
    props = {
        "driver": driver,
        "drive": disk_node_names(disk.device_id)[1],
        "id": disk_device_id(disk.device_id),
    }
    if disk.serial:
        props["serial"] = disk.serial
    if disk.bus == "scsi":
        props["bus"] = f"{SCSI_CONTROLLER}.0"
    return props


def device_option(props: dict[str, str]) -> str:
    """A -device option from device_add-style properties."""
    rest = [f"{key}={_opt(value)}" for key, value in props.items() if key != "driver"]
    return ",".join([props["driver"], *rest])


def _cd_options(device: str, unit: int, path: str | None, bootindex: int | None) -> list[str]:
    argv: list[str] = []
    props = {"driver": "ide-cd", "id": device, "bus": "ide.1", "unit": str(unit)}
    if bootindex is not None:
        props["bootindex"] = str(bootindex)
    if path:
        file, fmt = f"{device}-file", f"{device}-fmt"
        argv += [
            "-blockdev",
            json.dumps({"driver": "file", "node-name": file, "filename": path, "read-only": True}),
            "-blockdev",
            json.dumps({"driver": "raw", "node-name": fmt, "file": file, "read-only": True}),
        ]
        props["drive"] = fmt
    return [*argv, "-device", device_option(props)]


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
    ide_units = iter([("ide.0", 0), ("ide.0", 1)])  # ide.1 is kept for the two CD drives
    has_scsi = False
    for index, disk in enumerate(sorted(spec.disks, key=lambda d: d.device_id)):
        for node in disk_blockdevs(disk, disk_paths[disk.device_id]):
            argv += ["-blockdev", json.dumps(node)]
        props = {**disk_device(disk), "bootindex": str(index + 1)}
        if disk.bus == "ide":
            try:
                bus, unit = next(ide_units)
            except StopIteration:
                raise DriverError(ErrorCode.BAD_REQUEST, "at most two IDE disks") from None
            props.update(bus=bus, unit=str(unit))
        elif disk.bus == "scsi" and not has_scsi:
            argv += ["-device", f"virtio-scsi-pci,id={SCSI_CONTROLLER}"]
            has_scsi = True
        argv += ["-device", device_option(props)]
    # Both CD drives are ide-cd on the pc machine's secondary IDE channel: readable by any guest kernel
    # without extra drivers (the tiny Debian kernel loads ata_piix; virtio is only a module there).
    # The user CD drive is always there (empty without an ISO), as CloudStack gives every KVM VM one:
    # IDE devices cannot be hot-plugged, and an ISO may be inserted into a running VM (change_cdrom).
    user_iso = spec.cdrom.path if spec.cdrom is not None else None
    argv += _cd_options(USER_CD, 0, user_iso, bootindex=len(spec.disks) + 1)
    if spec.config_drive is not None:
        argv += _cd_options(CONFIG_CD, 1, spec.config_drive.path, bootindex=None)
    if spec.guest_commands:
        argv += ["-fw_cfg", f"name={GUEST_COMMANDS_FW_CFG},string={_opt(spec.guest_commands)}"]
    argv += nic_options(spec)
    return argv


def nic_ids(nic: NicSpec) -> tuple[str, str]:
    """(netdev id, device id) of a NIC, named after its tap: the same at start and at hot-plug, and
    stable when another NIC is removed (an index would shift)."""
    return f"net-{nic.tap}", f"nic-{nic.tap}"


def nic_netdev(nic: NicSpec) -> dict[str, str]:
    """netdev_add's arguments: the tap the host's network layer made, opened by name, no scripts."""
    netdev, _ = nic_ids(nic)
    return {"type": "tap", "id": netdev, "ifname": nic.tap, "script": "no", "downscript": "no"}


def nic_device(nic: NicSpec) -> dict[str, str]:
    """device_add's arguments (and -device's properties): a virtio NIC with the server's MAC."""
    netdev, device = nic_ids(nic)
    return {"driver": "virtio-net-pci", "id": device, "netdev": netdev, "mac": nic.mac}


def nic_options(spec: VmSpec) -> list[str]:
    """Each NIC as at hot-plug: its tap netdev and its virtio device."""
    argv: list[str] = []
    for nic in spec.nics:
        netdev = nic_netdev(nic)
        argv += [
            "-netdev", f"tap,id={netdev['id']},ifname={_opt(nic.tap)},script=no,downscript=no",
            "-device", device_option(nic_device(nic)),
        ]  # fmt: skip
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
