"""Live migration of a running VM with its local disks to another host's QEMU (both roles).

The order is the one tested on QEMU 7.2 (shared/notes/qemu.md, "Live migration with local disks"):
the target starts paused with `-incoming defer` and exports its new, empty top layers over NBD; the
source mirrors each top layer into its export (`sync: top`: the frozen layers below are already on
the target), then migrates the RAM with `pause-before-switchover`. At `pre-switchover` the guest is
paused, so cancelling the READY mirrors (not forced) leaves consistent targets; only then does the
migration continue. The textbook order (cancel the mirrors after `completed`) crashes QEMU 7.2.

Until `migrate-continue` the source is the only valid copy: any failure or cancellation before it
cancels the migration and the mirrors, and the VM goes on running here. What the target created is
listed in its run directory (`incoming.json`) so that `abort_incoming` can remove it after an agent
restart too.

A silently broken link would leave the mirrors and the migration waiting for TCP's retransmission
timeout (~15 min): the bytes moved are watched instead (`stall.py`), and a move whose bytes stop for
STALL_S while some should move fails and rolls back, QEMU's connections to the target destroyed
first so that the rollback cannot block on them either.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import shutil
import socket
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar, get_args
from urllib.parse import parse_qs, urlsplit

from strato.agent.drivers.base import DriverError, ProgressFn, report_phase
from strato.agent.drivers.qemu import layers, pools, process
from strato.agent.drivers.qemu.blockjobs import BlockJobError, BlockJobs
from strato.agent.drivers.qemu.monitor import (
    JOB_EVENTS,
    MIGRATION_EVENTS,
    EventsMissed,
    MonitorClosed,
    VmMonitor,
    job_match,
)
from strato.agent.drivers.qemu.process import RunDir
from strato.agent.drivers.qemu.qmp import QmpError, QmpUnavailable
from strato.agent.drivers.qemu.stall import break_connections, stall_seconds, until_stalled, watch
from strato.protocol.messages import (
    ErrorCode,
    IncomingDisk,
    MigrationOutcome,
    MigrationPlace,
    PowerState,
    VmReport,
    VmSpec,
)
from strato.protocol.motion import IncomingVm, MigrationReport, NbdExport

if TYPE_CHECKING:
    from strato.agent.drivers.qemu.driver import QemuDriver

log = logging.getLogger("strato.agent.qemu.migration")

T = TypeVar("T")

DOWNTIME_LIMIT_MS = 50
"""Target pause for the last RAM pass. QEMU's default (300 ms) is far above what an idle guest needs;
the real pause also includes the mirrors' end at pre-switchover (see the tests' measurement)."""
UNLIMITED_BANDWIDTH = 10 * 1024**3
"""max-bandwidth when none is asked for: QEMU's default of 128 MiB/s is slower than the network."""
MIGRATION_TIMEOUT_S = 3600.0
POLL_S = 1.0
"""How often a wait re-reads query-migrate besides the events (a safety net, not the mechanism)."""
PROGRESS_S = 0.5
MiB = 1024 * 1024
PORT_ATTEMPTS = 5
FINISH_WAIT_S = 30.0
ROLLBACK_WAIT_S = 15.0
"""Bound of each wait of a rollback (migration cancelled, a mirror gone): it runs on a dead link too."""
INCOMING_FILE = "incoming.json"
MIGRATION_FILE = "migration.json"
_REPORTED = set(get_args(MigrationReport.model_fields["status"].annotation))
"""QEMU's migration states the report names; the others (wait-unplug, postcopy-paused...) are active."""
_ENDED = {"completed", "failed", "cancelled"}
_PAUSED_BY_MIGRATION = {"paused", "finish-migrate", "postmigrate", "pre-switchover", "inmigrate"}


def mirror_job(device_id: int) -> str:
    return f"migrate-disk{device_id}"


def nbd_node(device_id: int) -> str:
    return f"migrate-disk{device_id}-nbd"


def export_id(device_id: int) -> str:
    return f"disk{device_id}"


# --- target ---------------------------------------------------------------------------------------


@dataclass
class IncomingRecord:
    """What prepare_incoming created (top layer files) and where it listens: the run directory's
    incoming.json, present from the first created file until finish or abort."""

    created: list[str]

    @staticmethod
    def path(run: RunDir) -> Path:
        return run.path / INCOMING_FILE

    @classmethod
    def read(cls, run: RunDir) -> IncomingRecord | None:
        try:
            data = json.loads(cls.path(run).read_text())
        except (OSError, ValueError):
            return None
        created = data.get("created") if isinstance(data, dict) else None
        return cls([str(p) for p in created]) if isinstance(created, list) else cls([])

    def write(self, run: RunDir) -> None:
        tmp = run.path / f".{INCOMING_FILE}.tmp"
        tmp.write_text(json.dumps({"created": self.created}))
        os.replace(tmp, self.path(run))


def _free_port(host: str) -> int:
    """A port free on `host` now; QEMU binds it a moment later (callers retry if it was taken)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def _host_part(host: str) -> str:
    return f"[{host}]" if ":" in host else host


async def _with_free_port(host: str, what: str, start: Callable[[int], Awaitable[T]]) -> tuple[int, T]:
    """Run `start(port)` on a free port, again on another one if QEMU could not bind it."""
    for attempt in range(PORT_ATTEMPTS):
        port = _free_port(host)
        try:
            return port, await start(port)
        except QmpError as exc:
            if attempt == PORT_ATTEMPTS - 1 or "in use" not in exc.message.lower():
                raise
            log.info("%s: port %d was taken meanwhile, retrying", what, port)
    raise AssertionError("unreachable")


async def prepare_incoming(drv: QemuDriver, spec: VmSpec, disks: list[IncomingDisk], listen_host: str) -> IncomingVm:
    """Create the new top layers, start QEMU paused waiting for the migration, export the layers."""
    run = drv._run(spec.name)
    by_device = {disk.device_id: disk for disk in spec.disks}
    if len({d.device_id for d in disks}) != len(disks):
        raise DriverError(ErrorCode.BAD_REQUEST, "duplicate incoming disk device_id")
    for incoming in disks:
        if incoming.device_id not in by_device:
            raise DriverError(ErrorCode.BAD_REQUEST, f"incoming disk {incoming.device_id} is not in the spec")
        if by_device[incoming.device_id].readonly:
            raise DriverError(ErrorCode.BAD_REQUEST, f"incoming disk {incoming.device_id} is read-only")
    if not listen_host or "/" in listen_host:
        raise DriverError(ErrorCode.BAD_REQUEST, f"invalid listen_host {listen_host!r}")
    if process.live_pid(run) is not None:
        raise DriverError(ErrorCode.INVALID_STATE, f"VM {spec.name} is already running here")
    if IncomingRecord.read(run) is not None:
        raise DriverError(ErrorCode.INVALID_STATE, f"VM {spec.name} is already prepared here: abort it first")
    run.path.mkdir(parents=True, exist_ok=True)
    record = IncomingRecord([])
    started = False
    try:
        for incoming in disks:
            path = pools.layer_path(by_device[incoming.device_id].layer)
            backing = pools.layer_path(incoming.backing) if incoming.backing is not None else None
            await layers.create(path, incoming.size_bytes, backing)
            record.created.append(str(path))
            record.write(run)
        record.write(run)
        await drv._start(spec, ("-incoming", "defer", "-S"))
        started = True
        monitor = drv.monitor(spec.name)
        await monitor.execute("migrate-set-capabilities", {"capabilities": [{"capability": "events", "state": True}]})
        exports: list[NbdExport] = []
        if disks:

            async def nbd_start(port: int) -> None:
                addr = {"type": "inet", "data": {"host": listen_host, "port": str(port)}}
                await monitor.execute("nbd-server-start", {"addr": addr})

            nbd_port, _ = await _with_free_port(listen_host, "nbd-server-start", nbd_start)
            for incoming in disks:
                name = export_id(incoming.device_id)
                await monitor.execute(
                    "block-export-add",
                    {
                        "type": "nbd",
                        "id": name,
                        "node-name": process.disk_node_names(incoming.device_id)[1],
                        "name": name,
                        "writable": True,
                    },
                )
                uri = f"nbd://{_host_part(listen_host)}:{nbd_port}/{name}"
                exports.append(NbdExport(device_id=incoming.device_id, uri=uri))

        async def incoming_start(port: int) -> str:
            uri = f"tcp:{_host_part(listen_host)}:{port}"
            await monitor.execute("migrate-incoming", {"uri": uri})
            return uri

        _, migration_uri = await _with_free_port(listen_host, "migrate-incoming", incoming_start)
        return IncomingVm(name=spec.name, migration_uri=migration_uri, exports=exports)
    except BaseException:
        await _shielded(_discard_incoming(drv, run, record, kill=started))
        raise


async def _discard_incoming(drv: QemuDriver, run: RunDir, record: IncomingRecord, kill: bool) -> None:
    """Kill the waiting QEMU, remove the layers prepare_incoming created, forget the VM."""
    if kill or process.live_pid(run) is not None:
        await drv._kill(run)
    for created in record.created:
        path = Path(created)
        path.unlink(missing_ok=True)
    await drv._forget_monitor(run.path.name)
    shutil.rmtree(run.path, ignore_errors=True)


async def finish_incoming(drv: QemuDriver, name: str) -> VmReport:
    """Stop the NBD server (the exports go with it) and run the VM; it is then a VM of this host."""
    run = drv._existing(name)
    async with drv._vm_locks[name]:
        record = IncomingRecord.read(run)
        if record is None:
            report = await drv._report(run)
            if report.power_state == PowerState.RUNNING:
                return report  # finished already (a retry)
            raise DriverError(ErrorCode.INVALID_STATE, f"VM {name} is not an incoming migration here")
        if process.live_pid(run) is None:
            raise DriverError(ErrorCode.INVALID_STATE, f"the incoming QEMU of VM {name} is gone")
        monitor = drv.monitor(name)
        state = await _incoming_end(monitor)
        if state != "completed":
            raise DriverError(ErrorCode.INVALID_STATE, f"the incoming migration of VM {name} is {state}")
        with contextlib.suppress(QmpError):  # no NBD server when no disk was exported
            await monitor.execute("nbd-server-stop")
        await monitor.execute("cont")
        IncomingRecord.path(run).unlink(missing_ok=True)
        return await drv._report(run)


async def _incoming_end(monitor: VmMonitor) -> str:
    """The incoming migration's status once it is no longer in progress: the source reports
    `completed` when it has sent everything, a moment before the target has loaded it."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + FINISH_WAIT_S
    while True:
        state = str((await monitor.execute("query-migrate")).get("status", "none"))
        if state not in ("setup", "active", "device") or loop.time() >= deadline:
            return state
        await asyncio.sleep(0.02)


async def abort_incoming(drv: QemuDriver, name: str) -> None:
    """Roll back a prepared (or half-prepared) incoming VM; nothing to do is not an error."""
    run = drv._run(name)
    async with drv._vm_locks[name]:
        record = IncomingRecord.read(run)
        if record is None:
            return  # never prepared, aborted already, or finished: a running VM is left alone
        await _discard_incoming(drv, run, record, kill=True)


# --- source ---------------------------------------------------------------------------------------


def _nbd_server(uri: str) -> tuple[dict[str, object], str]:
    """(blockdev `server` SocketAddress, export name) of nbd://host:port/name or
    nbd+unix:///name?socket=path."""
    parts = urlsplit(uri)
    export = parts.path.lstrip("/")
    if parts.scheme == "nbd" and parts.hostname and parts.port and export:
        return {"type": "inet", "host": parts.hostname, "port": str(parts.port)}, export
    if parts.scheme == "nbd+unix" and export:
        sockets = parse_qs(parts.query).get("socket")
        if sockets:
            return {"type": "unix", "path": sockets[0]}, export
    raise DriverError(ErrorCode.BAD_REQUEST, f"not an NBD export URI: {uri!r}")


def _uri_peer(uri: str) -> list[tuple[str, int]]:
    """The (host, port) a tcp:host:port migration URI or nbd://host:port/... names; none otherwise."""
    if uri.startswith("tcp:"):
        uri = "tcp://" + uri[len("tcp:") :].split(",")[0]
    try:
        parts = urlsplit(uri)
        host, port = parts.hostname, parts.port
    except ValueError:
        return []
    return [(host, port)] if parts.scheme in ("tcp", "nbd") and host and port else []


def _burst(bandwidth: int | None) -> int | None:
    """A throttled mirror's buf-size: QEMU lets one buffer through at once, then sleeps until the
    rate is met again, deaf to a dead target meanwhile; so at most half a second's worth."""
    if bandwidth is None:
        return None
    return int(min(16 * MiB, max(MiB, bandwidth // 2 // MiB * MiB)))


def _migration_report(name: str, info: dict[str, Any]) -> MigrationReport:
    ram = info.get("ram") or {}
    status = str(info.get("status", "none"))
    downtime = info.get("downtime")
    return MigrationReport(
        name=name,
        status=status if status in _REPORTED else "active",
        transferred_bytes=int(ram.get("transferred", 0)),
        remaining_bytes=int(ram.get("remaining", 0)),
        total_bytes=int(ram.get("total", 0)),
        error=info.get("error-desc"),
        downtime_ms=int(downtime) if downtime is not None else None,
    )


class _Progress:
    """Bytes of the mirrors plus RAM, sampled from query-jobs and query-migrate."""

    def __init__(self, monitor: VmMonitor, memory_bytes: int, progress: ProgressFn) -> None:
        self.monitor = monitor
        self.memory_bytes = memory_bytes
        self.progress = progress
        self.jobs: set[str] = set()
        self.done = 0
        self.mirrors_total = 0

    async def sample(self) -> None:
        mirrors_done = mirrors_total = 0
        for job in await self.monitor.execute("query-jobs"):
            if job.get("id") in self.jobs:
                mirrors_done += int(job.get("current-progress", 0))
                mirrors_total += int(job.get("total-progress", 0))
        if self.jobs:
            self.mirrors_total = mirrors_total
        ram = (await self.monitor.execute("query-migrate")).get("ram") or {}
        ram_total = int(ram.get("total", 0)) or self.memory_bytes
        ram_done = min(int(ram.get("transferred", 0)), ram_total)
        self.done = max(self.done, mirrors_done + ram_done)
        self.progress(self.done, max(self.done, mirrors_total + ram_total))

    def finished(self, ram_transferred: int) -> None:
        """All sent: the mirrors' bytes and the RAM stream's."""
        self.done = max(self.done, self.mirrors_total + ram_transferred)
        self.progress(self.done, self.done)

    async def run(self) -> None:
        while True:
            with contextlib.suppress(DriverError):
                await self.sample()
            await asyncio.sleep(PROGRESS_S)


class _Stage:
    """Which bytes of the move should be advancing now (for the stall watch)."""

    def __init__(self, monitor: VmMonitor, jobs: set[str]) -> None:
        self.monitor = monitor
        self.jobs = jobs
        self.name: str | None = None

    async def sample(self) -> tuple[str | None, int]:
        """mirroring: the mirrors' offsets until all are READY (a READY mirror of an idle guest
        moves nothing); migrating: the RAM sent while the migration is in setup or active; ending:
        the mirrors' offsets until they end."""
        stage = self.name
        if stage in ("mirroring", "ending"):
            mine = [j for j in await self.monitor.execute("query-jobs") if j.get("id") in self.jobs]
            moving = [j for j in mine if j.get("status") not in ("concluded", "null", "aborting")]
            if stage == "mirroring":
                moving = [j for j in moving if j.get("status") != "ready"]
            return (stage if moving else None), sum(int(j.get("current-progress", 0)) for j in mine)
        if stage == "migrating":
            info = await self.monitor.execute("query-migrate")
            if info.get("status") not in ("setup", "active"):
                return None, 0
            return stage, int((info.get("ram") or {}).get("transferred", 0))
        return None, 0


async def _wait_migration(monitor: VmMonitor, wanted: set[str], timeout: float, confirm: bool = True) -> dict[str, Any]:
    """Wait (MIGRATION events, query-migrate as a safety net) for one of `wanted`; a migration that
    ends otherwise raises. confirm=False returns on the event itself ({"status": ...} only): one QMP
    round trip less where the guest is paused and waits for the caller (pre-switchover)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    with monitor.subscribe(MIGRATION_EVENTS) as events:
        while True:
            info: dict[str, Any] = await monitor.execute("query-migrate")
            status = str(info.get("status", "none"))
            if status in wanted:
                return info
            if status in _ENDED or status == "none":
                why = info.get("error-desc") or status
                raise DriverError(ErrorCode.INTERNAL, f"migration {status} before {sorted(wanted)}: {why}")
            left = deadline - loop.time()
            if left <= 0:
                raise DriverError(ErrorCode.INTERNAL, f"migration still {status} after {timeout:g} s")
            try:
                event = await events.next(min(POLL_S, left))
            except (TimeoutError, EventsMissed):
                continue
            status = str((event.get("data") or {}).get("status", ""))
            if status in wanted and not confirm:
                return {"status": status}
            # otherwise confirmed by query-migrate at the top of the loop (with the error, if any)


async def _mirror_ready(jobs: BlockJobs, device_id: int, server: dict[str, object]) -> None:
    """Wait for the mirror of one disk into the target's export; its failure says where it was sending
    (an I/O error here is the target's NBD connection breaking: the link, or the target QEMU, gone)."""
    try:
        await jobs.wait_ready(mirror_job(device_id))
    except BlockJobError as exc:
        where = f"{server.get('host')}:{server.get('port')}" if server.get("type") == "inet" else server.get("path")
        why = "the connection to the target host broke, or its QEMU stopped"
        message = f"sending disk {device_id} to the target host's NBD export at {where} failed ({why}): {exc.message}"
        raise BlockJobError(exc.code, message) from exc


async def _end_mirror_consistently(jobs: BlockJobs, job_id: str) -> None:
    """`block-job-cancel` of a READY mirror: it copies what is left and ends COMPLETED with a
    consistent target (no pivot). Ending CANCELLED or with an error means the target is not usable."""
    with jobs.monitor.subscribe(JOB_EVENTS, job_match(job_id)) as events:
        job = await jobs.cancel(job_id, force=False)
        seen: list[str] = []
        with contextlib.suppress(TimeoutError, EventsMissed, MonitorClosed):
            while True:
                seen.append(str((await events.next(0.0)).get("event")))
    if job.error is not None or "BLOCK_JOB_CANCELLED" in seen or "BLOCK_JOB_ERROR" in seen:
        raise DriverError(ErrorCode.INTERNAL, f"mirror {job_id} did not end consistently: {job.error or seen}")


async def migrate_vm(
    drv: QemuDriver, name: str, incoming: IncomingVm, bandwidth: int | None, progress: ProgressFn
) -> VmReport:
    """Mirror the exported disks, migrate, switch over at pre-switchover; then quit here."""
    if bandwidth is not None and bandwidth <= 0:
        raise DriverError(ErrorCode.BAD_REQUEST, "bandwidth must be positive")
    current = asyncio.current_task()
    if current is not None:
        drv._migrations[name] = current
    try:
        return await _migrate_vm(drv, name, incoming, bandwidth, progress)
    finally:
        if drv._migrations.get(name) is current:
            del drv._migrations[name]


async def _migrate_vm(
    drv: QemuDriver, name: str, incoming: IncomingVm, bandwidth: int | None, progress: ProgressFn
) -> VmReport:
    run = drv._existing(name)
    async with drv._vm_locks[name]:
        spec = drv._running_spec(run)
        devices = {disk.device_id for disk in spec.disks}
        servers = {export.device_id: _nbd_server(export.uri) for export in incoming.exports}
        for device_id in servers:
            if device_id not in devices:
                raise DriverError(ErrorCode.BAD_REQUEST, f"VM {name} has no disk {device_id} to send")
        monitor = drv.monitor(name)
        jobs = BlockJobs(monitor)
        meter = _Progress(monitor, spec.memory_mib * 1024 * 1024, progress)
        reporter = asyncio.get_running_loop().create_task(meter.run(), name=f"migrate-progress-{name}")
        nodes: list[str] = []
        started_migration = False
        peers = [(str(server["host"]), int(str(server["port"]))) for server, _ in servers.values()
                 if server.get("type") == "inet"]  # fmt: skip
        peers += _uri_peer(incoming.migration_uri)
        stage = _Stage(monitor, meter.jobs)
        was_running = (await monitor.execute("query-status")).get("status") == "running"
        watcher = asyncio.get_running_loop().create_task(watch(stage.sample, stall_seconds()), name=f"stall-{name}")
        try:
            stage.name = "mirroring"
            if servers:
                report_phase(f"mirroring {len(servers)} disk(s) to the target host")
            for device_id, (server, export) in servers.items():
                top = await drv._disk_top(run, device_id)
                if top is None:
                    raise DriverError(ErrorCode.INVALID_STATE, f"disk {device_id} of VM {name} has no medium")
                await monitor.execute(
                    "blockdev-add", {"driver": "nbd", "node-name": nbd_node(device_id), "server": server,
                                     "export": export}
                )  # fmt: skip
                nodes.append(nbd_node(device_id))
                await jobs.start_mirror(
                    mirror_job(device_id), top[0], nbd_node(device_id), "top", bandwidth, buf_size=_burst(bandwidth)
                )
                meter.jobs.add(mirror_job(device_id))
            await until_stalled(asyncio.gather(*(_mirror_ready(jobs, d, servers[d][0]) for d in servers)), watcher)
            stage.name = None
            await meter.sample()
            await monitor.execute(
                "migrate-set-capabilities",
                {"capabilities": [{"capability": "pause-before-switchover", "state": True},
                                  {"capability": "events", "state": True}]},
            )  # fmt: skip
            await monitor.execute(
                "migrate-set-parameters",
                {"downtime-limit": DOWNTIME_LIMIT_MS, "max-bandwidth": bandwidth or UNLIMITED_BANDWIDTH},
            )
            started_migration = True
            report_phase("migrating memory" + (" (disks in sync, mirrored as the guest writes)" if servers else ""))
            stage.name = "migrating"
            await monitor.execute("migrate", {"uri": incoming.migration_uri})
            await until_stalled(_wait_migration(monitor, {"pre-switchover"}, MIGRATION_TIMEOUT_S), watcher)
            stage.name = None
            paused_at = time.monotonic()
            report_phase("switching over (guest paused)")
            # The guest is paused now: end the mirrors with consistent targets, then switch over.
            await meter.sample()
            stage.name = "ending"
            ending = asyncio.gather(*(_end_mirror_consistently(jobs, job) for job in meter.jobs))
            await until_stalled(ending, watcher)
            meter.jobs.clear()
        except BaseException as exc:
            reporter.cancel()
            watcher.cancel()
            log.info("VM %s: migration rolled back: %s", name, exc)
            await _shielded(_roll_back(monitor, jobs, meter.jobs, nodes, started_migration, was_running, peers))
            raise
        watcher.cancel()
        # Past this point the target may run the VM: never resume here, whatever happens to this task.
        try:
            final = await _shielded(_switch_over(monitor, run, name, was_running, paused_at), reraise=False)
        finally:
            reporter.cancel()
        meter.finished(final.transferred_bytes)
        log.info("VM %s: migrated, downtime %s ms", name, final.downtime_ms)
        await _shielded(drv._kill(run), reraise=False)
        return VmReport(name=name, uuid=spec.uuid, power_state=PowerState.STOPPED)


async def _switch_over(
    monitor: VmMonitor, run: RunDir, name: str, was_running: bool, paused_at: float
) -> MigrationReport:
    """Continue from pre-switchover to completed. The downtime reported is the longer of QEMU's own
    figure (which QEMU 7.2 often gives as 0 with pause-before-switchover) and the pause seen here,
    from pre-switchover to completed; the guest runs again once the target's finish_incoming `cont`s."""
    await monitor.execute("migrate-continue", {"state": "pre-switchover"})
    try:
        info = await _wait_migration(monitor, {"completed"}, MIGRATION_TIMEOUT_S)
    except DriverError:
        # Failed after the switch-over began: the target's QEMU exits by itself; run on here.
        if was_running:
            with contextlib.suppress(DriverError):
                await monitor.execute("cont")
        raise
    final = _migration_report(name, info)
    seen_ms = round((time.monotonic() - paused_at) * 1000)
    final.downtime_ms = max(final.downtime_ms or 0, seen_ms)
    _write_report(run, final)
    return final


async def _roll_back(
    monitor: VmMonitor,
    jobs: BlockJobs,
    job_ids: set[str],
    nodes: list[str],
    migrating: bool,
    was_running: bool,
    peers: list[tuple[str, int]],
) -> None:
    """Before the switch-over: cancel the migration and the mirrors, close the NBD connections, and let
    the guest run on here (it may be paused at pre-switchover). The connections to the target (`peers`)
    are destroyed after migrate_cancel: the target is thrown away, and on a dead link the mirrors'
    cancellation and blockdev-del would wait for TCP's timeout (blocking QEMU's main loop)."""
    if migrating:
        with contextlib.suppress(DriverError):
            await monitor.execute("migrate_cancel")
            with contextlib.suppress(DriverError):
                await _wait_migration(monitor, {"cancelled", "failed", "none"}, ROLLBACK_WAIT_S)
    if peers and (job_ids or nodes):
        await break_connections(peers)
    for job in job_ids:
        with contextlib.suppress(DriverError):
            await jobs.cancel(job, force=True, timeout=ROLLBACK_WAIT_S)
    for node in nodes:
        with contextlib.suppress(DriverError):
            await monitor.execute("blockdev-del", {"node-name": node})
    if was_running:
        with contextlib.suppress(DriverError):
            status = await monitor.execute("query-status")
            if status.get("status") in _PAUSED_BY_MIGRATION:
                await monitor.execute("cont")


async def cancel_migration(drv: QemuDriver, name: str) -> MigrationOutcome:
    """Stop the running migrate_vm (before the switch-over it rolls back; after it, it finishes), then
    settle from QEMU: a migration it still runs without an agent task (the agent restarted) is
    cancelled unless it completed. The VM left when the migration completed (QEMU says so, or the
    report written at the end); a VM this agent does not know has left too."""
    task = drv._migrations.get(name)
    if task is not None and not task.done() and task is not asyncio.current_task():
        task.cancel()
        await asyncio.wait([task])
    run = drv._run(name)
    if not run.spec_json.is_file():
        return MigrationOutcome(name=name, place=MigrationPlace.LEFT)
    async with drv._vm_locks[name]:
        if process.live_pid(run) is not None:
            monitor = drv.monitor(name)
            status = str((await monitor.execute("query-migrate")).get("status", "none"))
            if status == "device":  # switching over: wait for its end
                with contextlib.suppress(DriverError):
                    await _wait_migration(monitor, {"completed"}, 60.0)
                status = str((await monitor.execute("query-migrate")).get("status", "none"))
            if status == "completed":
                return MigrationOutcome(name=name, place=MigrationPlace.LEFT)
            jobs = BlockJobs(monitor)
            job_ids = {j.id for j in await jobs.list() if j.id.startswith("migrate-disk")}
            named = await monitor.execute("query-named-block-nodes", {"flat": True})
            leftover = [
                n
                for n in named
                if str(n.get("node-name")).startswith("migrate-disk") and str(n.get("node-name")).endswith("-nbd")
            ]
            nodes = [str(n.get("node-name")) for n in leftover]
            peers = [peer for n in leftover for peer in _uri_peer(str(n.get("file", "")))]
            migrating = status not in ("none", "cancelled", "failed")
            if migrating or job_ids or nodes:
                log.info("VM %s: cancelling a leftover migration (%s, jobs %s)", name, status, sorted(job_ids))
                await _shielded(_roll_back(monitor, jobs, job_ids, nodes, migrating, True, peers))
            return MigrationOutcome(name=name, place=MigrationPlace.HERE)
        try:
            report = MigrationReport.model_validate_json((run.path / MIGRATION_FILE).read_text())
        except (OSError, ValueError):
            report = None
        left = report is not None and report.status == "completed"
        return MigrationOutcome(name=name, place=MigrationPlace.LEFT if left else MigrationPlace.HERE)


def _write_report(run: RunDir, report: MigrationReport) -> None:
    (run.path / MIGRATION_FILE).write_text(report.model_dump_json())


async def migration_status(drv: QemuDriver, name: str) -> MigrationReport:
    """query-migrate of the running VM; after it left, the last migration's recorded end."""
    run = drv._existing(name)
    if process.live_pid(run) is not None:
        with contextlib.suppress(QmpUnavailable):
            info = await drv.monitor(name).execute("query-migrate")
            if info.get("status") is not None:
                return _migration_report(name, info)
    try:
        return MigrationReport.model_validate_json((run.path / MIGRATION_FILE).read_text())
    except (OSError, ValueError):
        return MigrationReport(name=name, status="none")


async def _shielded(aw: Awaitable[T], reraise: bool = True) -> T:
    """Run `aw` to its end even if the calling task is cancelled meanwhile (cleanup and switch-over
    must not stop half-way); the cancellation is re-raised after, unless `reraise` is false (the
    switch-over: once the VM runs at the target, the move has happened and is reported so)."""
    task = asyncio.ensure_future(aw)
    cancelled = False
    while True:
        try:
            result = await asyncio.shield(task)
        except asyncio.CancelledError:
            if task.done():
                raise
            cancelled = True
            continue
        if cancelled:
            if reraise:
                raise asyncio.CancelledError
            current = asyncio.current_task()
            if current is not None:
                current.uncancel()
        return result
