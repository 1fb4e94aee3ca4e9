"""The simulator's Snapshots role: VM snapshots, memory files and layer merges as records.

Mixed into SimulatorDriver. The disks' data is modelled by the layers' physical sizes: a snapshot puts
empty records (EMPTY_QCOW2_BYTES) on the frozen tops, a merge moves the data bytes of the merged layers
into the one that keeps them, a memory file weighs the VM's memory. Every long command spreads its
progress over its configured delay and fails (with nothing changed) when a failure is armed for it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, cast

from strato.agent.drivers.base import DriverError, ProgressFn, report_phase
from strato.agent.drivers.roles import Snapshots
from strato.protocol.messages import (
    DiskSpec,
    ErrorCode,
    LayerInfo,
    LayerRef,
    SnapshotDisk,
    SnapshotTaken,
    VmReport,
    VmSpec,
)

if TYPE_CHECKING:
    from strato.agent.drivers.simulator import SimulatorDriver, _Layer

EMPTY_QCOW2_BYTES = 196_608
MIB = 1 << 20


def _key(ref: LayerRef) -> tuple[str, str]:
    return (ref.pool.id, ref.name)


class SimSnapshots(Snapshots):
    """Snapshots served by records (see the module docstring)."""

    def _sim(self) -> SimulatorDriver:
        return cast("SimulatorDriver", self)

    async def _wait(self, command: str, total: int, progress: ProgressFn) -> None:
        from strato.agent.drivers.simulator import _progress_over

        await _progress_over(self._sim()._delay(command), total, progress)

    def _new_record(self, virtual: int, physical: int, backing: LayerRef | None, fmt: str = "qcow2") -> _Layer:
        from strato.agent.drivers.simulator import _Layer

        return _Layer(format=fmt, virtual_size=virtual, physical_size=physical, backing=backing)

    def _put(self, ref: LayerRef, record: _Layer) -> None:
        sim = self._sim()
        sim._pool_layers(ref.pool)[ref.name] = record
        sim._save_storage(ref.pool)

    def _drop(self, ref: LayerRef) -> None:
        sim = self._sim()
        if sim._find_layer(ref) is not None:
            del sim._pool_layers(ref.pool)[ref.name]
            sim._save_storage(ref.pool)

    def _memory_record(self, spec: VmSpec, memory: LayerRef) -> _Layer:
        sim = self._sim()
        if sim._find_layer(memory) is not None:
            raise DriverError(ErrorCode.ALREADY_EXISTS, f"memory file {memory.pool.path}/{memory.name} exists")
        size = spec.memory_mib * MIB
        sim._require_space(memory.pool, size)
        return self._new_record(size, size, None, fmt="raw")

    def _disk(self, vm_name: str, device_id: int) -> DiskSpec:
        vm = self._sim()._running_vm(vm_name)
        disk = next((d for d in vm.spec.disks if d.device_id == device_id), None)
        if disk is None:
            raise DriverError(ErrorCode.NOT_FOUND, f"VM {vm_name} has no disk {device_id}")
        return disk

    def _set_disk(self, vm_name: str, disk: DiskSpec) -> None:
        sim = self._sim()
        vm = sim._running_vm(vm_name)
        vm.spec.disks = [disk if d.device_id == disk.device_id else d for d in vm.spec.disks]
        sim._save()

    def _data(self, ref: LayerRef) -> int:
        return max(0, self._sim()._layer(ref).physical_size - EMPTY_QCOW2_BYTES)

    def _between(self, upper: LayerRef, base: LayerRef | None) -> list[LayerRef]:
        """The layers strictly below `upper` down to (not including) `base` (None: to the bottom)."""
        sim = self._sim()
        out: list[LayerRef] = []
        current = sim._layer(upper).backing
        while current is not None and (base is None or _key(current) != _key(base)):
            out.append(current)
            current = sim._layer(current).backing
        if base is not None and current is None:
            raise DriverError(ErrorCode.BAD_REQUEST, f"{base.name} is not below {upper.name}")
        return out

    def _rest_on(self, old: LayerRef, new: LayerRef) -> None:
        """Every record backed by `old` is now backed by `new` (what a commit does to the layers above)."""
        sim = self._sim()
        stores = [sim._state.storage] + ([sim._shared.data] if sim._shared is not None else [])
        for store in stores:
            for layers in store.layers.values():
                for record in layers.values():
                    if record.backing is not None and _key(record.backing) == _key(old):
                        record.backing = new
        for store_pool in {old.pool.id, new.pool.id}:
            sim._save_storage(old.pool if store_pool == old.pool.id else new.pool)

    # --- the role --------------------------------------------------------------------------------------

    async def snapshot_vm(
        self, vm_name: str, disks: list[SnapshotDisk], memory: LayerRef | None, progress: ProgressFn
    ) -> SnapshotTaken:
        sim = self._sim()
        vm = sim._running_vm(vm_name)
        tops = {d.device_id: d for d in vm.spec.disks}
        for wanted in disks:
            if wanted.device_id not in tops:
                raise DriverError(ErrorCode.NOT_FOUND, f"VM {vm_name} has no disk {wanted.device_id}")
            if sim._find_layer(wanted.new_top) is not None:
                raise DriverError(ErrorCode.ALREADY_EXISTS, f"layer {wanted.new_top.name} already exists")
            sim._require_space(wanted.new_top.pool, EMPTY_QCOW2_BYTES)
        mem_record = self._memory_record(vm.spec, memory) if memory is not None else None
        made: list[LayerRef] = []
        try:
            if memory is not None and mem_record is not None:
                report_phase("writing memory (live)")
                self._put(memory, mem_record)
                made.append(memory)
            await self._wait("snapshot_vm", mem_record.physical_size if mem_record else 1, progress)
            vm = sim._running_vm(vm_name)
            new_disks: list[DiskSpec] = []
            for d in vm.spec.disks:
                frozen = next((w for w in disks if w.device_id == d.device_id), None)
                if frozen is None:
                    new_disks.append(d)
                    continue
                top = sim._layer(d.layer)
                self._put(frozen.new_top, self._new_record(top.virtual_size, EMPTY_QCOW2_BYTES, d.layer))
                made.append(frozen.new_top)
                new_disks.append(d.model_copy(update={"layer": frozen.new_top}))
        except BaseException:
            for ref in made:
                self._drop(ref)
            raise
        vm.spec.disks = new_disks
        sim._save()
        info = sim._layer_info(memory, mem_record) if memory is not None and mem_record is not None else None
        return SnapshotTaken(disks=[d for d in new_disks if d.device_id in {w.device_id for w in disks}],
                             memory=info, paused_ms=1.0)  # fmt: skip

    async def save_vm(self, vm_name: str, memory: LayerRef, progress: ProgressFn) -> LayerInfo:
        sim = self._sim()
        vm = sim._running_vm(vm_name)
        record = self._memory_record(vm.spec, memory)
        self._put(memory, record)
        try:
            await self._wait("save_vm", record.physical_size, progress)
            sim._running_vm(vm_name)
        except BaseException:
            self._drop(memory)
            raise
        await sim.stop_vm(vm_name, force=True, timeout_s=0)
        return sim._layer_info(memory, record)

    async def restore_vm(self, spec: VmSpec, memory: LayerRef, progress: ProgressFn) -> VmReport:
        sim = self._sim()
        record = sim._layer(memory)
        await self._wait("restore_vm", record.physical_size, progress)
        return await sim.start_vm(spec)

    async def stream_disk(
        self, vm_name: str, device_id: int, into: LayerRef, base: LayerRef | None, progress: ProgressFn
    ) -> DiskSpec:
        sim = self._sim()
        disk = self._disk(vm_name, device_id)
        if _key(into) not in sim._chain(disk.layer):
            raise DriverError(ErrorCode.BAD_REQUEST, f"{into.name} is not in the chain of disk {device_id}")
        merged = self._between(into, base)
        data = sum(self._data(r) for r in merged)
        await self._wait("stream_disk", max(data, 1), progress)
        record = sim._layer(into)
        record.physical_size += data
        record.backing = base
        sim._save_storage(into.pool)
        return self._disk(vm_name, device_id)

    async def commit_disk(
        self, vm_name: str, device_id: int, top: LayerRef, base: LayerRef, progress: ProgressFn
    ) -> DiskSpec:
        sim = self._sim()
        disk = self._disk(vm_name, device_id)
        if _key(top) not in sim._chain(disk.layer):
            raise DriverError(ErrorCode.BAD_REQUEST, f"{top.name} is not in the chain of disk {device_id}")
        below = sim._layer(top).backing
        if below is None or _key(below) != _key(base):
            raise DriverError(ErrorCode.BAD_REQUEST, f"{base.name} is not the backing of {top.name}")
        data = self._data(top)
        await self._wait("commit_disk", max(data, 1), progress)
        sim._layer(base).physical_size += data
        self._rest_on(top, base)
        if _key(disk.layer) == _key(top):
            self._set_disk(vm_name, disk.model_copy(update={"layer": base}))
        return self._disk(vm_name, device_id)

    async def commit_layer(self, top: LayerRef, base: LayerRef, progress: ProgressFn) -> LayerInfo:
        sim = self._sim()
        for ref in (top, base):
            user = sim._vm_using(_key(ref))
            if user is not None:
                raise DriverError(ErrorCode.INVALID_STATE, f"layer {ref.name} is in use by VM {user!r}")
        below = sim._layer(top).backing
        if below is None or _key(below) != _key(base):
            raise DriverError(ErrorCode.BAD_REQUEST, f"{base.name} is not the backing of {top.name}")
        data = self._data(top)
        await self._wait("commit_layer", max(data, 1), progress)
        record = sim._layer(base)
        record.physical_size += data
        sim._save_storage(base.pool)
        return sim._layer_info(base, record)

    async def stream_layer(self, layer: LayerRef, base: LayerRef | None, progress: ProgressFn) -> LayerInfo:
        sim = self._sim()
        user = sim._vm_using(_key(layer))
        if user is not None:
            raise DriverError(ErrorCode.INVALID_STATE, f"layer {layer.name} is in use by VM {user!r}")
        data = sum(self._data(r) for r in self._between(layer, base))
        await self._wait("stream_layer", max(data, 1), progress)
        record = sim._layer(layer)
        record.physical_size += data
        record.backing = base
        sim._save_storage(layer.pool)
        return sim._layer_info(layer, record)

    async def backup_disk(self, vm_name: str, device_id: int, target: LayerRef, progress: ProgressFn) -> LayerInfo:
        """A flat copy of the running disk's chain, as convert_layer makes one (the VM is left as it was)."""
        disk = self._disk(vm_name, device_id)
        return await self._sim().convert_layer(disk.layer, target, progress)
