"""Merging two adjacent layers of a chain (the Snapshots role's stream and commit), live or offline.

Live merges are block jobs on the running VM's disk (`block-stream`, `block-commit`), addressed by node:
the disk's chain is walked from the node its device reads down the `backing` edges of QEMU's block
graph, since backing layers opened from the file headers have generated node names. QEMU rewrites the
backing file names in the headers itself, so the files and the chain QEMU holds agree afterwards.
Offline merges are `qemu-img commit` and a safe `qemu-img rebase`, with their progress.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from strato.agent.drivers.base import DriverError, ProgressFn, report_phase
from strato.agent.drivers.qemu import images, layers, pools
from strato.agent.drivers.qemu.blockjobs import BlockJobs
from strato.agent.drivers.qemu.migration import _shielded
from strato.agent.drivers.qemu.process import RunDir
from strato.protocol.messages import DiskSpec, ErrorCode, LayerInfo, LayerRef

if TYPE_CHECKING:
    from strato.agent.drivers.qemu.driver import QemuDriver


@dataclass(frozen=True)
class ChainNode:
    """One layer of a disk's chain as QEMU holds it: its format node and the real path of its file."""

    node: str
    path: str
    named: bool
    """Added by the agent (a name it chose), so it must be closed with blockdev-del once unused."""


def stream_job(device_id: int) -> str:
    return f"stream-disk{device_id}"


def commit_job(device_id: int) -> str:
    return f"commit-disk{device_id}"


async def disk_chain(drv: QemuDriver, run: RunDir, device_id: int) -> list[ChainNode]:
    """The layers of a running VM's disk, the one its device reads first, following `backing` edges."""
    top = await drv._disk_top(run, device_id)
    if top is None:
        raise DriverError(ErrorCode.NOT_FOUND, f"VM {run.path.name} has no disk {device_id}")
    graph: dict[str, Any] = await drv._qmp(run, "x-debug-query-block-graph")
    names = {int(n["id"]): str(n["name"]) for n in graph["nodes"]}
    ids = {name: node_id for node_id, name in names.items()}
    children: dict[int, dict[str, int]] = {}
    for edge in graph["edges"]:
        children.setdefault(int(edge["parent"]), {})[str(edge["name"])] = int(edge["child"])
    files = {
        str(n["node-name"]): os.path.realpath(str(n["file"]))
        for n in await drv._qmp(run, "query-named-block-nodes", {"flat": True})
    }
    chain: list[ChainNode] = []
    current: int | None = ids.get(top[0])
    while current is not None and len(chain) < 256:
        name = names[current]
        chain.append(ChainNode(name, files.get(name, ""), not name.startswith("#")))
        current = children.get(current, {}).get("backing")
    return chain


def _find(chain: list[ChainNode], layer: LayerRef, what: str, device_id: int) -> int:
    path = os.path.realpath(pools.layer_path(layer))
    for index, node in enumerate(chain):
        if node.path == path:
            return index
    raise DriverError(ErrorCode.BAD_REQUEST, f"{what} {layer.name} is not in the chain of disk {device_id}")


def _disk(drv: QemuDriver, run: RunDir, device_id: int) -> DiskSpec:
    spec = drv._running_spec(run)
    disk = next((d for d in spec.disks if d.device_id == device_id), None)
    if disk is None:
        raise DriverError(ErrorCode.NOT_FOUND, f"VM {run.path.name} has no disk {device_id}")
    return disk


async def _run_job(jobs: BlockJobs, job: str, progress: ProgressFn, active: bool) -> None:
    """Wait for the job (READY then complete for an active commit), reporting its bytes; on failure or
    cancellation the job is cancelled (the chain stays as it was: stream and commit only change it at
    their very end)."""
    try:
        if active:
            ready = await jobs.wait_ready(job)
            progress(ready.current, ready.total)
            await jobs.complete(job)
        else:
            info = await jobs.wait_ended(job)
            progress(info.total, info.total)
    except BaseException:
        await _shielded(_cancel_quietly(jobs, job))
        raise


async def _cancel_quietly(jobs: BlockJobs, job: str) -> None:
    with contextlib.suppress(DriverError):
        await jobs.cancel(job, force=True)


async def _close_nodes(drv: QemuDriver, run: RunDir, node: ChainNode) -> None:
    """A layer the agent opened by name and that left the chain: close it (and its file node), so its
    file is free for the caller to remove."""
    if node.named:
        await drv._blockdev_del(run, node.node, node.node.removesuffix("-fmt") + "-file")


async def stream_disk(
    drv: QemuDriver, vm_name: str, device_id: int, into: LayerRef, base: LayerRef | None, progress: ProgressFn
) -> DiskSpec:
    """block-stream into `into`'s node with base-node = `base`'s node (none: everything below)."""
    run = drv._existing(vm_name)
    async with drv._vm_locks[vm_name]:
        disk = _disk(drv, run, device_id)
        chain = await disk_chain(drv, run, device_id)
        at = _find(chain, into, "layer", device_id)
        base_at = _find(chain, base, "base", device_id) if base is not None else len(chain)
        if base_at <= at:
            raise DriverError(ErrorCode.BAD_REQUEST, f"base {base.name if base else ''} is not below {into.name}")
        if base_at == at + 1:
            return disk  # nothing between them
        jobs = drv.jobs_of(vm_name)
        job = stream_job(device_id)
        report_phase(f"streaming {base_at - at - 1} layer(s) into {into.name}")
        await jobs.start_stream(job, chain[at].node, chain[base_at].node if base is not None else None)
        await _run_job(jobs, job, progress, active=False)
        for gone in chain[at + 1 : base_at]:
            await _close_nodes(drv, run, gone)
        return disk


async def commit_disk(
    drv: QemuDriver, vm_name: str, device_id: int, top: LayerRef, base: LayerRef, progress: ProgressFn
) -> DiskSpec:
    """block-commit of `top` into `base`; an active commit (top is the layer the VM writes) pivots the
    device onto `base` once READY, and the VM's recorded disk becomes `base`."""
    run = drv._existing(vm_name)
    async with drv._vm_locks[vm_name]:
        disk = _disk(drv, run, device_id)
        chain = await disk_chain(drv, run, device_id)
        top_at = _find(chain, top, "top", device_id)
        base_at = _find(chain, base, "base", device_id)
        if base_at <= top_at:
            raise DriverError(ErrorCode.BAD_REQUEST, f"base {base.name} is not below {top.name}")
        jobs = drv.jobs_of(vm_name)
        job = commit_job(device_id)
        active = top_at == 0
        report_phase(f"committing {top.name} into {base.name}" + (" (active layer)" if active else ""))
        await jobs.start_commit(job, chain[0].node, None if active else chain[top_at].node, chain[base_at].node)
        await _run_job(jobs, job, progress, active)
        for gone in chain[top_at:base_at]:
            await _close_nodes(drv, run, gone)
        if not active:
            return disk
        spec = drv._running_spec(run)
        for i, entry in enumerate(spec.disks):
            if entry.device_id == device_id:
                spec.disks[i] = entry.model_copy(update={"layer": base})
                run.write_spec(spec)
                return spec.disks[i]
        return disk.model_copy(update={"layer": base})


async def commit_layer(top: LayerRef, base: LayerRef, progress: ProgressFn) -> LayerInfo:
    """`qemu-img commit -p -b base top` (top is emptied, and reads the same through base)."""
    top_path, base_path = pools.layer_path(top), pools.layer_path(base)
    top_info = await layers.info(top.name, top_path)
    await layers.info(base.name, base_path)
    if top_info.backing_file is None:
        raise DriverError(ErrorCode.BAD_REQUEST, f"layer {top.name} has no backing layer to commit into")
    progress(0, top_info.virtual_size)
    await images.run_with_progress(
        ("commit", "-p", "-f", "qcow2", "-b", str(base_path), str(top_path)), top_info.virtual_size, progress
    )
    return await layers.info(base.name, base_path)


async def stream_layer(layer: LayerRef, base: LayerRef | None, progress: ProgressFn) -> LayerInfo:
    """Safe `qemu-img rebase -p -b base -F qcow2 layer` (`-b ""`: all of the chain copied in)."""
    path = pools.layer_path(layer)
    current = await layers.info(layer.name, path)
    backing: list[str] = ["-b", ""]
    if base is not None:
        base_path: Path = pools.layer_path(base)
        await layers.info(base.name, base_path)
        backing = ["-b", str(base_path), "-F", "qcow2"]
    progress(0, current.virtual_size)
    await images.run_with_progress(("rebase", "-p", "-f", "qcow2", *backing, str(path)), current.virtual_size, progress)
    return await layers.info(layer.name, path)
