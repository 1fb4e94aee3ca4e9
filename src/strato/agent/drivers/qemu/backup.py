"""Volume snapshots of a running VM's disk (the QEMU driver's Snapshots role): `blockdev-backup`.

A backup job with `sync: full` copies everything the disk's chain holds, as of the instant the job
starts, into a new standalone qcow2: QEMU copies a cluster before the guest overwrites it (copy before
write), so the guest runs on meanwhile and its writes are not in the copy. The VM's own chain is not
touched: no layer is added, none frozen. Zero and unallocated ranges are written as qcow2 zero clusters,
so the copy stays sparse.

The copy is made under a hidden temporary name beside the target and linked into place only once the
job has completed without error; failed or cancelled, the job is cancelled, its target node closed and
the temporary file removed.
"""

from __future__ import annotations

import contextlib
import logging
from typing import TYPE_CHECKING

from strato.agent.drivers.base import DriverError, ProgressFn, report_phase
from strato.agent.drivers.qemu import layers, pools
from strato.agent.drivers.qemu.blockjobs import ENDED, BlockJobs
from strato.agent.drivers.qemu.images import _check_new_target, _link_into_place, _temp_beside
from strato.agent.drivers.qemu.migration import _shielded
from strato.agent.drivers.qemu.monitor import JOB_EVENTS, EventsMissed, job_match
from strato.protocol.messages import ErrorCode, LayerInfo, LayerRef

if TYPE_CHECKING:
    from strato.agent.drivers.qemu.driver import QemuDriver

log = logging.getLogger("strato.agent.qemu.backup")

POLL_S = 0.5


def backup_job(device_id: int) -> str:
    return f"backup-disk{device_id}"


async def _virtual_size(jobs: BlockJobs, node: str) -> int:
    for entry in await jobs.monitor.execute("query-named-block-nodes", {"flat": True}):
        if entry.get("node-name") == node:
            return int(entry["image"]["virtual-size"])
    raise DriverError(ErrorCode.NOT_FOUND, f"no block node {node}")


async def _run(jobs: BlockJobs, job: str, progress: ProgressFn) -> None:
    """Report the job's bytes until it concludes; dismiss it; raise if it ended in error."""
    with jobs.monitor.subscribe(JOB_EVENTS, job_match(job)) as events:
        while True:
            info = await jobs.get(job)
            if info is None:
                raise DriverError(ErrorCode.INTERNAL, f"backup job {job} disappeared")
            progress(info.current, max(info.total, 1))
            if info.status == ENDED:
                await jobs.dismiss(job)
                if info.error is not None:
                    raise DriverError(ErrorCode.INTERNAL, f"backup job {job} failed: {info.error}")
                return
            with contextlib.suppress(EventsMissed, TimeoutError):
                await events.next(POLL_S)


async def _clean(jobs: BlockJobs, job: str) -> None:
    with contextlib.suppress(DriverError):
        await jobs.cancel(job, force=True)
    with contextlib.suppress(DriverError):
        await jobs.drop_target(job)


async def backup_disk(
    drv: QemuDriver, vm_name: str, device_id: int, target: LayerRef, progress: ProgressFn
) -> LayerInfo:
    run = drv._existing(vm_name)
    path = pools.layer_path(target)
    async with drv._vm_locks[vm_name]:
        drv._running_spec(run)
        top = await drv._disk_top(run, device_id)
        if top is None:
            raise DriverError(ErrorCode.NOT_FOUND, f"VM {vm_name} has no disk {device_id} with a medium")
        _check_new_target(path)
        jobs = drv.jobs_of(vm_name)
        job = backup_job(device_id)
        if await jobs.get(job) is not None:
            raise DriverError(ErrorCode.INVALID_STATE, f"disk {device_id} of VM {vm_name} is being backed up")
        size = await _virtual_size(jobs, top[0])
        tmp = _temp_beside(path, "backup")
        try:
            await layers.create(tmp, size, None)
            node = await jobs.add_target(job, tmp)
            try:
                report_phase(f"copying disk {device_id} as of now (the guest runs on)")
                await jobs.monitor.execute(
                    "blockdev-backup",
                    {"job-id": job, "device": top[0], "target": node, "sync": "full", "auto-dismiss": False},
                )
                await _run(jobs, job, progress)
            except BaseException:
                await _shielded(_clean(jobs, job))
                raise
            await jobs.drop_target(job)
            info = await layers.info(target.name, tmp)
            _link_into_place(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
    log.info("VM %s: disk %d backed up to %s (%d bytes)", vm_name, device_id, target.name, info.physical_size)
    return info
