"""QemuDriver: the `Driver` contract implemented with daemonized QEMU processes and qemu-img.

The driver keeps no state of its own beyond locks and one QMP connection per running VM
(`monitor.VmMonitor`): every answer is read from the run directories, /proc and QMP, so a new driver
object after an agent restart sees exactly what the old one saw, and re-attaches to the running VMs
and their block jobs (`query-jobs`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import re
import shutil
import socket
import subprocess
import time
import uuid
from collections import defaultdict
from pathlib import Path
from typing import Any, Literal

from strato.agent.drivers import roles
from strato.agent.drivers.base import Driver, DriverError, ProgressFn
from strato.agent.drivers.layerexport import LayerExport, OpenedLayer
from strato.agent.drivers.qemu import (
    backup,
    images,
    layers,
    merge,
    migration,
    pools,
    process,
    saveflight,
    snapshots,
    transfer,
)
from strato.agent.drivers.qemu.blockjobs import BlockJobs
from strato.agent.drivers.qemu.mirror import DiskMotion
from strato.agent.drivers.qemu.monitor import VmMonitor
from strato.agent.drivers.qemu.process import Accel, RunDir
from strato.agent.drivers.qemu.qmp import QmpError, QmpUnavailable
from strato.agent.drivers.roles import MigrationSource, MigrationTarget, Snapshots
from strato.protocol.capabilities import DriverCapabilities
from strato.protocol.messages import (
    BlockJobOutcome,
    CdromSpec,
    DiskSpec,
    DiskStats,
    ErrorCode,
    HostInfo,
    IncomingDisk,
    LayerInfo,
    LayerRef,
    MigrationOutcome,
    NicSpec,
    PoolRef,
    PoolReport,
    PowerState,
    SnapshotDisk,
    SnapshotTaken,
    StateReport,
    VmReport,
    VmSpec,
    VmStats,
)
from strato.protocol.motion import BlockJobList, BlockJobReport, IncomingVm, MigrationReport

log = logging.getLogger("strato.agent.qemu")

LOCAL_POOL_ID = "local"
QUIT_GRACE_S = 5.0
DETACH_TIMEOUT_S = 15.0
DETACH_POLL_S = 0.2
BLOCKDEV_DEL_RETRY_S = 3.0
_RUNNING_STATES = {"running"}
_NODE_RE = re.compile(r"^disk(\d+)(?:-[ms][0-9a-f]+)?-fmt$")
"""A disk's top node: as started, after a live move (`mirror`) or a snapshot (`snapshots`)."""


MAX_DATA_VOLUMES = 24
"""Data disks per VM: the pc machine's PCI bus 0 has 32 slots; the host bridge, PIIX, VGA, the root disk
and a virtio-scsi controller take 5, and the rest is kept for NICs (CloudStack's KVM default is 24 too)."""


class QemuDriver(Driver, roles.BlockJobs, MigrationSource, MigrationTarget, Snapshots, LayerExport):
    """One QEMU process per VM under DATA_DIR/vms/<name>/; local pool at DATA_DIR/pools/local.

    Roles: lifecycle, layers and volumes, block jobs (live disk moves on one host, mirror.py), live
    migration with local disks (migration.py), layer copies between hosts (transfer.py), and VM
    snapshots with or without memory (snapshots.py, memstate.py, merge.py)."""

    capabilities = DriverCapabilities(
        hot_plug_disks=True,
        offline_storage_motion=True,
        live_storage_motion=True,
        live_migration=True,
        vm_snapshots=True,
        memory_snapshots=True,
        max_data_volumes=MAX_DATA_VOLUMES,
    )

    def __init__(
        self,
        data_dir: Path,
        accel: Accel = "auto",
        qemu_binary: str = "qemu-system-x86_64",
        detach_timeout_s: float = DETACH_TIMEOUT_S,
    ) -> None:
        self.data_dir = Path(data_dir).absolute()
        self.detach_timeout_s = detach_timeout_s
        self.accel = accel
        self.qemu_binary = qemu_binary
        self._vm_locks: defaultdict[str, asyncio.Lock] = defaultdict(asyncio.Lock)
        self._monitors: dict[str, VmMonitor] = {}
        self._vnc_lock = asyncio.Lock()
        self._version: str | None = None
        self._started_at = time.time()
        self._swept: set[str] = set()
        self._motion = DiskMotion(self)
        self._migrations: dict[str, asyncio.Task[Any]] = {}
        """The task running each VM's outgoing migrate_vm (what cancel_migration stops)."""

    # --- lifecycle ---------------------------------------------------------------------------------

    @property
    def vms_dir(self) -> Path:
        return self.data_dir / "vms"

    @property
    def local_pool(self) -> PoolRef:
        return PoolRef(id=LOCAL_POOL_ID, path=str(self.data_dir / "pools" / LOCAL_POOL_ID))

    async def start(self) -> None:
        """Re-attach: open the monitor of every running VM, tidy the run files of VMs that died."""
        self.vms_dir.mkdir(parents=True, exist_ok=True)
        pools.attach(self.local_pool, create=True)
        pools.remember(self.data_dir, self.local_pool)
        for run in self._run_dirs():
            if process.live_pid(run) is None:
                saveflight.tidy_files(run)
                run.remove_stale()
            else:
                with contextlib.suppress(QmpUnavailable):
                    self.monitor(run.path.name)
                try:
                    await saveflight.recover(self, run)
                except (DriverError, QmpUnavailable) as exc:
                    log.error("VM %s: ending a previous agent life's memory save failed: %s", run.path.name, exc)

    async def close(self) -> None:
        """Close the monitors; the VMs keep running (they must outlive the agent)."""
        monitors, self._monitors = list(self._monitors.values()), {}
        for monitor in monitors:
            await monitor.close()

    # --- monitors --------------------------------------------------------------------------------

    def monitor(self, name: str) -> VmMonitor:
        """The long-lived QMP connection of a running VM, opened on first use after a (re)start of
        QEMU or of the agent; QmpUnavailable when the VM does not run."""
        run = self._run(name)
        pid = process.live_pid(run)
        current = self._monitors.get(name)
        if current is not None and not current.closed and current.pid == pid:
            return current
        if pid is None:
            raise QmpUnavailable(f"VM {name} is not running")
        monitor = VmMonitor(name, run.qmp_sock, pid, alive=lambda: process.live_pid(run) == pid)
        monitor.start()
        self._monitors[name] = monitor
        if current is not None:
            current.abandon()  # a QEMU of an earlier start of this VM
        return monitor

    def jobs_of(self, name: str) -> BlockJobs:
        """Mirror / stream / commit jobs of a running VM, on its monitor."""
        return BlockJobs(self.monitor(name))

    async def _forget_monitor(self, name: str) -> None:
        monitor = self._monitors.pop(name, None)
        if monitor is not None:
            await monitor.close()

    def _run(self, name: str) -> RunDir:
        process.check_name(name)
        return RunDir(self.vms_dir / name)

    def _run_dirs(self) -> list[RunDir]:
        if not self.vms_dir.is_dir():
            return []
        return [RunDir(p) for p in sorted(self.vms_dir.iterdir()) if (p / "spec.json").is_file()]

    # --- host and pools ----------------------------------------------------------------------------

    async def host_info(self) -> HostInfo:
        return HostInfo(
            hostname=socket.gethostname(),
            driver="qemu",
            hypervisor="KVM",
            hypervisor_version=await self._qemu_version(),
            cpus=os.cpu_count() or 1,
            cpu_mhz=_cpu_mhz(),
            memory_bytes=_memory_bytes(),
            local_pool=pools.attach(self.local_pool, create=True),
        )

    async def _qemu_version(self) -> str:
        if self._version is None:
            proc = await asyncio.create_subprocess_exec(
                self.qemu_binary, "--version", stdout=subprocess.PIPE, stderr=subprocess.DEVNULL
            )
            out, _ = await proc.communicate()
            match = re.search(r"version (\S+)", out.decode(errors="replace"))
            self._version = match.group(1) if match else "unknown"
        return self._version

    async def state(self, pools_: list[PoolRef]) -> StateReport:
        """All VMs with a run directory, and the capacity of the given pools that exist (others omitted)."""
        vms = [await self._report(run) for run in self._run_dirs()]
        reports: list[PoolReport] = []
        for pool in pools_:
            self._sweep(pool)
            try:
                reports.append(pools.pool_report(pool))
            except DriverError as exc:
                if exc.code != ErrorCode.NOT_FOUND:
                    raise
        return StateReport(vms=vms, pools=reports)

    async def attach_pool(self, pool: PoolRef, create: bool) -> PoolReport:
        report = pools.attach(pool, create)
        pools.remember(self.data_dir, pool)
        self._sweep(pool)
        return report

    def _sweep(self, pool: PoolRef) -> None:
        """Once per pool and agent life: partial files left by the agent's previous life go."""
        if pool.path in self._swept:
            return
        self._swept.add(pool.path)
        for path in pools.sweep_stale_temp_files(Path(pool.path), self._started_at):
            log.info("removed a partial file left by an earlier agent: %s", path)

    # --- layers ------------------------------------------------------------------------------------

    async def create_layer(self, layer: LayerRef, size_bytes: int | None, backing: LayerRef | None) -> LayerInfo:
        path = pools.layer_path(layer)
        await layers.create(path, size_bytes, pools.layer_path(backing) if backing else None)
        return await layers.info(layer.name, path)

    async def layer_info(self, layer: LayerRef) -> LayerInfo:
        return await layers.info(layer.name, pools.layer_path(layer))

    async def copy_layer(
        self, source: LayerRef, target: LayerRef, bandwidth: int | None, progress: ProgressFn
    ) -> LayerInfo:
        target_path = pools.layer_path(target)
        await layers.copy(pools.layer_path(source), target_path, bandwidth, progress)
        return await layers.info(target.name, target_path)

    async def rebase_layer(self, layer: LayerRef, backing: LayerRef | None) -> LayerInfo:
        path = pools.layer_path(layer)
        await layers.rebase(path, pools.layer_path(backing) if backing else None)
        return await layers.info(layer.name, path)

    async def remove_layer(self, layer: LayerRef, missing_ok: bool) -> None:
        """Refuses (INVALID_STATE) to delete a file a running QEMU has open, as top or backing layer."""
        path = pools.layer_path(layer)
        if path.exists():
            real = os.path.realpath(path)
            for run in self._run_dirs():
                if real in await self._open_files(run):
                    raise DriverError(ErrorCode.INVALID_STATE, f"layer {layer.name} is in use by VM {run.path.name}")
        layers.remove(path, missing_ok, Path(layer.pool.path))
        pools.prune_empty_dirs(path.parent, Path(layer.pool.path))

    async def _open_files(self, run: RunDir) -> set[str]:
        """Files QEMU has open for this VM, asked from QEMU itself (block jobs may have changed them)."""
        if process.live_pid(run) is None:
            return set()
        try:
            nodes = await self._qmp(run, "query-named-block-nodes", {"flat": True})
        except QmpUnavailable:
            return set()
        return {os.path.realpath(str(node["file"])) for node in nodes if str(node.get("drv")) == "file"}

    # --- VMs ---------------------------------------------------------------------------------------

    async def start_vm(self, spec: VmSpec) -> VmReport:
        return await self._start(spec)

    async def _start(self, spec: VmSpec, extra_argv: tuple[str, ...] = ()) -> VmReport:
        """start_vm, with QEMU arguments appended (an incoming migration's `-incoming defer -S`)."""
        run = self._run(spec.name)
        try:
            uuid.UUID(spec.uuid)
        except ValueError as exc:
            raise DriverError(ErrorCode.BAD_REQUEST, f"invalid uuid {spec.uuid!r}") from exc
        disk_paths = {disk.device_id: pools.layer_path(disk.layer) for disk in spec.disks}
        if len(disk_paths) != len(spec.disks):
            raise DriverError(ErrorCode.BAD_REQUEST, "duplicate disk device_id")
        for disk in spec.disks:
            if not disk_paths[disk.device_id].is_file():
                raise DriverError(ErrorCode.NOT_FOUND, f"disk {disk.device_id}: layer {disk.layer.name} not found")
        for what, cd in (("cdrom", spec.cdrom), ("config drive", spec.config_drive)):
            if cd is not None and cd.path:
                _check_iso_path(what, cd.path)
        if spec.guest_commands is not None and "\0" in spec.guest_commands:
            raise DriverError(ErrorCode.BAD_REQUEST, "guest_commands must not contain NUL")
        async with self._vm_locks[spec.name]:
            if process.live_pid(run) is not None:
                raise DriverError(ErrorCode.INVALID_STATE, f"VM {spec.name} is already running")
            run.path.mkdir(parents=True, exist_ok=True)
            run.remove_stale()
            await self._forget_monitor(spec.name)
            run.serial_log.unlink(missing_ok=True)
            run.write_spec(spec)
            accel = process.resolve_accel(self.accel)
            # The lock only orders our own starts; QEMU's `to=` covers ports taken meanwhile by others.
            async with self._vnc_lock:
                argv = process.command_line(self.qemu_binary, spec, run, accel, disk_paths, process.free_vnc_display())
                argv += extra_argv
                pid = await process.launch(argv, run)
            vnc_port: int | None = None
            try:
                vnc = await self._qmp(run, "query-vnc")
                vnc_port = int(vnc["service"])
            except (QmpUnavailable, KeyError, ValueError, TypeError):
                pass
            run.runtime_json.write_text(
                json.dumps({"pid": pid, "accel": accel, "vnc_port": vnc_port, "argv": argv}, indent=2)
            )
            return await self._report(run)

    async def stop_vm(self, name: str, force: bool, timeout_s: float) -> VmReport:
        """ACPI power button, then `quit` after timeout_s (at once when force), SIGKILL as last resort."""
        run = self._existing(name)
        async with self._vm_locks[name]:
            if process.live_pid(run) is None:
                run.remove_stale()
                return await self._report(run)
            if not force:
                try:
                    await self._qmp(run, "system_powerdown")
                except QmpUnavailable:
                    pass
                else:
                    await process.wait_exit(run, timeout_s)
            await self._kill(run)
            return await self._report(run)

    async def _kill(self, run: RunDir) -> None:
        pid = process.live_pid(run)
        if pid is None:
            run.remove_stale()
            return
        # QEMU may close the socket before answering `quit`; the wait below decides.
        with contextlib.suppress(DriverError):
            await self._qmp(run, "quit")
        if not await process.wait_exit(run, QUIT_GRACE_S):
            process.kill(pid)
            await process.wait_exit(run, QUIT_GRACE_S)
        await self._forget_monitor(run.path.name)
        run.remove_stale()

    async def reboot_vm(self, name: str) -> VmReport:
        run = self._existing(name)
        async with self._vm_locks[name]:
            if process.live_pid(run) is None:
                raise DriverError(ErrorCode.INVALID_STATE, f"VM {name} is not running")
            await self._qmp(run, "system_reset")
            return await self._report(run)

    async def get_vm(self, name: str) -> VmReport:
        return await self._report(self._existing(name))

    async def vm_stats(self, name: str) -> VmStats:
        run = self._existing(name)
        spec = run.read_spec()
        pid = process.live_pid(run)
        if spec is None or pid is None:
            raise DriverError(ErrorCode.INVALID_STATE, f"VM {name} is not running")
        stats = await self._qmp(run, "query-blockstats")
        disks: list[DiskStats] = []
        for entry in stats:
            node = str(entry.get("node-name", ""))
            match = _NODE_RE.match(node)
            if not match:
                continue  # cdrom, unnamed nodes
            s = entry["stats"]
            disks.append(
                DiskStats(
                    device_id=int(match.group(1)),
                    node_name=node,
                    read_bytes=s["rd_bytes"],
                    write_bytes=s["wr_bytes"],
                    read_ops=s["rd_operations"],
                    write_ops=s["wr_operations"],
                )
            )
        return VmStats(name=name, cpu_time_ns=process.cpu_time_ns(pid), memory_mib=spec.memory_mib, disks=disks)

    async def remove_vm(self, name: str) -> None:
        """forget_vm under the VM's lock; a VM that is already gone is not an error."""
        run = self._run(name)
        async with self._vm_locks[name]:
            if not run.path.exists():
                return
            if process.live_pid(run) is not None:
                raise DriverError(ErrorCode.INVALID_STATE, f"VM {name} is running: stop it first")
            await self._forget_monitor(name)
            shutil.rmtree(run.path, ignore_errors=True)

    async def console_log(self, name: str, tail_bytes: int | None) -> str:
        run = self._existing(name)
        try:
            with open(run.serial_log, "rb") as f:
                size = os.fstat(f.fileno()).st_size
                if tail_bytes is not None and size > tail_bytes:
                    f.seek(size - tail_bytes)
                data = f.read()
        except FileNotFoundError:
            return ""
        return data.decode(errors="replace")

    def forget_vm(self, name: str) -> None:
        """Remove the run directory (spec, serial log) of a stopped VM; not part of the Driver contract."""
        run = self._existing(name)
        if process.live_pid(run) is not None:
            raise DriverError(ErrorCode.INVALID_STATE, f"VM {name} is running")
        monitor = self._monitors.pop(name, None)
        if monitor is not None:
            monitor.abandon()
        shutil.rmtree(run.path, ignore_errors=True)

    # --- storage commands -----------------------------------------------------------------------

    async def fetch_image(
        self,
        url: str,
        target: LayerRef,
        fmt: Literal["qcow2", "raw", "iso"],
        checksum: str | None,
        progress: ProgressFn,
    ) -> LayerInfo:
        return await images.fetch(url, pools.layer_path(target), target.name, fmt, checksum, progress)

    async def convert_layer(self, source: LayerRef, target: LayerRef, progress: ProgressFn) -> LayerInfo:
        return await images.flatten(
            pools.layer_path(source), source.name, pools.layer_path(target), target.name, progress
        )

    async def build_config_drive(
        self,
        target: LayerRef,
        hostname: str,
        instance_id: str,
        user_data: str | None,
        public_keys: list[str],
    ) -> LayerInfo:
        if not hostname.strip():
            raise DriverError(ErrorCode.BAD_REQUEST, "hostname must not be empty")
        return await images.config_drive(
            pools.layer_path(target), target.name, hostname, instance_id, user_data, public_keys
        )

    async def resize_layer(
        self, layer: LayerRef, size_bytes: int, vm_name: str | None, device_id: int | None
    ) -> LayerInfo:
        """Grow only. Live (`block_resize` on the disk's qcow2 node) when `vm_name` runs with a disk
        `device_id` whose top layer is this one; otherwise `qemu-img resize`, which a running QEMU's
        image lock refuses (INVALID_STATE) if the layer is in use."""
        path = pools.layer_path(layer)
        current = await layers.info(layer.name, path)
        if current.format != "qcow2":
            raise DriverError(ErrorCode.BAD_REQUEST, f"layer {layer.name} is {current.format}, not qcow2")
        if size_bytes < current.virtual_size:
            raise DriverError(
                ErrorCode.BAD_REQUEST,
                f"shrinking layer {layer.name} from {current.virtual_size} to {size_bytes} bytes is refused",
            )
        if size_bytes % 512:
            raise DriverError(ErrorCode.BAD_REQUEST, "size_bytes must be a multiple of 512")
        if size_bytes == current.virtual_size:
            return current
        if vm_name is not None and device_id is not None:
            run = self._existing(vm_name)
            async with self._vm_locks[vm_name]:
                spec = run.read_spec()
                has_disk = spec is not None and any(d.device_id == device_id for d in spec.disks)
                if process.live_pid(run) is not None and has_disk:
                    top = await self._disk_top(run, device_id)
                    if top is None or top[1] != os.path.realpath(path):
                        raise DriverError(
                            ErrorCode.BAD_REQUEST,
                            f"layer {layer.name} is not the top layer of disk {device_id} of VM {vm_name}",
                        )
                    await self._qmp(run, "block_resize", {"node-name": top[0], "size": size_bytes})
                    return await layers.info(layer.name, path)
        await images.resize_offline(path, size_bytes)
        return await layers.info(layer.name, path)

    async def _disk_top(self, run: RunDir, device_id: int) -> tuple[str, str] | None:
        """(node name, real path of the image file) of the medium disk `device_id` reads now: found by
        device, not by node name, since block jobs (live moves) put other nodes on top."""
        device = process.disk_device_id(device_id)
        for block in await self._qmp(run, "query-block"):
            qdev = str(block.get("qdev", "")).removeprefix("/machine/peripheral/").removesuffix("/virtio-backend")
            inserted = block.get("inserted")
            if qdev == device and isinstance(inserted, dict):
                return str(inserted.get("node-name")), os.path.realpath(str(inserted.get("file", "")))
        return None

    # --- migration and host-to-host copies (migration.py, transfer.py) -------------------------------

    async def prepare_incoming(self, spec: VmSpec, disks: list[IncomingDisk], listen_host: str) -> IncomingVm:
        return await migration.prepare_incoming(self, spec, disks, listen_host)

    async def finish_incoming(self, name: str) -> VmReport:
        return await migration.finish_incoming(self, name)

    async def abort_incoming(self, name: str) -> None:
        await migration.abort_incoming(self, name)

    async def migrate_vm(
        self, name: str, incoming: IncomingVm, bandwidth_bytes_per_s: int | None, progress: ProgressFn
    ) -> VmReport:
        return await migration.migrate_vm(self, name, incoming, bandwidth_bytes_per_s, progress)

    async def migration_status(self, name: str) -> MigrationReport:
        return await migration.migration_status(self, name)

    async def cancel_migration(self, name: str) -> MigrationOutcome:
        return await migration.cancel_migration(self, name)

    async def pull_layer(
        self,
        source_agent_url: str,
        source_token: str,
        source: LayerRef,
        target: LayerRef,
        bandwidth_bytes_per_s: int | None,
        progress: ProgressFn,
    ) -> LayerInfo:
        return await transfer.pull(source_agent_url, source_token, source, target, bandwidth_bytes_per_s, progress)

    async def open_layer(self, pool_id: str, name: str, pool_path: str | None = None) -> OpenedLayer:
        return transfer.open_layer(self.data_dir, pool_id, name, pool_path)

    # --- devices of running VMs ----------------------------------------------------------------

    def _running_spec(self, run: RunDir) -> VmSpec:
        spec = run.read_spec()
        if spec is None or process.live_pid(run) is None:
            raise DriverError(ErrorCode.INVALID_STATE, f"VM {run.path.name} is not running")
        return spec

    async def _block_nodes(self, run: RunDir) -> set[str]:
        nodes = await self._qmp(run, "query-named-block-nodes", {"flat": True})
        return {str(node.get("node-name")) for node in nodes}

    async def _device_exists(self, run: RunDir, device: str) -> bool:
        try:
            await self._qmp(run, "qom-get", {"path": f"/machine/peripheral/{device}", "property": "type"})
        except QmpError:
            return False
        return True

    async def _blockdev_del(self, run: RunDir, *node_names: str) -> None:
        """Delete the named nodes that exist, in order; retries a while if QEMU still holds one
        (a device's last reference can be dropped a little after it left the device tree)."""
        loop = asyncio.get_running_loop()
        for node in node_names:
            deadline = loop.time() + BLOCKDEV_DEL_RETRY_S
            while node in await self._block_nodes(run):
                try:
                    await self._qmp(run, "blockdev-del", {"node-name": node})
                except QmpError:
                    if loop.time() >= deadline:
                        raise
                    await asyncio.sleep(0.1)

    async def attach_disk(self, vm_name: str, disk: DiskSpec) -> VmReport:
        """blockdev-add (file + qcow2 nodes named as at start), device_add with the same id, and the
        disk is added to spec.json so a restart or re-attach knows it."""
        run = self._existing(vm_name)
        path = pools.layer_path(disk.layer)
        if not path.is_file():
            raise DriverError(ErrorCode.NOT_FOUND, f"disk {disk.device_id}: layer {disk.layer.name} not found")
        if disk.bus == "ide":
            raise DriverError(ErrorCode.BAD_REQUEST, "IDE disks cannot be hot-plugged: use virtio or scsi")
        async with self._vm_locks[vm_name]:
            spec = self._running_spec(run)
            device = process.disk_device_id(disk.device_id)
            if any(d.device_id == disk.device_id for d in spec.disks) or await self._device_exists(run, device):
                raise DriverError(ErrorCode.ALREADY_EXISTS, f"VM {vm_name} already has a disk {disk.device_id}")
            added: list[str] = []
            try:
                for node in process.disk_blockdevs(disk, path):
                    await self._qmp(run, "blockdev-add", node)
                    added.append(str(node["node-name"]))
                if disk.bus == "scsi" and not await self._device_exists(run, process.SCSI_CONTROLLER):
                    await self._qmp(run, "device_add", {"driver": "virtio-scsi-pci", "id": process.SCSI_CONTROLLER})
                await self._qmp(run, "device_add", dict(process.disk_device(disk)))
            except BaseException:
                with contextlib.suppress(DriverError):
                    await self._blockdev_del(run, *reversed(added))
                raise
            spec.disks.append(disk)
            run.write_spec(spec)
            return await self._report(run)

    async def detach_disk(self, vm_name: str, device_id: int) -> VmReport:
        """Unplug (`_unplug`: the guest must release it; INVALID_STATE after the timeout, the disk stays
        attached and in spec.json, and a later detach_disk finishes the job), then blockdev-del."""
        run = self._existing(vm_name)
        async with self._vm_locks[vm_name]:
            spec = self._running_spec(run)
            disk = next((d for d in spec.disks if d.device_id == device_id), None)
            device = process.disk_device_id(device_id)
            present = await self._device_exists(run, device)
            top = await self._disk_top(run, device_id) if present else None
            if disk is None and not present:
                raise DriverError(ErrorCode.NOT_FOUND, f"VM {vm_name} has no disk {device_id}")
            if disk is not None and disk.bus == "ide":
                raise DriverError(ErrorCode.BAD_REQUEST, "IDE disks cannot be hot-unplugged")
            if present:
                await self._unplug(run, device, f"disk {device_id}")
            nodes = list(reversed(process.disk_node_names(device_id)))
            if top is not None and top[0] not in nodes:  # moved live: its nodes are the move's
                nodes = [top[0], top[0].removesuffix("-fmt") + "-file", *nodes]
            await self._blockdev_del(run, *nodes)
            spec.disks = [d for d in spec.disks if d.device_id != device_id]
            run.write_spec(spec)
            return await self._report(run)

    async def _unplug(self, run: RunDir, device: str, what: str) -> None:
        """device_del, then wait until the device has left QEMU's device tree (what DEVICE_DELETED
        announces; polled, so the monitor stays free for other calls meanwhile).

        A PCI device is only released once the guest OS acknowledges the ACPI unplug request: a guest
        without an OS, or one ignoring it, keeps it. After `detach_timeout_s` INVALID_STATE, and the
        device stays; the request stays pending in QEMU, and a later call finishes once it is gone."""
        try:
            await self._qmp(run, "device_del", {"id": device})
        except QmpError:
            if await self._device_exists(run, device):
                raise
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.detach_timeout_s
        while await self._device_exists(run, device):
            if loop.time() >= deadline:
                raise DriverError(
                    ErrorCode.INVALID_STATE,
                    f"the guest of VM {run.path.name} did not release {what} within {self.detach_timeout_s:g} s "
                    f"(no OS running, or no ACPI PCI hot-plug support in the guest); the {what} stays attached",
                )
            await asyncio.sleep(DETACH_POLL_S)

    async def _netdev_del(self, run: RunDir, netdev: str) -> None:
        """netdev_del; a netdev that is not there is no error (taken back already, or never made)."""
        try:
            await self._qmp(run, "netdev_del", {"id": netdev})
        except QmpError as exc:
            if exc.error_class != "DeviceNotFound":
                raise

    async def attach_nic(self, vm_name: str, nic: NicSpec) -> VmReport:
        """netdev_add on the NIC's tap (made by the host's network layer: a missing tap is refused, as
        QEMU would make a loose one off the bridge), device_add of a virtio NIC with its MAC on a free
        slot of the pc machine's bus 0 (ACPI PCI hot-plug), and the NIC is added to spec.json.
        A failing device_add takes the netdev back."""
        run = self._existing(vm_name)
        try:
            socket.if_nametoindex(nic.tap)  # in the agent's network namespace (sysfs may show another)
        except OSError:
            raise DriverError(ErrorCode.NOT_FOUND, f"tap {nic.tap} of NIC {nic.mac} is not on this host") from None
        async with self._vm_locks[vm_name]:
            spec = self._running_spec(run)
            netdev, device = process.nic_ids(nic)
            if any(n.mac == nic.mac for n in spec.nics) or await self._device_exists(run, device):
                raise DriverError(ErrorCode.ALREADY_EXISTS, f"VM {vm_name} already has a NIC {nic.mac}")
            await self._netdev_del(run, netdev)  # one left by an interrupted attach is made again
            await self._qmp(run, "netdev_add", dict(process.nic_netdev(nic)))
            try:
                await self._qmp(run, "device_add", dict(process.nic_device(nic)))
            except BaseException:
                with contextlib.suppress(DriverError):
                    await self._netdev_del(run, netdev)
                raise
            spec.nics.append(nic)
            run.write_spec(spec)
            return await self._report(run)

    async def detach_nic(self, vm_name: str, mac: str) -> VmReport:
        """device_del and wait for the guest to release the NIC (`_unplug`: INVALID_STATE after the
        timeout, the NIC stays in the VM and in spec.json), then netdev_del; the tap is the network
        layer's to remove."""
        run = self._existing(vm_name)
        async with self._vm_locks[vm_name]:
            spec = self._running_spec(run)
            nic = next((n for n in spec.nics if n.mac == mac), None)
            if nic is None:
                raise DriverError(ErrorCode.NOT_FOUND, f"VM {vm_name} has no NIC {mac}")
            netdev, device = process.nic_ids(nic)
            if await self._device_exists(run, device):
                await self._unplug(run, device, f"NIC {mac}")
            await self._netdev_del(run, netdev)
            spec.nics = [n for n in spec.nics if n.mac != mac]
            run.write_spec(spec)
            return await self._report(run)

    async def change_cdrom(self, vm_name: str, path: str | None) -> VmReport:
        """blockdev-change-medium (forced: opens a tray the guest locked) or eject on the user CD
        drive, which every VM has (empty unless the spec names an ISO); spec.json records the medium."""
        run = self._existing(vm_name)
        if path is not None:
            _check_iso_path("cdrom", path)
        async with self._vm_locks[vm_name]:
            spec = self._running_spec(run)
            if not await self._device_exists(run, process.USER_CD):
                raise DriverError(ErrorCode.INVALID_STATE, f"VM {vm_name} has no CD drive")
            if path is None:
                await self._qmp(run, "eject", {"id": process.USER_CD, "force": True})
            else:
                await self._qmp(
                    run,
                    "blockdev-change-medium",
                    {
                        "id": process.USER_CD,
                        "filename": path,
                        "format": "raw",
                        "read-only-mode": "read-only",
                        "force": True,
                    },
                )
            # The medium it was started with was opened as named nodes, which outlive their removal.
            await self._blockdev_del(run, f"{process.USER_CD}-fmt", f"{process.USER_CD}-file")
            spec.cdrom = CdromSpec(path=path)
            run.write_spec(spec)
            return await self._report(run)

    # --- block jobs: live disk moves (mirror.py) ------------------------------------------------------

    async def mirror_disk(
        self,
        vm_name: str,
        device_id: int,
        target: LayerRef,
        target_backing: LayerRef | None,
        bandwidth_bytes_per_s: int | None,
        progress: ProgressFn,
    ) -> DiskSpec:
        return await self._motion.mirror_disk(
            vm_name, device_id, target, target_backing, bandwidth_bytes_per_s, progress
        )

    async def set_block_job_speed(self, vm_name: str, device_id: int, bandwidth_bytes_per_s: int) -> BlockJobReport:
        return await self._motion.set_block_job_speed(vm_name, device_id, bandwidth_bytes_per_s)

    async def block_jobs(self, vm_name: str) -> BlockJobList:
        return await self._motion.block_jobs(vm_name)

    async def cancel_block_job(self, vm_name: str, device_id: int, target: LayerRef | None) -> BlockJobOutcome:
        return await self._motion.cancel_block_job(vm_name, device_id, target)

    # --- VM snapshots (snapshots.py, memstate.py, merge.py) ------------------------------------------

    async def snapshot_vm(
        self, vm_name: str, disks: list[SnapshotDisk], memory: LayerRef | None, progress: ProgressFn
    ) -> SnapshotTaken:
        return await snapshots.snapshot_vm(self, vm_name, disks, memory, progress)

    async def save_vm(self, vm_name: str, memory: LayerRef, progress: ProgressFn) -> LayerInfo:
        return await snapshots.save_vm(self, vm_name, memory, progress)

    async def restore_vm(self, spec: VmSpec, memory: LayerRef, progress: ProgressFn) -> VmReport:
        return await snapshots.restore_vm(self, spec, memory, progress)

    async def stream_disk(
        self, vm_name: str, device_id: int, into: LayerRef, base: LayerRef | None, progress: ProgressFn
    ) -> DiskSpec:
        return await merge.stream_disk(self, vm_name, device_id, into, base, progress)

    async def commit_disk(
        self, vm_name: str, device_id: int, top: LayerRef, base: LayerRef, progress: ProgressFn
    ) -> DiskSpec:
        return await merge.commit_disk(self, vm_name, device_id, top, base, progress)

    async def commit_layer(self, top: LayerRef, base: LayerRef, progress: ProgressFn) -> LayerInfo:
        return await merge.commit_layer(top, base, progress)

    async def stream_layer(self, layer: LayerRef, base: LayerRef | None, progress: ProgressFn) -> LayerInfo:
        return await merge.stream_layer(layer, base, progress)

    async def backup_disk(self, vm_name: str, device_id: int, target: LayerRef, progress: ProgressFn) -> LayerInfo:
        return await backup.backup_disk(self, vm_name, device_id, target, progress)

    async def _qmp(self, run: RunDir, command: str, arguments: dict[str, object] | None = None) -> Any:
        """One short QMP call on the VM's shared connection: no lock, concurrent calls (and a block
        job's waits) go on in parallel; each call has its own timeout."""
        return await self.monitor(run.path.name).execute(command, arguments)

    def _existing(self, name: str) -> RunDir:
        run = self._run(name)
        if not run.spec_json.is_file():
            raise DriverError(ErrorCode.NOT_FOUND, f"VM {name} not found")
        return run

    async def _report(self, run: RunDir) -> VmReport:
        """Power state from the process and `query-status`; stale run files of dead VMs are removed."""
        spec = run.read_spec()
        name = run.path.name
        vm_uuid = spec.uuid if spec else None
        pid = process.live_pid(run)
        if pid is None:
            run.remove_stale()
            await self._forget_monitor(name)
            return VmReport(name=name, uuid=vm_uuid, power_state=PowerState.STOPPED)
        try:
            status = await self._qmp(run, "query-status")
            power = PowerState.RUNNING if status["status"] in _RUNNING_STATES else PowerState.PAUSED
        except QmpUnavailable:
            power = PowerState.STOPPED if process.live_pid(run) is None else PowerState.UNKNOWN
        if power == PowerState.STOPPED:
            run.remove_stale()
            await self._forget_monitor(name)
            return VmReport(name=name, uuid=vm_uuid, power_state=power)
        port = run.read_runtime().get("vnc_port")
        return VmReport(
            name=name,
            uuid=vm_uuid,
            power_state=power,
            pid=pid,
            vnc_port=port if isinstance(port, int) else None,
        )


def _check_iso_path(what: str, path: str) -> None:
    if not os.path.isabs(path):
        raise DriverError(ErrorCode.BAD_REQUEST, f"{what} path must be absolute")
    if not os.path.isfile(path):
        raise DriverError(ErrorCode.NOT_FOUND, f"{what} image {path} not found")


def _cpu_mhz() -> int:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("cpu MHz"):
                return round(float(line.split(":", 1)[1]))
    except (OSError, ValueError):
        pass
    return 0


def _memory_bytes() -> int:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        pass
    return 0
