"""Live migration with local disks and host-to-host layer copies, between two real agents on loopback.

Each agent is its own process with its own data directory (host A and host B), QEMU under TCG. A VM
with a disk on A's local pool and a disk on a pool both agents attach (the same directory) moves to
B while the tiny guest keeps writing self-checking blocks; it verifies them on B. A cancelled
migration and one whose target QEMU is killed leave the VM running on A and nothing on B.
pull_layer copies a layer from A's agent to B's byte for byte and sparse; the layer endpoint refuses
names that leave the pool.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from helpers.agentproc import AgentProcess, start_agent
from helpers.vnc import end_loop, vnc_port_of
from strato.agent.drivers.qemu.process import RunDir, live_pid
from strato.image.integrity import parse_generations, verify_image
from strato.protocol.client import AgentCallError, AgentClient
from strato.protocol.messages import (
    AbortIncoming,
    Ack,
    AttachPool,
    CreateLayer,
    DiskSpec,
    ErrorCode,
    FinishIncoming,
    GetConsoleLog,
    GetMigrationStatus,
    GetVm,
    IncomingDisk,
    LayerRef,
    MigrateVm,
    PoolRef,
    PowerState,
    PrepareIncoming,
    PullLayer,
    StartVm,
    StopVm,
    TaskState,
    VmSpec,
)
from strato.protocol.motion import IncomingVm

pytestmark = [
    pytest.mark.qemu,
    pytest.mark.skipif(
        shutil.which("qemu-system-x86_64") is None or shutil.which("qemu-io") is None,
        reason="needs qemu-system-x86_64, qemu-img and qemu-io",
    ),
]

MiB = 1024 * 1024
DISK = 64 * MiB
SLOW = 2 * MiB
"""Bandwidth of the migrations that are interrupted: the 32 MiB mirror then takes ~16 s."""


@dataclass
class Host:
    agent: AgentProcess
    client: AgentClient
    local: PoolRef

    def layer(self, name: str) -> LayerRef:
        return LayerRef(pool=self.local, name=name)

    def path(self, name: str) -> Path:
        return Path(self.local.path) / name

    def files(self) -> list[str]:
        """Every file of the local pool, hidden partial files too."""
        root = Path(self.local.path)
        return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())

    def console(self, name: str) -> str:
        return self.client.call(GetConsoleLog(name=name)).text

    def wait_console(self, name: str, text: str, timeout: float = 180.0) -> str:
        deadline = time.monotonic() + timeout
        while True:
            console = self.console(name)
            if text in console:
                return console
            assert time.monotonic() < deadline, f"{text!r} not on the console:\n{console[-3000:]}"
            time.sleep(0.2)


@dataclass
class Hosts:
    a: Host
    b: Host
    base: Path
    shared: PoolRef


def _kill_qemus(base: Path) -> None:
    for pidfile in base.glob("*/vms/*/qemu.pid"):
        pid = live_pid(RunDir(pidfile.parent))
        if pid is not None:
            os.kill(pid, signal.SIGKILL)


@pytest.fixture
def hosts() -> Iterator[Hosts]:
    """Agents A and B (short temp dirs: unix socket paths are limited), both attached to one shared
    pool directory; every agent and QEMU started here is stopped, pass or fail."""
    base = Path(tempfile.mkdtemp(prefix="strato-mig-"))
    started: list[AgentProcess] = []
    try:
        made = []
        for name in ("a", "b"):
            agent = start_agent(base / name, token=f"token-{name}", driver="qemu", accel="tcg")
            started.append(agent)
            local = PoolRef(id="local", path=str(base / name / "pools" / "local"))
            made.append(Host(agent, agent.client(timeout=60), local))
        shared = PoolRef(id="shared", path=str(base / "shared"))
        for host in made:
            host.client.call(AttachPool(pool=shared, create=True))
        yield Hosts(made[0], made[1], base, shared)
    finally:
        for agent in started:
            agent.stop()
        _kill_qemus(base)
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def tiny_image() -> Path:
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
        return build_tiny_image(Path(tempfile.mkdtemp(prefix="strato-tiny-")) / "tiny.qcow2")
    except ImageToolError as exc:
        pytest.skip(f"cannot build the tiny guest image here: {exc}")


def qemu_io(path: Path, command: str) -> str:
    done = subprocess.run(["qemu-io", "-f", "qcow2", "-c", command, str(path)], capture_output=True, text=True)
    assert done.returncode == 0 and "failed" not in done.stdout + done.stderr, done.stdout + done.stderr
    return done.stdout


def spec_of(name: str, disks: list[DiskSpec], guest_commands: str | None = None, memory_mib: int = 128) -> VmSpec:
    return VmSpec(
        name=name, uuid=str(uuid.uuid4()), cpus=1, memory_mib=memory_mib, disks=disks, guest_commands=guest_commands
    )


def moved(spec: VmSpec, device_id: int, layer: LayerRef) -> VmSpec:
    """The same VM with one disk on another layer (its new place at the target)."""
    disks = [DiskSpec(device_id=d.device_id, layer=layer) if d.device_id == device_id else d for d in spec.disks]
    return spec.model_copy(update={"disks": disks})


def pid_of(host: Host, name: str) -> int:
    pid = host.client.call(GetVm(name=name)).pid
    assert pid is not None
    return pid


def gone(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rsplit(")", 1)[1].split()[0] in ("Z", "X")


def open_files(pid: int) -> set[str]:
    found = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            found.add(os.readlink(fd))
        except OSError:
            continue
    return found


def migrate(a: Host, b: Host, name: str, incoming: IncomingVm) -> list[tuple[int, int]]:
    """Migrate A -> B and finish at B; the progress A reported."""
    seen: list[tuple[int, int]] = []
    report = a.client.run_long(
        MigrateVm(name=name, incoming=incoming), on_progress=lambda d, t: seen.append((d, t)), poll_interval=0.05
    )
    assert report.power_state == PowerState.STOPPED
    assert b.client.call(FinishIncoming(name=name)).power_state == PowerState.RUNNING
    return seen


# --- (a) a running guest moves with its local disk; the shared disk stays where it is ---------------


def test_live_migration_with_local_and_shared_disks(hosts: Hosts, tiny_image: Path) -> None:
    a, b = hosts.a, hosts.b
    images = PoolRef(id="images", path=str(tiny_image.parent))
    root = LayerRef(pool=hosts.shared, name="root.qcow2")
    a.client.call(CreateLayer(layer=root, backing=LayerRef(pool=images, name=tiny_image.name)))
    # The local disk is a top layer on a frozen base holding data of its own (4 MiB at 32 MiB).
    a.client.call(CreateLayer(layer=a.layer("data-base.qcow2"), size_bytes=DISK))
    qemu_io(a.path("data-base.qcow2"), "write -P 0x5a 32M 4M")
    a.client.call(CreateLayer(layer=a.layer("data.qcow2"), backing=a.layer("data-base.qcow2")))
    commands = "integrity-write:vdb:64,integrity-loop:vdb:600,integrity-gens:vdb,integrity-verify:vdb"
    spec = spec_of(
        "mig1", [DiskSpec(device_id=0, layer=root), DiskSpec(device_id=1, layer=a.layer("data.qcow2"))], commands
    )
    a.client.call(StartVm(spec=spec))
    source_pid = pid_of(a, "mig1")

    # B gets the frozen base from A's agent, then prepares the VM with an empty top on it.
    b.client.run_long(
        PullLayer(source_agent_url=a.agent.base_url, source_token=a.agent.token,
                  source=a.layer("data-base.qcow2"), target=b.layer("data-base.qcow2")),
    )  # fmt: skip
    incoming = b.client.call(
        PrepareIncoming(
            spec=moved(spec, 1, b.layer("data.qcow2")),
            disks=[IncomingDisk(device_id=1, size_bytes=DISK, backing=b.layer("data-base.qcow2"))],
        )
    )
    assert [e.device_id for e in incoming.exports] == [1]  # the shared disk is not exported
    assert b.client.call(GetVm(name="mig1")).power_state == PowerState.PAUSED

    a.wait_console("mig1", "STRATO-INTEGRITY LOOP-START")
    time.sleep(2)  # some writes before the move starts
    started = time.monotonic()
    seen = migrate(a, b, "mig1", incoming)
    took = time.monotonic() - started
    assert seen and seen[-1][0] == seen[-1][1] > 0
    assert [d for d, _ in seen] == sorted(d for d, _ in seen)

    # A: the VM is stopped there, its QEMU gone; the guest had not finished its writes when it left.
    assert a.client.call(GetVm(name="mig1")).power_state == PowerState.STOPPED
    assert gone(source_pid)
    assert "LOOP-DONE" not in a.console("mig1")
    status = a.client.call(GetMigrationStatus(name="mig1"))
    assert status.status == "completed" and status.downtime_ms is not None
    print(f"\nmigration with a writing guest: {took:.2f} s, downtime {status.downtime_ms} ms")

    # B: the guest writes on until a key (VNC) ends its loop, then verifies every block (and that none
    # went back a generation).
    end_loop(vnc_port_of("mig1", b.agent.data_dir), lambda: b.console("mig1"))
    console = b.wait_console("mig1", "STRATO-RUN-END integrity-verify:vdb", timeout=240)
    assert "STRATO-INTEGRITY OK 64 blocks" in console, console[-3000:]
    assert "STRATO-RUN-END integrity-verify:vdb rc=0" in console
    writes = int(console.split("STRATO-INTEGRITY LOOP-DONE writes ")[1].split()[0])
    assert writes > 64
    gens = parse_generations(next(line for line in console.splitlines() if line.startswith("STRATO-INTEGRITY-GENS")))
    target_pid = pid_of(b, "mig1")
    assert str(Path(hosts.shared.path) / "root.qcow2") in open_files(target_pid)  # the very same file
    assert b.files() == ["data-base.qcow2", "data.qcow2"]  # only the local disk came over

    # Back to A while the guest is idle: the downtime of an idle 128 MiB guest.
    back = a.client.call(
        PrepareIncoming(
            spec=moved(spec, 1, a.layer("data2.qcow2")),
            disks=[IncomingDisk(device_id=1, size_bytes=DISK, backing=a.layer("data-base.qcow2"))],
        )
    )
    migrate(b, a, "mig1", back)
    idle = b.client.call(GetMigrationStatus(name="mig1"))
    print(f"idle 128 MiB guest: downtime {idle.downtime_ms} ms")
    assert idle.downtime_ms is not None and idle.downtime_ms < 1000
    assert gone(target_pid)
    assert a.client.call(StopVm(name="mig1", force=True)).power_state == PowerState.STOPPED

    for layer_file in (b.path("data.qcow2"), a.path("data2.qcow2")):
        report = verify_image(layer_file, gens)
        assert report.ok, report.summary()
        qemu_io(layer_file, "read -P 0x5a 32M 4M")  # the frozen base's data, read through the new chain


# --- (b), (c): interrupted migrations ------------------------------------------------------------------


def _os_less_vm(a: Host, b: Host, name: str) -> tuple[VmSpec, IncomingVm, int]:
    """A VM without guest OS on a 64 MiB local disk holding 32 MiB of data, prepared at B."""
    a.client.call(CreateLayer(layer=a.layer(f"{name}.qcow2"), size_bytes=DISK))
    qemu_io(a.path(f"{name}.qcow2"), "write -P 0x33 0 32M")
    spec = spec_of(name, [DiskSpec(device_id=0, layer=a.layer(f"{name}.qcow2"))], memory_mib=64)
    a.client.call(StartVm(spec=spec))
    incoming = _prepare(b, spec, name)
    return spec, incoming, pid_of(a, name)


def _prepare(b: Host, spec: VmSpec, name: str) -> IncomingVm:
    return b.client.call(
        PrepareIncoming(
            spec=moved(spec, 0, b.layer(f"{name}.qcow2")), disks=[IncomingDisk(device_id=0, size_bytes=DISK)]
        )
    )


def _wait_progress(a: Host, task_id: str) -> None:
    deadline = time.monotonic() + 30
    while a.client.task(task_id).progress_done < 4 * MiB:
        assert a.client.task(task_id).state == TaskState.RUNNING
        assert time.monotonic() < deadline
        time.sleep(0.1)


def _nothing_left_at(b: Host, name: str, pid: int) -> None:
    assert b.client.call(AbortIncoming(name=name)) == Ack()
    assert b.client.call(AbortIncoming(name=name)) == Ack()  # idempotent
    assert gone(pid)
    assert b.files() == []
    with pytest.raises(AgentCallError) as err:
        b.client.call(GetVm(name=name))
    assert err.value.code == ErrorCode.NOT_FOUND


def _still_at_source(a: Host, b: Host, spec: VmSpec, name: str, pid: int) -> None:
    """The VM runs on A as before, and a new migration of it goes through (nothing of the failed one
    is left in its QEMU: no job, no NBD node)."""
    report = a.client.call(GetVm(name=name))
    assert (report.power_state, report.pid) == (PowerState.RUNNING, pid)
    migrate(a, b, name, _prepare(b, spec, name))
    assert gone(pid)
    assert b.client.call(StopVm(name=name, force=True)).power_state == PowerState.STOPPED
    done = subprocess.run(
        [
            "qemu-img",
            "compare",
            "-f",
            "qcow2",
            "-F",
            "qcow2",
            str(a.path(f"{name}.qcow2")),
            str(b.path(f"{name}.qcow2")),
        ],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_cancelled_migration_leaves_the_vm_at_the_source(hosts: Hosts) -> None:
    a, b = hosts.a, hosts.b
    spec, incoming, pid = _os_less_vm(a, b, "mig2")
    target_pid = pid_of(b, "mig2")
    task_id = a.client.start_task(MigrateVm(name="mig2", incoming=incoming, bandwidth_bytes_per_s=SLOW))
    _wait_progress(a, task_id)
    assert a.client.cancel_task(task_id).state == TaskState.CANCELLED
    assert a.client.call(GetMigrationStatus(name="mig2")).status in ("none", "cancelled")
    _nothing_left_at(b, "mig2", target_pid)
    _still_at_source(a, b, spec, "mig2", pid)


def test_target_killed_mid_migration_leaves_the_vm_at_the_source(hosts: Hosts) -> None:
    a, b = hosts.a, hosts.b
    spec, incoming, pid = _os_less_vm(a, b, "mig3")
    target_pid = pid_of(b, "mig3")
    task_id = a.client.start_task(MigrateVm(name="mig3", incoming=incoming, bandwidth_bytes_per_s=SLOW))
    _wait_progress(a, task_id)
    os.kill(target_pid, signal.SIGKILL)
    deadline = time.monotonic() + 30
    while (report := a.client.task(task_id)).state == TaskState.RUNNING:
        assert time.monotonic() < deadline
        time.sleep(0.1)
    assert report.state == TaskState.FAILED, report
    print(f"\nfailed {time.monotonic() - deadline + 30:.1f} s after the kill: {report.error}")
    _nothing_left_at(b, "mig3", target_pid)
    _still_at_source(a, b, spec, "mig3", pid)


# --- (d) layers from agent to agent --------------------------------------------------------------------


def test_pull_layer_between_agents_and_the_layer_endpoint(hosts: Hosts) -> None:
    a, b = hosts.a, hosts.b
    source = a.path("big.qcow2")
    subprocess.run(
        ["qemu-img", "create", "-q", "-f", "qcow2", "-o", "preallocation=metadata", str(source), "256M"], check=True
    )
    qemu_io(source, "write -P 0x77 16M 4M")
    assert source.stat().st_blocks * 512 < 16 * MiB < source.stat().st_size  # mostly holes

    seen: list[tuple[int, int]] = []
    info = b.client.run_long(
        PullLayer(source_agent_url=a.agent.base_url, source_token=a.agent.token, source=a.layer("big.qcow2"),
                  target=b.layer("copies/big.qcow2")),
        on_progress=lambda d, t: seen.append((d, t)), poll_interval=0.05,
    )  # fmt: skip
    copy = b.path("copies/big.qcow2")
    assert (info.name, info.format, info.virtual_size) == ("copies/big.qcow2", "qcow2", 256 * MiB)
    assert seen[-1] == (source.stat().st_size, source.stat().st_size)
    assert copy.read_bytes() == source.read_bytes()
    compared = subprocess.run(["qemu-img", "compare", str(source), str(copy)], capture_output=True, text=True)
    assert compared.returncode == 0, compared.stdout
    assert copy.stat().st_blocks * 512 < 16 * MiB  # sparse as the source

    # Refused pulls leave nothing behind: a missing layer, a wrong token, an existing target, a cancel.
    def pull(name: str, target: str, token: str = a.agent.token, bandwidth: int | None = None) -> PullLayer:
        return PullLayer(source_agent_url=a.agent.base_url, source_token=token, source=a.layer(name),
                         target=b.layer(target), bandwidth_bytes_per_s=bandwidth)  # fmt: skip

    for command, code in (
        (pull("missing.qcow2", "x.qcow2"), ErrorCode.NOT_FOUND),
        (pull("big.qcow2", "x.qcow2", token="wrong"), ErrorCode.UNAUTHORIZED),
        (pull("big.qcow2", "copies/big.qcow2"), ErrorCode.ALREADY_EXISTS),
        (pull("../../../etc/hostname", "x.qcow2"), ErrorCode.BAD_REQUEST),
    ):
        with pytest.raises(AgentCallError) as err:
            b.client.run_long(command)
        assert err.value.code == code, err.value.message
    task_id = b.client.start_task(pull("big.qcow2", "slow.qcow2", bandwidth=8 * MiB))
    deadline = time.monotonic() + 20
    while b.client.task(task_id).progress_done == 0:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert b.client.cancel_task(task_id).state == TaskState.CANCELLED
    assert b.files() == ["copies/big.qcow2"]

    # The endpoint itself: names that leave the pool are refused, unknown pools and files are 404.
    os.symlink("/etc/hostname", a.path("out.qcow2"))
    auth = {"Authorization": f"Bearer {a.agent.token}"}
    with httpx.Client(base_url=a.agent.base_url, headers=auth, timeout=10) as http:
        for pool, name, status in (
            ("local", "../../../etc/hostname", 400),
            ("local", "/etc/hostname", 400),
            ("local", "out.qcow2", 400),
            ("local", "nothing.qcow2", 404),
            ("elsewhere", "big.qcow2", 404),
            ("shared", "big.qcow2", 404),
        ):
            answer = http.get("/v1/layers", params={"pool": pool, "name": name})
            assert answer.status_code == status, (pool, name, answer.text)
        assert http.get("/v1/layers", params={"pool": "local"}).status_code == 400
        assert (
            http.get(
                "/v1/layers", params={"pool": "local", "name": "big.qcow2"}, headers={"Authorization": ""}
            ).status_code
            == 401
        )
        whole = http.get("/v1/layers", params={"pool": "local", "name": "big.qcow2"})
        assert whole.status_code == 200 and whole.content == source.read_bytes()
        # The server names a host's local pool by its own id: the pool is found by its directory,
        # which must be an attached pool's.
        other_id = str(uuid.uuid4())
        by_path = http.get("/v1/layers", params={"pool": other_id, "name": "big.qcow2", "path": a.local.path})
        assert by_path.status_code == 200 and by_path.content == source.read_bytes()
        outside = http.get("/v1/layers", params={"pool": other_id, "name": "hostname", "path": "/etc"})
        assert outside.status_code == 404, outside.text
    as_server = LayerRef(pool=PoolRef(id=other_id, path=a.local.path), name="big.qcow2")
    b.client.run_long(
        PullLayer(source_agent_url=a.agent.base_url, source_token=a.agent.token, source=as_server,
                  target=b.layer("copies/by-id.qcow2"))
    )  # fmt: skip
    assert b.path("copies/by-id.qcow2").read_bytes() == source.read_bytes()


QUICK_STALL_S = 4.0


@pytest.fixture
def quick_stall(monkeypatch: pytest.MonkeyPatch) -> float:
    """The agents started after this fixture give up on a move whose bytes stall for 4 s."""
    monkeypatch.setenv("STRATO_LINK_STALL_S", str(QUICK_STALL_S))
    return QUICK_STALL_S


def test_frozen_target_fails_the_migration_as_a_stall(quick_stall: float, hosts: Hosts) -> None:
    """A target that stops reading (SIGSTOP: its kernel keeps the connection open with a zero window,
    so TCP never times out) is a dead link to the source: the move fails after the stall time, the
    rollback does not hang on the blocked NBD connection, and the VM runs on at the source."""
    a, b = hosts.a, hosts.b
    spec, incoming, pid = _os_less_vm(a, b, "mig4")
    target_pid = pid_of(b, "mig4")
    task_id = a.client.start_task(MigrateVm(name="mig4", incoming=incoming, bandwidth_bytes_per_s=SLOW))
    _wait_progress(a, task_id)
    os.kill(target_pid, signal.SIGSTOP)
    frozen_at = time.monotonic()
    try:
        while (report := a.client.task(task_id)).state == TaskState.RUNNING:
            assert time.monotonic() < frozen_at + quick_stall + 30, "the frozen target went unnoticed"
            time.sleep(0.1)
        took = time.monotonic() - frozen_at
    finally:
        os.kill(target_pid, signal.SIGCONT)
    print(f"\nfailed {took:.1f} s after the freeze: {report.error}")
    assert report.state == TaskState.FAILED, report
    assert report.error is not None
    assert f"no data reached the target host for {quick_stall:g} s" in report.error.message, report.error
    assert a.client.call(GetMigrationStatus(name="mig4")).status in ("none", "cancelled")
    _nothing_left_at(b, "mig4", target_pid)
    _still_at_source(a, b, spec, "mig4", pid)
