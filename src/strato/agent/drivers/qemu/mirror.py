"""Live move of a running VM's disk on one host (the BlockJobs role of the QEMU driver).

The new top layer is created on the target pool on top of the frozen chain already copied there, and
opened so that QEMU reads that chain from the file headers (the target pool's copies, never the
source's). A `blockdev-mirror` then copies the top layer (sync top; sync full for a disk without
backing) until READY, and `job-complete` pivots the device onto the target.

Until the pivot the source is the only valid copy: any failure or cancellation before it cancels the
job, closes the target and deletes its file, and the VM keeps running on its source. After the pivot
nothing is deleted. The job id is derived from the disk (`mirror-disk<N>`), and the target file of a
move in flight is recorded in the VM's run directory, so a retry after an agent restart finds a
leftover job and target and discards them before starting again.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import re
import uuid
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from strato.agent.drivers.base import DriverError, ProgressFn, report_phase
from strato.agent.drivers.qemu import layers, pools, process
from strato.agent.drivers.qemu.blockjobs import ENDED, BlockJobs, CopyMode, JobInfo, Sync
from strato.agent.drivers.qemu.merge import ChainNode, disk_chain
from strato.agent.drivers.qemu.monitor import JOB_EVENTS, EventsMissed, job_match
from strato.agent.drivers.qemu.process import RunDir
from strato.protocol.messages import BlockJobOutcome, DiskPlace, DiskSpec, ErrorCode, LayerRef
from strato.protocol.motion import BlockJobKind, BlockJobList, BlockJobReport

if TYPE_CHECKING:
    from strato.agent.drivers.qemu.driver import QemuDriver

log = logging.getLogger("strato.agent.qemu.mirror")

POLL_S = 0.5
"""How often progress is read while no job event comes."""
STALL_S = 5.0
"""A background mirror whose remaining bytes have not fallen for this long while the guest writes does
not converge: it is restarted in write-blocking mode."""
MAX_BUF = 16 * 1024 * 1024
MIN_BUF = 256 * 1024
GRANULE = 64 * 1024

_JOB_RE = re.compile(r"^(mirror|stream|commit)-disk(\d+)$")
_KINDS = {"mirror": BlockJobKind.MIRROR, "stream": BlockJobKind.STREAM, "commit": BlockJobKind.COMMIT}


def job_id(device_id: int) -> str:
    """The mirror job of a disk: one at a time per disk, found again after an agent restart."""
    return f"mirror-disk{device_id}"


def _target_nodes(device_id: int) -> tuple[str, str]:
    """(file, qcow2) node names of a new target: unique, since a disk may be moved again while the
    nodes of its previous move are the ones in use; `-file`/`-fmt` as the nodes a VM starts with."""
    tag = uuid.uuid4().hex[:6]
    return f"disk{device_id}-m{tag}-file", f"disk{device_id}-m{tag}-fmt"


def _file_node(fmt_node: str) -> str:
    return fmt_node.removesuffix("-fmt") + "-file"


def buf_size(bandwidth: int | None) -> int | None:
    """QEMU lets one buffer's worth through before its rate limit applies: keep it near one second
    of the limit so a low limit is smooth from the start."""
    if not bandwidth:
        return None
    return max(MIN_BUF, min(MAX_BUF, bandwidth // GRANULE * GRANULE))


@dataclass(frozen=True)
class _Source:
    node: str
    path: str
    virtual_size: int
    has_backing: bool


class DiskMotion:
    """The BlockJobs role of a QemuDriver: mirror_disk, set_block_job_speed, block_jobs."""

    def __init__(self, driver: QemuDriver, stall_s: float = STALL_S) -> None:
        self.driver = driver
        self.stall_s = stall_s
        self._disk_locks: defaultdict[tuple[str, int], asyncio.Lock] = defaultdict(asyncio.Lock)
        self._moving: dict[tuple[str, int], asyncio.Task[Any]] = {}
        """The task running each disk's mirror_disk (what cancel_block_job stops)."""

    # --- the move -----------------------------------------------------------------------------------

    async def mirror_disk(
        self,
        vm_name: str,
        device_id: int,
        target: LayerRef,
        target_backing: LayerRef | None,
        bandwidth: int | None,
        progress: ProgressFn,
    ) -> DiskSpec:
        drv = self.driver
        run = drv._existing(vm_name)
        if bandwidth is not None and bandwidth < 0:
            raise DriverError(ErrorCode.BAD_REQUEST, "bandwidth must be >= 0")
        target_path = pools.layer_path(target)
        backing_path = pools.layer_path(target_backing) if target_backing is not None else None
        if backing_path is not None and not backing_path.is_file():
            raise DriverError(ErrorCode.NOT_FOUND, f"backing layer {target_backing.name} not found")  # type: ignore[union-attr]
        key = (vm_name, device_id)
        current = asyncio.current_task()
        if current is not None:
            self._moving[key] = current
        try:
            return await self._mirror_disk(run, vm_name, device_id, target, target_path, backing_path, bandwidth,
                                           progress)  # fmt: skip
        finally:
            if self._moving.get(key) is current:
                del self._moving[key]

    async def _mirror_disk(
        self,
        run: RunDir,
        vm_name: str,
        device_id: int,
        target: LayerRef,
        target_path: Path,
        backing_path: Path | None,
        bandwidth: int | None,
        progress: ProgressFn,
    ) -> DiskSpec:
        drv = self.driver
        async with self._disk_locks[(vm_name, device_id)]:
            spec = drv._running_spec(run)
            disk = next((d for d in spec.disks if d.device_id == device_id), None)
            if disk is None:
                raise DriverError(ErrorCode.NOT_FOUND, f"VM {vm_name} has no disk {device_id}")
            jobs = drv.jobs_of(vm_name)
            source = await self._source(run, device_id)
            if source.path == os.path.realpath(target_path):
                # A retry after the pivot of an earlier attempt (its answer was lost): record and answer.
                await self._discard_leftover(run, jobs, device_id, source)
                return await self._record(run, device_id, target)
            if disk.readonly:
                raise DriverError(ErrorCode.BAD_REQUEST, f"disk {device_id} is read-only: move it offline")
            if backing_path is not None and not source.has_backing:
                raise DriverError(
                    ErrorCode.BAD_REQUEST, f"disk {device_id} has no backing layer: target_backing must be None"
                )
            await self._discard_leftover(run, jobs, device_id, source)
            sync: Sync = "top" if backing_path is not None else "full"
            old_chain = await disk_chain(drv, run, device_id)
            nodes = await self._mirror(run, jobs, device_id, source, target, backing_path, sync, bandwidth, progress)
            # Pivoted: from here on nothing is deleted.
            await self._drop_old_top(run, source.node)
            await self._drop_old_chain(run, device_id, old_chain[1:])
            moved = await self._record(run, device_id, target)
            _record_path(run, device_id).unlink(missing_ok=True)
            log.info("disk %d of VM %s moved to %s (node %s)", device_id, vm_name, target_path, nodes[1])
            return moved

    async def _mirror(
        self,
        run: RunDir,
        jobs: BlockJobs,
        device_id: int,
        source: _Source,
        target: LayerRef,
        backing: Path | None,
        sync: Sync,
        bandwidth: int | None,
        progress: ProgressFn,
    ) -> tuple[str, str]:
        """Mirror until READY (restarting in write-blocking mode if it does not converge), then pivot;
        returns the target's nodes, now the disk's top."""
        job = job_id(device_id)
        path = pools.layer_path(target)
        copy_mode: CopyMode = "background"
        report_phase(f"mirroring disk {device_id} (background copy)")
        while True:
            nodes = await self._start(run, jobs, device_id, source, target, backing, sync, bandwidth, copy_mode)
            try:
                ready = await self._wait_ready(jobs, job, progress, converge=copy_mode == "background")
                if ready is None:
                    log.warning(
                        "mirror of disk %d of VM %s does not converge under guest writes: restarting it "
                        "in write-blocking mode",
                        device_id,
                        run.path.name,
                    )
                    await self._abandon(run, jobs, device_id, nodes, path)
                    copy_mode = "write-blocking"
                    report_phase(
                        f"mirror of disk {device_id} restarted in write-blocking mode: the guest writes "
                        "faster than the background copy ran"
                    )
                    continue
                report_phase(f"mirror of disk {device_id} in sync ({copy_mode}): pivoting")
                await jobs.complete(job)
            except BaseException:
                # Cancelled or failed: unless the device already reads the target, back to the source.
                if await asyncio.shield(self._abandon(run, jobs, device_id, nodes, path)):
                    raise
                log.warning(
                    "disk %d of VM %s was pivoted before the failure: the move stands", device_id, run.path.name
                )
                with contextlib.suppress(DriverError):
                    await jobs.dismiss(job)
                return nodes
            progress(ready.total, ready.total)
            return nodes

    async def _start(
        self,
        run: RunDir,
        jobs: BlockJobs,
        device_id: int,
        source: _Source,
        target: LayerRef,
        backing: Path | None,
        sync: Sync,
        bandwidth: int | None,
        copy_mode: CopyMode,
    ) -> tuple[str, str]:
        """Create the target file, record it, open it (backing chain from its header) and start the job."""
        nodes = _target_nodes(device_id)
        path = pools.layer_path(target)
        await layers.create(path, source.virtual_size, backing)
        try:
            record = {"target": str(path), "nodes": list(nodes), "layer": target.model_dump(mode="json")}
            _record_path(run, device_id).write_text(json.dumps(record))
            await jobs.add_target(job_id(device_id), path, nodes=nodes)
            await jobs.start_mirror(
                job_id(device_id), source.node, nodes[1], sync, bandwidth or None, copy_mode, buf_size(bandwidth)
            )
        except BaseException:
            await asyncio.shield(self._abandon(run, jobs, device_id, nodes, path))
            raise
        log.info(
            "mirror of disk %d of VM %s to %s started (sync %s, %s, speed %s)",
            device_id,
            run.path.name,
            path,
            sync,
            copy_mode,
            bandwidth or "unlimited",
        )
        return nodes

    async def _wait_ready(self, jobs: BlockJobs, job: str, progress: ProgressFn, converge: bool) -> JobInfo | None:
        """Report progress until READY (the job then); None when `converge` and the remaining bytes
        have not fallen for `stall_s` while the total grew (the guest dirties faster than the copy)."""
        loop = asyncio.get_running_loop()
        best_remaining: int | None = None
        best_at = loop.time()
        total_then = 0
        with jobs.monitor.subscribe(JOB_EVENTS, job_match(job)) as events:
            while True:
                info = await jobs.get(job)
                if info is None:
                    raise DriverError(ErrorCode.INTERNAL, f"block job {job} disappeared")
                progress(info.current, info.total)
                if info.status == "ready":
                    return info
                if info.status == ENDED:
                    why = info.error or "it was cancelled"
                    raise DriverError(ErrorCode.INTERNAL, f"mirror {job} ended before it was in sync: {why}")
                remaining = info.total - info.current
                now = loop.time()
                if best_remaining is None or remaining < best_remaining:
                    best_remaining, best_at, total_then = remaining, now, info.total
                elif converge and now - best_at >= self.stall_s and info.total > total_then:
                    return None
                with contextlib.suppress(EventsMissed, TimeoutError):
                    await events.next(POLL_S)

    async def _abandon(self, run: RunDir, jobs: BlockJobs, device_id: int, nodes: tuple[str, str], path: Path) -> bool:
        """Back to the source before the pivot: cancel the job, close the target, delete its file.
        False (and nothing done) when the device already reads the target: the pivot happened."""
        try:
            source = await self._source(run, device_id)
        except DriverError as exc:
            log.warning("cannot tell whether disk %d was pivoted (%s): target %s kept", device_id, exc, path)
            return True
        if source.node == nodes[1]:
            return False
        with contextlib.suppress(DriverError):
            await jobs.cancel(job_id(device_id), force=True)
        with contextlib.suppress(DriverError):
            await self.driver._blockdev_del(run, nodes[1], nodes[0])
        if os.path.realpath(path) != source.path:
            path.unlink(missing_ok=True)
        _record_path(run, device_id).unlink(missing_ok=True)
        return True

    async def _discard_leftover(self, run: RunDir, jobs: BlockJobs, device_id: int, source: _Source) -> None:
        """A job or target an earlier attempt (an earlier agent life) left for this disk goes."""
        job = job_id(device_id)
        leftover = await jobs.get(job)
        if leftover is not None:
            log.info("discarding leftover mirror job %s (%s)", job, leftover.status)
            await jobs.cancel(job, force=True)
        prefix = f"disk{device_id}-m"
        in_use = {source.node, _file_node(source.node)}
        nodes = await jobs.monitor.execute("query-named-block-nodes", {"flat": True})
        names = [str(n.get("node-name")) for n in nodes]
        stale = [n for n in names if n.startswith(prefix) and n not in in_use]
        await self.driver._blockdev_del(run, *sorted(stale, key=lambda n: not n.endswith("-fmt")))
        record = _record_path(run, device_id)
        if record.is_file():
            try:
                stale_path = Path(json.loads(record.read_text())["target"])
            except (OSError, ValueError, KeyError, TypeError):
                stale_path = None
            if stale_path is not None and os.path.realpath(stale_path) != source.path:
                log.info("removing the target file of an unfinished move: %s", stale_path)
                stale_path.unlink(missing_ok=True)
            record.unlink(missing_ok=True)

    async def _drop_old_top(self, run: RunDir, node: str) -> None:
        """Close the old top (its unnamed backing nodes close with it); the source files stay."""
        try:
            await self.driver._blockdev_del(run, node, _file_node(node))
        except DriverError as exc:
            log.warning("old nodes %s of VM %s not closed after a move: %s", node, run.path.name, exc)

    async def _drop_old_chain(self, run: RunDir, device_id: int, below: list[ChainNode]) -> None:
        """Close the named nodes of the old chain below its top, top down: a layer frozen by a live
        snapshot was opened by blockdev-add, so closing the top leaves it open (and its file would stay
        in use). Nodes the new chain reads are left alone."""
        try:
            keep = {n.node for n in await disk_chain(self.driver, run, device_id)}
        except DriverError as exc:
            log.warning("old chain of disk %d of VM %s left open: %s", device_id, run.path.name, exc)
            return
        for node in below:
            if node.named and node.node not in keep:
                await self._drop_old_top(run, node.node)

    async def _record(self, run: RunDir, device_id: int, target: LayerRef) -> DiskSpec:
        """The VM's spec (what a restart starts) names the target as the disk's layer."""
        async with self.driver._vm_locks[run.path.name]:
            spec = run.read_spec()
            if spec is None:
                raise DriverError(ErrorCode.NOT_FOUND, f"VM {run.path.name} not found")
            for i, disk in enumerate(spec.disks):
                if disk.device_id == device_id:
                    spec.disks[i] = disk.model_copy(update={"layer": target})
                    run.write_spec(spec)
                    return spec.disks[i]
        raise DriverError(ErrorCode.NOT_FOUND, f"VM {run.path.name} has no disk {device_id}")

    async def _source(self, run: RunDir, device_id: int) -> _Source:
        """The node the disk's device reads now, its file and whether it has a backing layer."""
        top = await self.driver._disk_top(run, device_id)
        if top is None:
            raise DriverError(ErrorCode.NOT_FOUND, f"VM {run.path.name} has no disk {device_id}")
        node, path = top
        for entry in await self.driver._qmp(run, "query-named-block-nodes", {"flat": True}):
            if entry.get("node-name") == node:
                image: dict[str, Any] = entry.get("image") or {}
                has_backing = bool(entry.get("backing_file")) or "backing-image" in image
                return _Source(node, path, int(image["virtual-size"]), has_backing)
        raise DriverError(ErrorCode.NOT_FOUND, f"no block node {node} for disk {device_id}")

    # --- cancel, also after an agent or server restart ----------------------------------------------

    async def cancel_block_job(self, vm_name: str, device_id: int, target: LayerRef | None) -> BlockJobOutcome:
        """Stop the running mirror_disk (it unwinds itself: back to the source unless it pivoted), then
        settle from what QEMU says: a device reading the target is recorded there (an agent that died
        between the pivot and its record), otherwise a leftover job, target nodes and file go."""
        drv = self.driver
        run = drv._existing(vm_name)
        task = self._moving.get((vm_name, device_id))
        if task is not None and not task.done() and task is not asyncio.current_task():
            task.cancel()
            await asyncio.wait([task])
        async with self._disk_locks[(vm_name, device_id)]:
            recorded, recorded_layer = _read_record(run, device_id)
            targets = {os.path.realpath(p) for p in (recorded, pools.layer_path(target) if target else None) if p}
            layer = target or recorded_layer
            spec = run.read_spec()
            disk = next((d for d in spec.disks if d.device_id == device_id), None) if spec else None
            if disk is None:
                raise DriverError(ErrorCode.NOT_FOUND, f"VM {vm_name} has no disk {device_id}")
            if process.live_pid(run) is None:
                # Not running: the recorded spec is where the disk is (a pivot is recorded before the
                # in-flight record goes).
                in_use = os.path.realpath(pools.layer_path(disk.layer))
                if in_use in targets:
                    _record_path(run, device_id).unlink(missing_ok=True)
                    return BlockJobOutcome(place=DiskPlace.TARGET, disk=disk)
                _remove_unused(targets, in_use)
                _record_path(run, device_id).unlink(missing_ok=True)
                return BlockJobOutcome(place=DiskPlace.SOURCE, disk=disk)
            jobs = drv.jobs_of(vm_name)
            source = await self._source(run, device_id)
            if source.path in targets:
                with contextlib.suppress(DriverError):
                    await jobs.dismiss(job_id(device_id))
                await self._close_old_tops(run, device_id, source)
                moved = await self._record(run, device_id, layer) if layer is not None else disk
                _record_path(run, device_id).unlink(missing_ok=True)
                log.info("disk %d of VM %s: the move had pivoted; it stands", device_id, vm_name)
                return BlockJobOutcome(place=DiskPlace.TARGET, disk=moved)
            await self._discard_leftover(run, jobs, device_id, source)
            _remove_unused(targets, source.path)
            return BlockJobOutcome(place=DiskPlace.SOURCE, disk=disk)

    async def _close_old_tops(self, run: RunDir, device_id: int, source: _Source) -> None:
        """After a pivot the agent did not see through: close this disk's nodes the device no longer
        reads (the old top, which holds the source file open)."""
        in_use = {source.node, _file_node(source.node)}
        found = await self.driver._qmp(run, "query-named-block-nodes", {"flat": True})
        names = [str(n.get("node-name")) for n in found]
        first = process.disk_node_names(device_id)
        mine = [n for n in names if (n in first or n.startswith(f"disk{device_id}-m")) and n not in in_use]
        for node in sorted(mine, key=lambda n: not n.endswith("-fmt")):
            try:
                await self.driver._blockdev_del(run, node)
            except DriverError as exc:
                log.warning("node %s of VM %s not closed: %s", node, run.path.name, exc)

    # --- speed and listing --------------------------------------------------------------------------

    async def set_block_job_speed(self, vm_name: str, device_id: int, bandwidth: int) -> BlockJobReport:
        drv = self.driver
        run = drv._existing(vm_name)
        drv._running_spec(run)
        jobs = drv.jobs_of(vm_name)
        current = await self._device_job(jobs, device_id)
        if current is None or current.status == ENDED:
            raise DriverError(ErrorCode.NOT_FOUND, f"disk {device_id} of VM {vm_name} has no running block job")
        await jobs.set_speed(current.id, bandwidth)
        report = next((r for r in (await self.block_jobs(vm_name)).jobs if r.job_id == current.id), None)
        if report is None:
            raise DriverError(ErrorCode.NOT_FOUND, f"block job {current.id} ended meanwhile")
        return report

    async def _device_job(self, jobs: BlockJobs, device_id: int) -> JobInfo | None:
        for job in await jobs.list():
            match = _JOB_RE.match(job.id)
            if match and int(match.group(2)) == device_id:
                return job
        return None

    async def block_jobs(self, vm_name: str) -> BlockJobList:
        """query-jobs (status, progress, error), with the speed from query-block-jobs."""
        drv = self.driver
        run = drv._existing(vm_name)
        drv._running_spec(run)
        jobs = drv.jobs_of(vm_name)
        speeds = {
            str(entry.get("device")): int(entry.get("speed", 0))
            for entry in await jobs.monitor.execute("query-block-jobs")
        }
        reports: list[BlockJobReport] = []
        for job in await jobs.list():
            match = _JOB_RE.match(job.id)
            kind = _KINDS.get(job.type)
            if match is None or kind is None:
                continue  # not a job of this driver's naming (nothing else starts jobs here)
            reports.append(
                BlockJobReport(
                    job_id=job.id,
                    kind=kind,
                    device_id=int(match.group(2)),
                    status=job.status,
                    offset=job.current,
                    length=job.total,
                    speed_bytes_per_s=speeds.get(job.id, 0),
                    error=job.error,
                )
            )
        return BlockJobList(jobs=reports)


def _read_record(run: RunDir, device_id: int) -> tuple[str | None, LayerRef | None]:
    """(target path, target layer) of the move in flight recorded for the disk, if any."""
    try:
        data = json.loads(_record_path(run, device_id).read_text())
    except (OSError, ValueError):
        return None, None
    if not isinstance(data, dict):
        return None, None
    layer = None
    with contextlib.suppress(ValueError, TypeError):
        layer = LayerRef.model_validate(data.get("layer")) if data.get("layer") else None
    target = data.get("target")
    return (str(target) if target else None), layer


def _remove_unused(paths: set[str], in_use: str) -> None:
    for path in paths:
        if path != in_use:
            Path(path).unlink(missing_ok=True)


def _record_path(run: RunDir, device_id: int) -> Path:
    """Where the target of a move in flight is written down (found again after an agent restart)."""
    return run.path / f"{job_id(device_id)}.json"
