"""The simulator driver: the whole driver contract with no QEMU and no disk files.

It exists so the control plane can be exercised at scale (hundreds of hosts in one process) and under
injected delays and failures, like CloudStack's simulator hypervisor. Its state (pools, layer records,
running VMs, injected behaviour) lives in DATA_DIR/simulator-state.json, written atomically after every
change, so a restarted simulator agent still has its VMs and layers, as a restarted real agent would.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field

from strato.agent.agentlog import get_logger
from strato.agent.drivers.base import Driver, DriverError, ProgressFn, report_phase
from strato.agent.drivers.imagefetch import (
    Checksum,
    check_fetched_qcow2,
    display_url,
    file_url_path,
    parse_checksum,
    url_kind,
)
from strato.agent.drivers.roles import BlockJobs, MigrationSource, MigrationTarget, SimulatorControl
from strato.agent.drivers.simsnapshots import SimSnapshots
from strato.protocol.capabilities import DriverCapabilities
from strato.protocol.messages import (
    COMMANDS,
    BlockJobOutcome,
    CdromSpec,
    DiskPlace,
    DiskSpec,
    DiskStats,
    ErrorCode,
    HostInfo,
    IncomingDisk,
    LayerInfo,
    LayerRef,
    MigrationOutcome,
    MigrationPlace,
    NicSpec,
    PoolRef,
    PoolReport,
    PowerState,
    Role,
    StateReport,
    VmReport,
    VmSpec,
    VmStats,
)
from strato.protocol.motion import BlockJobKind, BlockJobList, BlockJobReport, IncomingVm, MigrationReport, NbdExport

log = get_logger("simulator")

TIB = 1 << 40
GIB = 1 << 30
MIB = 1 << 20
EMPTY_QCOW2_BYTES = 196_608
"""Physical size of a freshly created qcow2 layer (its header and tables), as qemu-img makes it."""
CONFIG_DRIVE_BYTES = 374_784
"""Size of a config drive ISO, about what genisoimage makes for one."""
STATE_FILE = "simulator-state.json"
CONFIG_FILE = "simulator-config.json"
PROGRESS_STEPS = 20
MAX_DATA_VOLUMES = 24
"""As the QEMU driver declares (its PCI slots), so limits behave the same on simulated hosts."""


class SimulatorConfig(BaseModel):
    """The simulated host's resources; read from DATA_DIR/simulator-config.json when present."""

    hostname: str | None = None
    cpus: int = 16
    cpu_mhz: int = 2400
    memory_bytes: int = 64 * GIB
    pool_capacity_bytes: int = TIB
    pool_capacities: dict[str, int] = {}
    """Capacity per pool id, overriding `pool_capacity_bytes`."""
    http_image_virtual_bytes: int = 2 * GIB
    """Virtual size of an image "fetched" from an http(s) URL (which the simulator does not fetch)."""
    http_image_physical_bytes: int = 512 * MIB
    """Its physical size (and the size of an ISO fetched from an http(s) URL)."""


class _Layer(BaseModel):
    format: str = "qcow2"
    virtual_size: int
    physical_size: int
    backing: LayerRef | None = None


class _Vm(BaseModel):
    """A VM the host knows; stopped VMs stay known (as a real host keeps their run directory)."""

    spec: VmSpec
    pid: int | None = None
    vnc_port: int | None = None
    started_at: float | None = None
    incoming: IncomingVm | None = None
    """Set while the VM waits here for an incoming migration (prepare_incoming until finish/abort)."""
    incoming_layers: list[LayerRef] = []
    """The new top layers prepare_incoming created (abort_incoming removes them)."""

    @property
    def running(self) -> bool:
        return self.pid is not None


class _Behaviour(BaseModel):
    delay_s: float = 0.0
    fail_count: int = 0
    fail_message: str | None = None


class _Storage(BaseModel):
    pools: dict[str, PoolRef] = {}
    """Pool id -> the pool as last attached."""
    layers: dict[str, dict[str, _Layer]] = {}
    """Pool id -> layer name -> record."""


class _State(BaseModel):
    storage: _Storage = _Storage()
    """This host's layers (all of them, or only its local pool's when a SharedStorage is used)."""
    vms: dict[str, _Vm] = {}
    behaviour: dict[str, _Behaviour] = {}
    migrations: dict[str, MigrationReport] = {}
    """The last outgoing migration of each VM, as migration_status reports it."""
    next_pid: int = Field(default=100_000)


def _layer_key(ref: LayerRef) -> tuple[str, str]:
    return ref.pool.id, ref.name


def _write_atomically(path: Path, text: str) -> None:
    """Temp file + rename: a killed agent never leaves half a file."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


class SharedStorage:
    """Layer records of the pools several simulated hosts of one process share (a fleet).

    On real hosts a cluster-wide pool is one mount seen by all of them; here the hosts of a fleet keep
    every pool but their own local one in this store, so a layer created through one host is visible
    through another. Pools are told apart by id, which the server keeps unique."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        exists = self.path.exists()
        self.data = _Storage.model_validate_json(self.path.read_text(encoding="utf-8")) if exists else _Storage()

    def save(self) -> None:
        _write_atomically(self.path, self.data.model_dump_json())


def _same_layer(a: LayerRef, b: LayerRef) -> bool:
    return a.pool.id == b.pool.id and a.name == b.name


def _describe(ref: LayerRef) -> str:
    return f"{ref.pool.path}/{ref.name}"


async def _progress_over(duration: float, total: int, progress: ProgressFn) -> None:
    """Report progress in PROGRESS_STEPS steps spread over `duration` seconds (cancellable)."""
    progress(0, total)
    if duration > 0:
        for step in range(1, PROGRESS_STEPS + 1):
            await asyncio.sleep(duration / PROGRESS_STEPS)
            progress(total * step // PROGRESS_STEPS, total)


def _inspect_file(path: Path, checksum: Checksum | None) -> tuple[int, int, str | None]:
    """(size, allocated bytes, hex digest or None) of a real file named by a file:// URL."""
    hasher = checksum.hasher() if checksum is not None else None
    with open(path, "rb") as f:
        st = os.fstat(f.fileno())
        if hasher is not None:
            while chunk := f.read(1 << 20):
                hasher.update(chunk)
    return st.st_size, st.st_blocks * 512, hasher.hexdigest() if hasher is not None else None


class SimulatorDriver(Driver, BlockJobs, MigrationSource, MigrationTarget, SimSnapshots, SimulatorControl):
    """A fake host: records instead of files and processes, with configurable delays and failures.

    Its roles and capabilities are the QEMU driver's, so the control plane sees the same host."""

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
        self, data_dir: Path, config: SimulatorConfig | None = None, shared: SharedStorage | None = None
    ) -> None:
        self.data_dir = Path(data_dir)
        self._shared = shared
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.config = config if config is not None else self._load_config()
        self._state_path = self.data_dir / STATE_FILE
        self._state = self._load_state()
        self.local_pool = PoolRef(id="local", path=str(self.data_dir / "pools" / "local"))
        self._state.storage.pools.setdefault(self.local_pool.id, self.local_pool)
        self._block_jobs: dict[str, dict[int, BlockJobReport]] = {}
        """VM name -> device id -> its running block job (in memory: a job ends with its agent task)."""
        self._moving: dict[tuple[str, int] | str, asyncio.Task[Any]] = {}
        """The task running a disk's mirror_disk ((vm, device)) or a VM's migrate_vm (its name)."""

    # --- persistence ---------------------------------------------------------------------------------

    def _load_config(self) -> SimulatorConfig:
        path = self.data_dir / CONFIG_FILE
        if path.exists():
            return SimulatorConfig.model_validate_json(path.read_text(encoding="utf-8"))
        return SimulatorConfig()

    def _load_state(self) -> _State:
        if self._state_path.exists():
            return _State.model_validate_json(self._state_path.read_text(encoding="utf-8"))
        return _State()

    def _save(self) -> None:
        """Persist this host's state (after every change, so a restart finds it as it was)."""
        _write_atomically(self._state_path, self._state.model_dump_json())

    def _storage(self, pool: PoolRef) -> _Storage:
        """Where a pool's layer records live: this host's state, or the fleet's shared store."""
        if self._shared is None or pool.id == self.local_pool.id:
            return self._state.storage
        return self._shared.data

    def _save_storage(self, pool: PoolRef) -> None:
        if self._shared is None or pool.id == self.local_pool.id:
            self._save()
        else:
            self._shared.save()

    # --- simulated behaviour -------------------------------------------------------------------------

    async def configure(
        self, command: str, delay_s: float | None, fail_count: int | None, fail_message: str | None
    ) -> None:
        """Set the delay and/or arm failures for one command type (fields left None stay as they are).
        Every declared command can be configured, except those of the simulator role itself."""
        configurable = {name for name, model in COMMANDS.items() if model.declared.role != Role.SIMULATOR}
        if command not in configurable:
            known = ", ".join(sorted(configurable))
            raise DriverError(ErrorCode.BAD_REQUEST, f"cannot configure {command!r}; known: {known}")
        if delay_s is not None and delay_s < 0:
            raise DriverError(ErrorCode.BAD_REQUEST, "delay_s must be >= 0")
        if fail_count is not None and fail_count < 0:
            raise DriverError(ErrorCode.BAD_REQUEST, "fail_count must be >= 0")
        behaviour = self._state.behaviour.setdefault(command, _Behaviour())
        if delay_s is not None:
            behaviour.delay_s = delay_s
        if fail_count is not None:
            behaviour.fail_count = fail_count
        if fail_message is not None:
            behaviour.fail_message = fail_message or None
        self._save()
        log.info("simulator configured", extra={"command": command, **behaviour.model_dump()})

    async def before_command(self, command: str, long_running: bool) -> None:
        """The configured delay (a long-running command spreads it over its progress instead), then
        an injected failure if one is armed."""
        if long_running:
            self._maybe_fail(command)
        else:
            await self._simulate(command)

    def _delay(self, command: str) -> float:
        behaviour = self._state.behaviour.get(command)
        return behaviour.delay_s if behaviour is not None else 0.0

    def _maybe_fail(self, command: str) -> None:
        behaviour = self._state.behaviour.get(command)
        if behaviour is None or behaviour.fail_count <= 0:
            return
        behaviour.fail_count -= 1
        self._save()
        message = behaviour.fail_message or f"injected failure of {command} (simulator)"
        raise DriverError(ErrorCode.INJECTED_FAILURE, message)

    async def _simulate(self, command: str) -> None:
        """The configured delay, then an injected failure if one is armed for this command."""
        delay = self._delay(command)
        if delay > 0:
            await asyncio.sleep(delay)
        self._maybe_fail(command)

    # --- lookups -------------------------------------------------------------------------------------

    def _find_layer(self, ref: LayerRef) -> _Layer | None:
        return self._storage(ref.pool).layers.get(ref.pool.id, {}).get(ref.name)

    def _layer(self, ref: LayerRef) -> _Layer:
        layer = self._find_layer(ref)
        if layer is None:
            raise DriverError(ErrorCode.NOT_FOUND, f"no layer {_describe(ref)}")
        return layer

    def _vm(self, name: str) -> _Vm:
        vm = self._state.vms.get(name)
        if vm is None:
            raise DriverError(ErrorCode.NOT_FOUND, f"VM {name} not found")
        return vm

    def _pool_layers(self, pool: PoolRef) -> dict[str, _Layer]:
        """The pool's layer records (registering the pool on first use)."""
        storage = self._storage(pool)
        storage.pools[pool.id] = pool
        return storage.layers.setdefault(pool.id, {})

    def _pool_report(self, pool: PoolRef) -> PoolReport:
        capacity = self.config.pool_capacities.get(pool.id, self.config.pool_capacity_bytes)
        used = sum(layer.physical_size for layer in self._storage(pool).layers.get(pool.id, {}).values())
        return PoolReport(
            id=pool.id,
            path=pool.path,
            capacity_bytes=capacity,
            used_bytes=used,
            available_bytes=max(0, capacity - used),
        )

    def _require_space(self, pool: PoolRef, size: int) -> None:
        report = self._pool_report(pool)
        if size > report.available_bytes:
            raise DriverError(
                ErrorCode.INSUFFICIENT_CAPACITY,
                f"pool {pool.id} has {report.available_bytes} bytes free, {size} needed",
            )

    def _chain(self, ref: LayerRef) -> list[tuple[str, str]]:
        """The keys of a layer and all its backing layers (as far as they are known)."""
        keys: list[tuple[str, str]] = []
        current: LayerRef | None = ref
        while current is not None and _layer_key(current) not in keys:
            keys.append(_layer_key(current))
            found = self._find_layer(current)
            current = found.backing if found is not None else None
        return keys

    def _vm_using(self, key: tuple[str, str]) -> str | None:
        for vm in self._running():
            for disk in vm.spec.disks:
                if key in self._chain(disk.layer):
                    return vm.spec.name
        return None

    def _layer_info(self, ref: LayerRef, layer: _Layer) -> LayerInfo:
        backing = None if layer.backing is None else str(Path(layer.backing.pool.path) / layer.backing.name)
        return LayerInfo(
            name=ref.name,
            format=layer.format,
            virtual_size=layer.virtual_size,
            physical_size=layer.physical_size,
            backing_file=backing,
        )

    def _running(self) -> list[_Vm]:
        return [vm for vm in self._state.vms.values() if vm.running]

    def _vm_report(self, vm: _Vm) -> VmReport:
        return VmReport(
            name=vm.spec.name,
            uuid=vm.spec.uuid,
            power_state=(PowerState.PAUSED if vm.incoming is not None else PowerState.RUNNING)
            if vm.running
            else PowerState.STOPPED,
            pid=vm.pid,
            vnc_port=vm.vnc_port,
        )

    # --- the driver contract -------------------------------------------------------------------------

    async def start(self) -> None:
        log.info(
            "simulator ready",
            extra={
                "vms": len(self._state.vms),
                "data_dir": str(self.data_dir),
            },
        )

    async def close(self) -> None:
        """Nothing to release; the simulated VMs keep "running" in the state file."""
        self._save()

    async def host_info(self) -> HostInfo:
        return HostInfo(
            hostname=self.config.hostname or f"sim-{self.data_dir.name or socket.gethostname()}",
            driver="simulator",
            hypervisor="Simulator",
            hypervisor_version="strato-simulator-1",
            cpus=self.config.cpus,
            cpu_mhz=self.config.cpu_mhz,
            memory_bytes=self.config.memory_bytes,
            local_pool=self._pool_report(self.local_pool),
        )

    async def state(self, pools: list[PoolRef]) -> StateReport:
        return StateReport(
            vms=[self._vm_report(vm) for vm in self._state.vms.values()],
            pools=[self._pool_report(pool) for pool in pools],
        )

    async def attach_pool(self, pool: PoolRef, create: bool) -> PoolReport:
        """Any path is accepted: there is no directory, and so no missing mount to guard against."""
        self._pool_layers(pool)
        self._save_storage(pool)
        return self._pool_report(pool)

    async def create_layer(self, layer: LayerRef, size_bytes: int | None, backing: LayerRef | None) -> LayerInfo:
        if self._find_layer(layer) is not None:
            raise DriverError(ErrorCode.ALREADY_EXISTS, f"layer {_describe(layer)} already exists")
        if size_bytes is not None and size_bytes <= 0:
            raise DriverError(ErrorCode.BAD_REQUEST, "size_bytes must be positive")
        virtual_size = size_bytes
        if backing is not None:
            base = self._layer(backing)
            virtual_size = size_bytes if size_bytes is not None else base.virtual_size
        if virtual_size is None:
            raise DriverError(ErrorCode.BAD_REQUEST, "size_bytes is required for a layer without backing")
        self._require_space(layer.pool, EMPTY_QCOW2_BYTES)
        record = _Layer(virtual_size=virtual_size, physical_size=EMPTY_QCOW2_BYTES, backing=backing)
        self._pool_layers(layer.pool)[layer.name] = record
        self._save_storage(layer.pool)
        return self._layer_info(layer, record)

    async def layer_info(self, layer: LayerRef) -> LayerInfo:
        return self._layer_info(layer, self._layer(layer))

    async def copy_layer(
        self, source: LayerRef, target: LayerRef, bandwidth: int | None, progress: ProgressFn
    ) -> LayerInfo:
        """Takes the configured delay (or size/bandwidth if longer), reporting progress as it goes;
        cancelled part-way, it leaves nothing behind."""
        original = self._layer(source)
        if self._find_layer(target) is not None:
            raise DriverError(ErrorCode.ALREADY_EXISTS, f"layer {_describe(target)} already exists")
        self._require_space(target.pool, original.physical_size)
        total = original.physical_size
        duration = self._delay("copy_layer")
        if bandwidth:
            duration = max(duration, total / bandwidth)
        await _progress_over(duration, total, progress)
        source_now = self._layer(source)
        if self._find_layer(target) is not None:
            raise DriverError(ErrorCode.ALREADY_EXISTS, f"layer {_describe(target)} appeared during the copy")
        self._require_space(target.pool, source_now.physical_size)
        record = source_now.model_copy(deep=True)
        self._pool_layers(target.pool)[target.name] = record
        self._save_storage(target.pool)
        progress(total, total)
        return self._layer_info(target, record)

    async def rebase_layer(self, layer: LayerRef, backing: LayerRef | None) -> LayerInfo:
        record = self._layer(layer)
        if backing is not None:
            self._layer(backing)
            if _layer_key(layer) in self._chain(backing):
                raise DriverError(ErrorCode.BAD_REQUEST, f"rebasing {_describe(layer)} would make a loop")
        record.backing = backing
        self._save_storage(layer.pool)
        return self._layer_info(layer, record)

    async def remove_layer(self, layer: LayerRef, missing_ok: bool) -> None:
        """Stricter than a file delete: refuses to remove a layer a running VM or another layer uses,
        so control-plane ordering bugs show up in simulated runs."""
        if self._find_layer(layer) is None:
            if missing_ok:
                return
            raise DriverError(ErrorCode.NOT_FOUND, f"no layer {_describe(layer)}")
        key = _layer_key(layer)
        user = self._vm_using(key)
        if user is not None:
            raise DriverError(ErrorCode.INVALID_STATE, f"layer {_describe(layer)} is in use by VM {user!r}")
        stores = [self._state.storage] + ([self._shared.data] if self._shared is not None else [])
        for store in stores:
            for pool_id, layers in store.layers.items():
                for name, other in layers.items():
                    if other.backing is not None and _layer_key(other.backing) == key:
                        child = f"{store.pools[pool_id].path}/{name}"
                        raise DriverError(
                            ErrorCode.INVALID_STATE, f"layer {_describe(layer)} is the backing of {child}"
                        )
        del self._pool_layers(layer.pool)[layer.name]
        self._save_storage(layer.pool)

    async def start_vm(self, spec: VmSpec) -> VmReport:
        known = self._state.vms.get(spec.name)
        if known is not None and known.running:
            raise DriverError(ErrorCode.INVALID_STATE, f"VM {spec.name} is already running")
        for disk in spec.disks:
            self._layer(disk.layer)
            user = None if disk.readonly else self._vm_using(_layer_key(disk.layer))
            if user is not None:
                raise DriverError(ErrorCode.INVALID_STATE, f"layer {_describe(disk.layer)} is in use by VM {user!r}")
        used_mib = sum(vm.spec.memory_mib for vm in self._running())
        free_mib = self.config.memory_bytes // (1 << 20) - used_mib
        if spec.memory_mib > free_mib:
            raise DriverError(
                ErrorCode.INSUFFICIENT_CAPACITY,
                f"host has {free_mib} MiB free, {spec.memory_mib} needed",
            )
        ports = {vm.vnc_port for vm in self._running()}
        vnc_port = next(port for port in range(5900, 5900 + len(ports) + 1) if port not in ports)
        vm = _Vm(spec=spec, pid=self._state.next_pid, vnc_port=vnc_port, started_at=time.time())
        self._state.next_pid += 1
        self._state.vms[spec.name] = vm
        self._save()
        return self._vm_report(vm)

    async def stop_vm(self, name: str, force: bool, timeout_s: float) -> VmReport:
        """Stopping a stopped VM is not an error: it reports the VM stopped, as the QEMU driver does."""
        vm = self._vm(name)
        vm.pid = vm.vnc_port = vm.started_at = None
        self._save()
        return self._vm_report(vm)

    async def reboot_vm(self, name: str) -> VmReport:
        vm = self._vm(name)
        if not vm.running:
            raise DriverError(ErrorCode.INVALID_STATE, f"VM {name} is not running")
        return self._vm_report(vm)

    async def get_vm(self, name: str) -> VmReport:
        return self._vm_report(self._vm(name))

    def forget_vm(self, name: str) -> None:
        """Drop a stopped VM's record (mirrors QemuDriver.forget_vm; not part of the Driver contract)."""
        vm = self._vm(name)
        if vm.running:
            raise DriverError(ErrorCode.INVALID_STATE, f"VM {name} is running")
        del self._state.vms[name]
        self._save()

    async def remove_vm(self, name: str) -> None:
        """Idempotent: a VM already forgotten is not an error."""
        if name in self._state.vms:
            self.forget_vm(name)

    async def console_log(self, name: str, tail_bytes: int | None) -> str:
        """A made-up console: one boot line per the VM's current run."""
        vm = self._vm(name)
        lines = [f"strato simulator: VM {name} uuid {vm.spec.uuid}"]
        if vm.started_at is not None:
            stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(vm.started_at))
            lines.append(f"{stamp} STRATO-SIM-BOOTED {name} cpus={vm.spec.cpus} memory={vm.spec.memory_mib}M")
            if vm.spec.config_drive is not None and vm.spec.config_drive.path:
                lines.append(f"STRATO-CONFIGDRIVE: {vm.spec.config_drive.path}")
        data = "".join(line + "\n" for line in lines).encode()
        if tail_bytes is not None:
            data = data[-tail_bytes:] if tail_bytes else b""
        return data.decode(errors="replace")

    # --- storage commands ----------------------------------------------------------------------------

    async def fetch_image(
        self,
        url: str,
        target: LayerRef,
        fmt: Literal["qcow2", "raw", "iso"],
        checksum: str | None,
        progress: ProgressFn,
    ) -> LayerInfo:
        """file:// URLs name real files: they are read, checksummed and (qcow2) header-checked exactly
        as the real driver does, and their sizes recorded. http(s) URLs are not fetched (scale tests use
        made-up URLs): only the checksum's syntax is checked, and the sizes come from the config."""
        expected = parse_checksum(checksum)
        kind = url_kind(url)
        if self._find_layer(target) is not None:
            raise DriverError(ErrorCode.ALREADY_EXISTS, f"layer {_describe(target)} already exists")
        digest: str | None = None
        header_virtual: int | None = None
        if kind == "file":
            path = file_url_path(url)
            if not path.is_file():
                raise DriverError(ErrorCode.NOT_FOUND, f"{url}: no such file")
            size, allocated, digest = await asyncio.to_thread(_inspect_file, path, expected)
            if fmt == "qcow2":
                header_virtual = check_fetched_qcow2(path, url).virtual_size
            virtual = header_virtual if header_virtual is not None else size
            physical = size if fmt != "raw" else min(size, allocated) + EMPTY_QCOW2_BYTES
            transferred = size
        else:
            virtual = self.config.http_image_virtual_bytes
            physical = self.config.http_image_physical_bytes
            transferred = physical
        if fmt == "iso":
            virtual = physical = transferred
        self._require_space(target.pool, physical)
        await _progress_over(self._delay("fetch_image"), transferred, progress)
        if expected is not None and digest is not None:
            expected.verify(digest, display_url(url))
        if self._find_layer(target) is not None:
            raise DriverError(ErrorCode.ALREADY_EXISTS, f"layer {_describe(target)} appeared during the fetch")
        self._require_space(target.pool, physical)
        record = _Layer(format="iso" if fmt == "iso" else "qcow2", virtual_size=virtual, physical_size=physical)
        self._pool_layers(target.pool)[target.name] = record
        self._save_storage(target.pool)
        return self._layer_info(target, record)

    async def convert_layer(self, source: LayerRef, target: LayerRef, progress: ProgressFn) -> LayerInfo:
        """A standalone copy of the chain: its physical size is the chain's data, at most its virtual size."""
        original = self._layer(source)
        if original.format != "qcow2":
            raise DriverError(ErrorCode.BAD_REQUEST, f"layer {_describe(source)} is {original.format}")
        if self._find_layer(target) is not None:
            raise DriverError(ErrorCode.ALREADY_EXISTS, f"layer {_describe(target)} already exists")
        chain = [self._find_layer(LayerRef(pool=self._pool_ref(pid), name=n)) for pid, n in self._chain(source)]
        data = sum(layer.physical_size - EMPTY_QCOW2_BYTES for layer in chain if layer is not None)
        physical = min(original.virtual_size, max(0, data)) + EMPTY_QCOW2_BYTES
        self._require_space(target.pool, physical)
        await _progress_over(self._delay("convert_layer"), original.virtual_size, progress)
        if self._find_layer(target) is not None:
            raise DriverError(ErrorCode.ALREADY_EXISTS, f"layer {_describe(target)} appeared during the copy")
        self._require_space(target.pool, physical)
        record = _Layer(virtual_size=original.virtual_size, physical_size=physical)
        self._pool_layers(target.pool)[target.name] = record
        self._save_storage(target.pool)
        return self._layer_info(target, record)

    def _pool_ref(self, pool_id: str) -> PoolRef:
        for storage in (self._state.storage, self._shared.data if self._shared else None):
            if storage is not None and pool_id in storage.pools:
                return storage.pools[pool_id]
        return PoolRef(id=pool_id, path="")

    async def resize_layer(
        self, layer: LayerRef, size_bytes: int, vm_name: str | None, device_id: int | None
    ) -> LayerInfo:
        """Grow only; a layer a running VM uses can only be grown through that VM's disk (as QEMU's
        image locking makes it on a real host)."""
        record = self._layer(layer)
        if record.format != "qcow2":
            raise DriverError(ErrorCode.BAD_REQUEST, f"layer {_describe(layer)} is {record.format}")
        if size_bytes < record.virtual_size:
            raise DriverError(
                ErrorCode.BAD_REQUEST,
                f"shrinking layer {_describe(layer)} from {record.virtual_size} to {size_bytes} bytes is refused",
            )
        if size_bytes % 512:
            raise DriverError(ErrorCode.BAD_REQUEST, "size_bytes must be a multiple of 512")
        live = False
        vm = self._state.vms.get(vm_name) if vm_name is not None else None
        if vm is not None and vm.running and device_id is not None:
            disk = next((d for d in vm.spec.disks if d.device_id == device_id), None)
            if disk is not None:
                if _layer_key(disk.layer) != _layer_key(layer):
                    raise DriverError(
                        ErrorCode.BAD_REQUEST,
                        f"layer {_describe(layer)} is not the top layer of disk {device_id} of VM {vm_name}",
                    )
                live = True
        if not live and size_bytes != record.virtual_size:
            user = self._vm_using(_layer_key(layer))
            if user is not None:
                raise DriverError(ErrorCode.INVALID_STATE, f"layer {_describe(layer)} is in use by VM {user!r}")
        record.virtual_size = size_bytes
        self._save_storage(layer.pool)
        return self._layer_info(layer, record)

    async def build_config_drive(
        self,
        target: LayerRef,
        hostname: str,
        instance_id: str,
        user_data: str | None,
        public_keys: list[str],
    ) -> LayerInfo:
        """Records an ISO layer; an existing config drive is replaced, as on a real host."""
        if not hostname.strip():
            raise DriverError(ErrorCode.BAD_REQUEST, "hostname must not be empty")
        size = CONFIG_DRIVE_BYTES + len((user_data or "").encode())
        old = self._find_layer(target)
        self._require_space(target.pool, size - (old.physical_size if old is not None else 0))
        record = _Layer(format="iso", virtual_size=size, physical_size=size)
        self._pool_layers(target.pool)[target.name] = record
        self._save_storage(target.pool)
        return self._layer_info(target, record)

    # --- devices of running VMs ----------------------------------------------------------------------

    def _running_vm(self, name: str) -> _Vm:
        vm = self._vm(name)
        if not vm.running:
            raise DriverError(ErrorCode.INVALID_STATE, f"VM {name} is not running")
        return vm

    async def attach_disk(self, vm_name: str, disk: DiskSpec) -> VmReport:
        vm = self._running_vm(vm_name)
        if disk.bus == "ide":
            raise DriverError(ErrorCode.BAD_REQUEST, "IDE disks cannot be hot-plugged: use virtio or scsi")
        self._layer(disk.layer)
        if any(d.device_id == disk.device_id for d in vm.spec.disks):
            raise DriverError(ErrorCode.ALREADY_EXISTS, f"VM {vm_name} already has a disk {disk.device_id}")
        user = None if disk.readonly else self._vm_using(_layer_key(disk.layer))
        if user is not None:
            raise DriverError(ErrorCode.INVALID_STATE, f"layer {_describe(disk.layer)} is in use by VM {user!r}")
        vm.spec.disks.append(disk)
        self._save()
        return self._vm_report(vm)

    async def detach_disk(self, vm_name: str, device_id: int) -> VmReport:
        """The simulated guest always releases the disk at once."""
        vm = self._running_vm(vm_name)
        disk = next((d for d in vm.spec.disks if d.device_id == device_id), None)
        if disk is None:
            raise DriverError(ErrorCode.NOT_FOUND, f"VM {vm_name} has no disk {device_id}")
        if disk.bus == "ide":
            raise DriverError(ErrorCode.BAD_REQUEST, "IDE disks cannot be hot-unplugged")
        vm.spec.disks.remove(disk)
        self._save()
        return self._vm_report(vm)

    async def attach_nic(self, vm_name: str, nic: NicSpec) -> VmReport:
        """Recorded in the VM's spec, as the QEMU driver does (no tap: the simulated network has none)."""
        vm = self._running_vm(vm_name)
        if any(n.mac == nic.mac for n in vm.spec.nics):
            raise DriverError(ErrorCode.ALREADY_EXISTS, f"VM {vm_name} already has a NIC {nic.mac}")
        vm.spec.nics.append(nic)
        self._save()
        return self._vm_report(vm)

    async def detach_nic(self, vm_name: str, mac: str) -> VmReport:
        """The simulated guest always releases the NIC at once."""
        vm = self._running_vm(vm_name)
        if not any(n.mac == mac for n in vm.spec.nics):
            raise DriverError(ErrorCode.NOT_FOUND, f"VM {vm_name} has no NIC {mac}")
        vm.spec.nics = [n for n in vm.spec.nics if n.mac != mac]
        self._save()
        return self._vm_report(vm)

    async def change_cdrom(self, vm_name: str, path: str | None) -> VmReport:
        """Every VM has a CD drive, as on the QEMU driver. The path is recorded, not opened: ISOs in
        simulated pools have no files."""
        vm = self._running_vm(vm_name)
        if path is not None and not os.path.isabs(path):
            raise DriverError(ErrorCode.BAD_REQUEST, "cdrom path must be absolute")
        vm.spec.cdrom = CdromSpec(path=path)
        self._save()
        return self._vm_report(vm)

    async def vm_stats(self, name: str) -> VmStats:
        """Plausible, monotonic counters derived from the VM's uptime (5% CPU, light disk traffic)."""
        vm = self._vm(name)
        if vm.started_at is None:
            raise DriverError(ErrorCode.INVALID_STATE, f"VM {name} is not running")
        uptime = max(0.0, time.time() - vm.started_at)
        disks = [
            DiskStats(
                device_id=disk.device_id,
                node_name=f"drive{disk.device_id}",
                read_bytes=int(uptime * 64 * 1024),
                write_bytes=int(uptime * 16 * 1024),
                read_ops=int(uptime * 16),
                write_ops=int(uptime * 4),
            )
            for disk in vm.spec.disks
        ]
        return VmStats(
            name=name,
            cpu_time_ns=int(uptime * vm.spec.cpus * 0.05 * 1e9),
            memory_mib=vm.spec.memory_mib,
            disks=disks,
        )

    # --- block jobs: live disk moves (BlockJobs role) ------------------------------------------------

    async def mirror_disk(
        self,
        vm_name: str,
        device_id: int,
        target: LayerRef,
        target_backing: LayerRef | None,
        bandwidth_bytes_per_s: int | None,
        progress: ProgressFn,
    ) -> DiskSpec:
        """Creates the target record on its backing, "copies" the top layer over the configured delay
        (or size / speed if longer; the speed can change while it runs), then switches the VM's recorded
        disk to it. Cancelled or failed before the switch: the target record is removed, the VM keeps
        its disk."""
        async with self._tracked((vm_name, device_id)):
            return await self._mirror_disk(vm_name, device_id, target, target_backing, bandwidth_bytes_per_s, progress)

    async def _mirror_disk(
        self,
        vm_name: str,
        device_id: int,
        target: LayerRef,
        target_backing: LayerRef | None,
        bandwidth_bytes_per_s: int | None,
        progress: ProgressFn,
    ) -> DiskSpec:
        vm = self._running_vm(vm_name)
        disk = next((d for d in vm.spec.disks if d.device_id == device_id), None)
        if disk is None:
            raise DriverError(ErrorCode.NOT_FOUND, f"VM {vm_name} has no disk {device_id}")
        if device_id in self._block_jobs.get(vm_name, {}):
            raise DriverError(ErrorCode.INVALID_STATE, f"disk {device_id} of VM {vm_name} already has a block job")
        source = self._layer(disk.layer)
        if self._find_layer(target) is not None:
            raise DriverError(ErrorCode.ALREADY_EXISTS, f"layer {_describe(target)} already exists")
        if target_backing is not None:
            self._layer(target_backing)
        data = max(0, source.physical_size - EMPTY_QCOW2_BYTES)
        self._require_space(target.pool, EMPTY_QCOW2_BYTES + data)
        record = _Layer(virtual_size=source.virtual_size, physical_size=EMPTY_QCOW2_BYTES, backing=target_backing)
        self._pool_layers(target.pool)[target.name] = record
        self._save_storage(target.pool)
        job = BlockJobReport(job_id=f"mirror-{device_id}", kind=BlockJobKind.MIRROR, device_id=device_id,
                             status="running", offset=0, length=data + EMPTY_QCOW2_BYTES,
                             speed_bytes_per_s=bandwidth_bytes_per_s or 0)  # fmt: skip
        self._block_jobs.setdefault(vm_name, {})[device_id] = job
        try:
            report_phase(f"mirroring disk {device_id} (background copy)")
            await self._run_mirror(job, self._delay("mirror_disk"), progress)
            vm = self._running_vm(vm_name)
            moved = disk.model_copy(update={"layer": target})
            vm.spec.disks = [moved if d.device_id == device_id else d for d in vm.spec.disks]
            record.physical_size = EMPTY_QCOW2_BYTES + data
            self._save_storage(target.pool)
            self._save()
            return moved
        except BaseException:
            if self._find_layer(target) is record:
                del self._pool_layers(target.pool)[target.name]
                self._save_storage(target.pool)
            raise
        finally:
            self._block_jobs.get(vm_name, {}).pop(device_id, None)

    @contextlib.asynccontextmanager
    async def _tracked(self, key: tuple[str, int] | str) -> AsyncIterator[None]:
        current = asyncio.current_task()
        if current is not None:
            self._moving[key] = current
        try:
            yield
        finally:
            if self._moving.get(key) is current:
                del self._moving[key]

    async def _stop_task(self, key: tuple[str, int] | str) -> None:
        task = self._moving.get(key)
        if task is not None and not task.done() and task is not asyncio.current_task():
            task.cancel()
            await asyncio.wait([task])

    async def cancel_block_job(self, vm_name: str, device_id: int, target: LayerRef | None) -> BlockJobOutcome:
        """Stops the disk's mirror_disk task; the disk is on the target if the VM's recorded disk names
        it, else a target record left (an agent restarted mid-move) is removed."""
        await self._stop_task((vm_name, device_id))
        vm = self._vm(vm_name)
        disk = next((d for d in vm.spec.disks if d.device_id == device_id), None)
        if disk is None:
            raise DriverError(ErrorCode.NOT_FOUND, f"VM {vm_name} has no disk {device_id}")
        if target is not None and _same_layer(disk.layer, target):
            return BlockJobOutcome(place=DiskPlace.TARGET, disk=disk)
        if target is not None and self._find_layer(target) is not None:
            await self.remove_layer(target, missing_ok=True)
        return BlockJobOutcome(place=DiskPlace.SOURCE, disk=disk)

    async def cancel_migration(self, name: str) -> MigrationOutcome:
        """Stops the VM's migrate_vm task; it left if its migration completed and it no longer runs here."""
        await self._stop_task(name)
        vm = self._state.vms.get(name)
        report = self._state.migrations.get(name)
        left = vm is None or (report is not None and report.status == "completed" and not vm.running)
        return MigrationOutcome(name=name, place=MigrationPlace.LEFT if left else MigrationPlace.HERE)

    async def _run_mirror(self, job: BlockJobReport, delay: float, progress: ProgressFn) -> None:
        """PROGRESS_STEPS chunks, each taking delay/steps or chunk/speed, whichever is longer (the speed
        is read again for every chunk, as set_block_job_speed changes it); then the job is ready."""
        chunk = job.length / PROGRESS_STEPS
        progress(0, job.length)
        for step in range(1, PROGRESS_STEPS + 1):
            wait = delay / PROGRESS_STEPS
            if job.speed_bytes_per_s:
                wait = max(wait, chunk / job.speed_bytes_per_s)
            if wait > 0:
                await asyncio.sleep(wait)
            job.offset = job.length * step // PROGRESS_STEPS
            progress(job.offset, job.length)
        job.status = "ready"

    async def set_block_job_speed(self, vm_name: str, device_id: int, bandwidth_bytes_per_s: int) -> BlockJobReport:
        job = self._block_jobs.get(vm_name, {}).get(device_id)
        if job is None:
            raise DriverError(ErrorCode.NOT_FOUND, f"disk {device_id} of VM {vm_name} has no block job")
        job.speed_bytes_per_s = bandwidth_bytes_per_s
        return job.model_copy()

    async def block_jobs(self, vm_name: str) -> BlockJobList:
        self._vm(vm_name)
        return BlockJobList(jobs=[j.model_copy() for j in self._block_jobs.get(vm_name, {}).values()])

    # --- live migration (MigrationSource, MigrationTarget) -------------------------------------------
    # Simulated agents do not talk to each other: the target records the VM incoming, the source marks
    # it stopped once migrate_vm has "sent" it, finish_incoming runs it at the target. Layers are found
    # in the pools this simulator sees (a fleet's hosts see each other's pools through SharedStorage).

    async def pull_layer(
        self,
        source_agent_url: str,
        source_token: str,
        source: LayerRef,
        target: LayerRef,
        bandwidth_bytes_per_s: int | None,
        progress: ProgressFn,
    ) -> LayerInfo:
        """As copy_layer, with the source layer looked up in the pools this simulator sees (it does not
        call the source agent); cancelled part-way, nothing is left behind."""
        if not source_agent_url or not source_token:
            raise DriverError(ErrorCode.BAD_REQUEST, "pull_layer needs the source agent's URL and token")
        original = self._find_layer(source)
        if original is None:
            raise DriverError(
                ErrorCode.NOT_FOUND, f"no layer {_describe(source)} at {source_agent_url} (simulated pull)"
            )
        if self._find_layer(target) is not None:
            raise DriverError(ErrorCode.ALREADY_EXISTS, f"layer {_describe(target)} already exists")
        self._require_space(target.pool, original.physical_size)
        total = original.physical_size
        duration = self._delay("pull_layer")
        if bandwidth_bytes_per_s:
            duration = max(duration, total / bandwidth_bytes_per_s)
        await _progress_over(duration, total, progress)
        if self._find_layer(target) is not None:
            raise DriverError(ErrorCode.ALREADY_EXISTS, f"layer {_describe(target)} appeared during the pull")
        self._require_space(target.pool, original.physical_size)
        record = original.model_copy(deep=True)
        self._pool_layers(target.pool)[target.name] = record
        self._save_storage(target.pool)
        progress(total, total)
        return self._layer_info(target, record)

    async def prepare_incoming(self, spec: VmSpec, disks: list[IncomingDisk], listen_host: str) -> IncomingVm:
        """Records the VM waiting (paused) for its migration, with the new top layers of `disks` created
        on their backing; the spec's other disks must be on pools this host sees. Asked again for a VM
        already waiting, it answers the same incoming VM."""
        known = self._state.vms.get(spec.name)
        if known is not None and known.incoming is not None:
            return known.incoming
        if known is not None and known.running:
            raise DriverError(ErrorCode.INVALID_STATE, f"VM {spec.name} is already running here")
        by_device = {d.device_id: d for d in spec.disks}
        moving = {d.device_id for d in disks}
        for disk in disks:
            if disk.device_id not in by_device:
                raise DriverError(ErrorCode.BAD_REQUEST, f"the spec of VM {spec.name} has no disk {disk.device_id}")
        for kept in spec.disks:
            if kept.device_id not in moving and self._find_layer(kept.layer) is None:
                raise DriverError(ErrorCode.NOT_FOUND, f"this host does not see layer {_describe(kept.layer)}")
        used_mib = sum(vm.spec.memory_mib for vm in self._running())
        free_mib = self.config.memory_bytes // MIB - used_mib
        if spec.memory_mib > free_mib:
            raise DriverError(
                ErrorCode.INSUFFICIENT_CAPACITY, f"host has {free_mib} MiB free, {spec.memory_mib} needed"
            )
        created: list[LayerRef] = []
        try:
            for disk in disks:
                layer = by_device[disk.device_id].layer
                await self.create_layer(layer, disk.size_bytes, disk.backing)
                created.append(layer)
        except BaseException:
            for layer in created:
                await self.remove_layer(layer, missing_ok=True)
            raise
        ports = {vm.vnc_port for vm in self._running()}
        vnc_port = next(port for port in range(5900, 5900 + len(ports) + 1) if port not in ports)
        migration_port = 49152 + self._state.next_pid % 1000
        incoming = IncomingVm(
            name=spec.name,
            migration_uri=f"tcp:{listen_host}:{migration_port}",
            exports=[
                NbdExport(device_id=d.device_id, uri=f"nbd://{listen_host}:10809/drive{d.device_id}") for d in disks
            ],
        )
        vm = _Vm(spec=spec, pid=self._state.next_pid, vnc_port=vnc_port, started_at=time.time(), incoming=incoming,
                 incoming_layers=created)  # fmt: skip
        self._state.next_pid += 1
        self._state.vms[spec.name] = vm
        self._save()
        return incoming

    async def migrate_vm(
        self, name: str, incoming: IncomingVm, bandwidth_bytes_per_s: int | None, progress: ProgressFn
    ) -> VmReport:
        """Sends the VM's RAM and its exported disks' data (simulated: progress over the configured
        delay, or size/bandwidth if longer), then marks it stopped here. Cancelled: it keeps running."""
        async with self._tracked(name):
            return await self._migrate_vm(name, incoming, bandwidth_bytes_per_s, progress)

    async def _migrate_vm(
        self, name: str, incoming: IncomingVm, bandwidth_bytes_per_s: int | None, progress: ProgressFn
    ) -> VmReport:
        vm = self._running_vm(name)
        if vm.incoming is not None:
            raise DriverError(ErrorCode.INVALID_STATE, f"VM {name} is itself waiting for an incoming migration")
        exported = {e.device_id for e in incoming.exports}
        disks = 0
        for disk in vm.spec.disks:
            if disk.device_id in exported:
                found = self._find_layer(disk.layer)
                disks += found.physical_size if found is not None else 0
        total = vm.spec.memory_mib * MIB + disks
        duration = self._delay("migrate_vm")
        if bandwidth_bytes_per_s:
            duration = max(duration, total / bandwidth_bytes_per_s)

        def report(done: int, total: int) -> None:
            self._state.migrations[name] = MigrationReport(
                name=name, status="active", transferred_bytes=done, remaining_bytes=total - done, total_bytes=total
            )
            progress(done, total)

        try:
            report_phase("migrating memory" + (f" and {len(exported)} disk(s)" if exported else ""))
            await _progress_over(duration, total, report)
        except BaseException:
            self._state.migrations[name] = MigrationReport(name=name, status="cancelled", total_bytes=total)
            self._save()
            raise
        vm.pid = vm.vnc_port = vm.started_at = None
        self._state.migrations[name] = MigrationReport(
            name=name, status="completed", transferred_bytes=total, total_bytes=total
        )
        self._save()
        progress(total, total)
        return self._vm_report(vm)

    async def migration_status(self, name: str) -> MigrationReport:
        return self._state.migrations.get(name) or MigrationReport(name=name, status="none")

    async def finish_incoming(self, name: str) -> VmReport:
        """Runs the waiting VM here; a VM already running here (finished before) is answered as it is."""
        vm = self._vm(name)
        if vm.incoming is None:
            if not vm.running:
                raise DriverError(ErrorCode.INVALID_STATE, f"VM {name} is not waiting for an incoming migration")
            return self._vm_report(vm)
        vm.incoming, vm.incoming_layers = None, []
        self._save()
        return self._vm_report(vm)

    async def abort_incoming(self, name: str) -> None:
        """Forgets the waiting VM and removes the layers it created; nothing to do when it is not here.
        A VM that runs here (its migration finished) is refused rather than killed."""
        vm = self._state.vms.get(name)
        if vm is None:
            return
        if vm.incoming is None:
            if vm.running:
                raise DriverError(ErrorCode.INVALID_STATE, f"VM {name} runs here: its migration has finished")
            return
        layers = list(vm.incoming_layers)
        del self._state.vms[name]
        self._save()
        for layer in reversed(layers):
            await self.remove_layer(layer, missing_ok=True)
