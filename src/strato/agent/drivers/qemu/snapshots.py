"""VM snapshots of a running VM (the QEMU driver's Snapshots role): freeze, save, restore.

A snapshot freezes the present top layer of every listed disk in ONE `transaction` of
`blockdev-snapshot` actions: each new top is created by qemu-img on the frozen layer (so its header
names it, for the next start), opened with `backing: null` and linked by QEMU onto the node it
snapshots. With memory, the RAM is first written live (memstate.py) and the transaction runs while
QEMU holds the guest paused at `pre-switchover`, so disks and memory hold the same instant.

Until the answer, a failure or cancellation undoes everything: the migration is cancelled, an applied
transaction is undone by an active commit of each new top back into its frozen layer (they hold at
most the writes since the freeze), the new nodes are closed, the new files and the memory file are
removed, and a guest we paused runs again.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from strato.agent.drivers.base import DriverError, ProgressFn, report_phase
from strato.agent.drivers.qemu import layers, memstate, pools, process, saveflight
from strato.agent.drivers.qemu.merge import commit_job
from strato.agent.drivers.qemu.migration import _shielded
from strato.agent.drivers.qemu.process import RunDir
from strato.protocol.messages import (
    DiskSpec,
    ErrorCode,
    LayerInfo,
    LayerRef,
    PowerState,
    SnapshotDisk,
    SnapshotTaken,
    VmReport,
    VmSpec,
)

if TYPE_CHECKING:
    from strato.agent.drivers.qemu.driver import QemuDriver

log = logging.getLogger("strato.agent.qemu.snapshots")


@dataclass
class _Freeze:
    """One disk's part of a snapshot: the node frozen, and the new top (file, nodes)."""

    disk: DiskSpec
    new_top: LayerRef
    path: Path
    frozen_node: str
    nodes: tuple[str, str]
    created: bool = False
    added: bool = False


def _new_nodes(device_id: int) -> tuple[str, str]:
    """(file, qcow2) node names of a new top: unique per snapshot, `-file`/`-fmt` as at start."""
    tag = uuid.uuid4().hex[:6]
    return f"disk{device_id}-s{tag}-file", f"disk{device_id}-s{tag}-fmt"


async def _plan(drv: QemuDriver, run: RunDir, spec: VmSpec, disks: list[SnapshotDisk]) -> list[_Freeze]:
    by_id = {d.device_id: d for d in spec.disks}
    if not disks:
        raise DriverError(ErrorCode.BAD_REQUEST, "a snapshot needs at least one disk")
    if len({d.device_id for d in disks}) != len(disks):
        raise DriverError(ErrorCode.BAD_REQUEST, "duplicate snapshot disk device_id")
    plan: list[_Freeze] = []
    for item in disks:
        disk = by_id.get(item.device_id)
        if disk is None:
            raise DriverError(ErrorCode.NOT_FOUND, f"VM {run.path.name} has no disk {item.device_id}")
        if disk.readonly:
            raise DriverError(ErrorCode.BAD_REQUEST, f"disk {item.device_id} is read-only")
        top = await drv._disk_top(run, item.device_id)
        if top is None:
            raise DriverError(ErrorCode.INVALID_STATE, f"disk {item.device_id} of VM {run.path.name} has no medium")
        if top[1] != os.path.realpath(pools.layer_path(disk.layer)):
            raise DriverError(
                ErrorCode.INVALID_STATE, f"disk {item.device_id} reads {top[1]}, not its recorded layer (a job runs?)"
            )
        path = pools.layer_path(item.new_top)
        if path.exists():
            raise DriverError(ErrorCode.ALREADY_EXISTS, f"{item.new_top.name} already exists")
        plan.append(_Freeze(disk, item.new_top, path, top[0], _new_nodes(item.device_id)))
    return plan


async def _open_new_tops(drv: QemuDriver, run: RunDir, plan: list[_Freeze]) -> None:
    """qemu-img create each new top on its frozen layer, then blockdev-add it with `backing: null`
    (blockdev-snapshot wants an overlay without backing and links it to the node it snapshots)."""
    for freeze in plan:
        await layers.create(freeze.path, None, pools.layer_path(freeze.disk.layer))
        freeze.created = True
        file, fmt = freeze.nodes
        await drv._qmp(
            run, "blockdev-add", {"driver": "file", "node-name": file, "filename": str(freeze.path), "discard": "unmap"}
        )
        freeze.added = True
        await drv._qmp(
            run,
            "blockdev-add",
            {"driver": "qcow2", "node-name": fmt, "file": file, "backing": None, "discard": "unmap"},
        )


async def _freeze(drv: QemuDriver, run: RunDir, plan: list[_Freeze]) -> float:
    """The one transaction; returns its duration in ms (guest I/O is drained meanwhile)."""
    actions = [{"type": "blockdev-snapshot", "data": {"node": f.frozen_node, "overlay": f.nodes[1]}} for f in plan]
    started = time.monotonic()
    await drv._qmp(run, "transaction", {"actions": actions})
    return (time.monotonic() - started) * 1000


async def _freeze_and_switch_over(drv: QemuDriver, run: RunDir, plan: list[_Freeze], save: memstate.MemorySave) -> None:
    """The disk transaction and `migrate-continue` sent back to back, not one after the other's
    answer: the guest is paused at pre-switchover until `resume`, so both see the same instant, and
    the pause is one QMP round trip shorter. Order matters (the end of the migration inactivates the
    images, after which no transaction runs): QEMU runs one connection's commands in the order they
    arrive, and the two calls are issued in this order (tasks start FIFO; qemu.qmp's send queue is
    FIFO). If either fails, both are awaited before the caller's roll-back sees the error."""
    freezing = asyncio.ensure_future(_freeze(drv, run, plan))
    finishing = asyncio.ensure_future(save.switch_over())
    outcome = await asyncio.gather(freezing, finishing, return_exceptions=True)
    for result in outcome:
        if isinstance(result, BaseException):
            raise result


async def _applied(drv: QemuDriver, run: RunDir, freeze: _Freeze) -> bool:
    top = await drv._disk_top(run, freeze.disk.device_id)
    return top is not None and top[0] == freeze.nodes[1]


async def _undo(drv: QemuDriver, run: RunDir, plan: list[_Freeze]) -> None:
    """Back onto the old tops: an applied freeze is committed back (active commit, pivot), then the
    new nodes are closed and the new files removed. Best effort per disk, logged."""
    jobs = drv.jobs_of(run.path.name)
    for freeze in plan:
        try:
            if freeze.added and await _applied(drv, run, freeze):
                job = commit_job(freeze.disk.device_id)
                await jobs.start_commit(job, freeze.nodes[1], None, freeze.frozen_node)
                await jobs.wait_ready(job, timeout=60.0)
                await jobs.complete(job, timeout=60.0)
            if freeze.added:
                await drv._blockdev_del(run, freeze.nodes[1], freeze.nodes[0])
        except DriverError as exc:
            log.error("VM %s: undoing the freeze of disk %d failed: %s", run.path.name, freeze.disk.device_id, exc)
            continue
        if freeze.created:
            freeze.path.unlink(missing_ok=True)


def _flight(freeze: _Freeze) -> dict[str, object]:
    """The in-flight record of one new top (saveflight.py)."""
    return {"device_id": freeze.disk.device_id, "path": str(freeze.path), "nodes": list(freeze.nodes),
            "new_top": freeze.new_top.model_dump(mode="json")}  # fmt: skip


def _record(run: RunDir, plan: list[_Freeze]) -> list[DiskSpec]:
    """The VM's spec names the new tops (what a restart opens)."""
    spec = run.read_spec()
    if spec is None:
        raise DriverError(ErrorCode.NOT_FOUND, f"VM {run.path.name} not found")
    new = {f.disk.device_id: f.new_top for f in plan}
    spec.disks = [d.model_copy(update={"layer": new[d.device_id]}) if d.device_id in new else d for d in spec.disks]
    run.write_spec(spec)
    return [d for d in spec.disks if d.device_id in new]


async def snapshot_vm(
    drv: QemuDriver, vm_name: str, disks: list[SnapshotDisk], memory: LayerRef | None, progress: ProgressFn
) -> SnapshotTaken:
    run = drv._existing(vm_name)
    async with drv._vm_locks[vm_name]:
        spec = drv._running_spec(run)
        plan = await _plan(drv, run, spec, disks)
        memory_path = pools.layer_path(memory) if memory is not None else None
        save: memstate.MemorySave | None = None
        flight = [_flight(f) for f in plan]
        saveflight.write(run, flight, memory_path)
        try:
            report_phase("creating the new top layers")
            await _open_new_tops(drv, run, plan)
            if memory_path is not None:
                layers.reserve(memory_path)
                save = memstate.MemorySave(drv.monitor(vm_name), memory_path, progress)
                report_phase("writing the memory (guest running)")
                await save.until_switchover()
            report_phase("freezing the disks" + (" (guest paused)" if save is not None else ""))
            memory_info: LayerInfo | None = None
            if save is None:
                paused_ms = await _freeze(drv, run, plan)
                saveflight.write(run, flight, memory_path, applied=True)
            else:
                await _freeze_and_switch_over(drv, run, plan, save)
                saveflight.write(run, flight, memory_path, applied=True)
                paused_ms = await save.resume()
                if memory is not None and memory_path is not None:
                    memory_info = memstate.file_info(memory.name, memory_path)
        except BaseException as exc:
            log.info("VM %s: snapshot rolled back: %s", vm_name, exc)
            await _shielded(_roll_back(drv, run, plan, save, memory_path))
            saveflight.clear(run)
            raise
        finally:
            if save is not None:
                save.close()
        recorded = _record(run, plan)
        saveflight.clear(run)
        if memory is None:
            progress(1, 1)
        log.info("VM %s: snapshot of %d disk(s), paused %.1f ms", vm_name, len(plan), paused_ms)
        return SnapshotTaken(disks=recorded, memory=memory_info, paused_ms=paused_ms)


async def _roll_back(
    drv: QemuDriver, run: RunDir, plan: list[_Freeze], save: memstate.MemorySave | None, memory: Path | None
) -> None:
    if process.live_pid(run) is None:
        for freeze in plan:
            if freeze.created:
                freeze.path.unlink(missing_ok=True)
    else:
        if save is not None:
            await save.abort()
            # A completed save leaves the images inactive: `cont` activates them before the undo.
            await save.resume_if_paused()
        await _undo(drv, run, plan)
    if memory is not None:
        memory.unlink(missing_ok=True)


async def save_vm(drv: QemuDriver, vm_name: str, memory: LayerRef, progress: ProgressFn) -> LayerInfo:
    """Hibernate: the live memory save, then `quit` (the VM is stopped, its spec kept as by stop_vm)."""
    run = drv._existing(vm_name)
    path = pools.layer_path(memory)
    async with drv._vm_locks[vm_name]:
        drv._running_spec(run)
        layers.reserve(path)
        save = memstate.MemorySave(drv.monitor(vm_name), path, progress)
        saveflight.write(run, [], path)
        try:
            report_phase("writing the memory (guest running)")
            await save.until_switchover()
            await save.finish()
        except BaseException:

            async def back() -> None:
                await save.abort()
                await save.resume_if_paused()

            await _shielded(back())
            saveflight.clear(run)
            raise
        finally:
            save.close()
        info = memstate.file_info(memory.name, path)
        await _shielded(drv._kill(run), reraise=False)
        saveflight.clear(run)
        return info


async def restore_vm(drv: QemuDriver, spec: VmSpec, memory: LayerRef, progress: ProgressFn) -> VmReport:
    """Start QEMU for `spec` waiting for an incoming migration (paused), load the file, `cont`."""
    path = pools.layer_path(memory)
    if not path.is_file():
        raise DriverError(ErrorCode.NOT_FOUND, f"memory file {memory.name} not found")
    await drv._start(spec, ("-incoming", "defer", "-S"))
    run = drv._run(spec.name)
    try:
        report_phase("loading the memory")
        monitor = drv.monitor(spec.name)
        await memstate.load(monitor, path, progress)
        await memstate.cont(monitor)
    except BaseException:
        await _shielded(drv._kill(run), reraise=False)
        raise
    report = await drv._report(run)
    if report.power_state != PowerState.RUNNING:
        log.warning("VM %s restored but reported %s", spec.name, report.power_state)
    return report
