"""Block jobs (mirror, stream, commit) of one VM, on top of its `VmMonitor`.

Every job is started with a `job-id` and `auto-dismiss: false`, so it stays in `query-jobs` until
dismissed here: an agent that restarts finds it there (status, progress, error) and can wait for it
or cancel it again. Waits subscribe to the job's events before reading its state, so no transition
is missed; after a reconnect they re-read `query-jobs`.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from strato.agent.drivers.base import DriverError
from strato.agent.drivers.qemu import layers
from strato.agent.drivers.qemu.monitor import JOB_EVENTS, EventsMissed, VmMonitor, job_match
from strato.agent.drivers.qemu.qmp import QmpError
from strato.protocol.messages import ErrorCode

JOB_TIMEOUT_S = 3600.0
CANCEL_TIMEOUT_S = 60.0
ENDED = "concluded"
GONE = "null"

Sync = Literal["top", "full"]
CopyMode = Literal["background", "write-blocking"]


class BlockJobError(DriverError):
    """A job ended with an error, or ended without reaching the state waited for."""


@dataclass(frozen=True)
class JobInfo:
    """One entry of `query-jobs`: progress counts bytes for block jobs (total may grow as the guest
    writes during a mirror)."""

    id: str
    type: str
    status: str
    current: int
    total: int
    error: str | None

    @classmethod
    def from_qmp(cls, entry: dict[str, Any]) -> JobInfo:
        error = entry.get("error")
        return cls(
            id=str(entry["id"]),
            type=str(entry.get("type", "")),
            status=str(entry.get("status", "")),
            current=int(entry.get("current-progress", 0)),
            total=int(entry.get("total-progress", 0)),
            error=str(error) if error is not None else None,
        )


def target_node(job_id: str) -> tuple[str, str]:
    """(file node, qcow2 node) of the target a mirror job writes: named after the job, so the target
    can be found and dropped again after an agent restart."""
    return f"{job_id}-tgt-file", f"{job_id}-tgt"


class BlockJobs:
    """Start, watch, finish and cancel the block jobs of one VM."""

    def __init__(self, monitor: VmMonitor) -> None:
        self.monitor = monitor

    # --- state -----------------------------------------------------------------------------------

    async def list(self) -> list[JobInfo]:
        """All jobs QEMU knows (running, ready, or concluded and not yet dismissed)."""
        return [JobInfo.from_qmp(entry) for entry in await self.monitor.execute("query-jobs")]

    async def get(self, job_id: str) -> JobInfo | None:
        return next((job for job in await self.list() if job.id == job_id), None)

    # --- starts ----------------------------------------------------------------------------------

    async def add_target(
        self, job_id: str, path: Path, backing_node: str | None = None, nodes: tuple[str, str] | None = None
    ) -> str:
        """Open an existing qcow2 file as a mirror target (as nodes `nodes`, file then qcow2, default
        named after the job). With `backing_node` the target's backing is that open node; without it
        QEMU opens the backing chain the file's header names. Never `backing: null`: that means no
        backing at all, and after a `sync: top` mirror the guest would read zeros there."""
        file, fmt = nodes or target_node(job_id)
        await self.monitor.execute(
            "blockdev-add", {"driver": "file", "node-name": file, "filename": str(path), "discard": "unmap"}
        )
        qcow2: dict[str, object] = {"driver": "qcow2", "node-name": fmt, "file": file, "discard": "unmap"}
        if backing_node is not None:
            qcow2["backing"] = backing_node
        try:
            await self.monitor.execute("blockdev-add", qcow2)
        except BaseException:
            with contextlib.suppress(DriverError):
                await self.monitor.execute("blockdev-del", {"node-name": file})
            raise
        return fmt

    async def mirror_to_new_file(
        self,
        job_id: str,
        device: str,
        path: Path,
        sync: Sync = "full",
        speed: int | None = None,
        copy_mode: CopyMode = "background",
        backing_node: str | None = None,
        backing_path: Path | None = None,
        buf_size: int | None = None,
    ) -> None:
        """Create `path` (qcow2, the size of `device`; on `backing_path` for sync top), open it as
        the target and start the mirror; on failure the target is closed and removed again."""
        if sync == "top" and (backing_node is None or backing_path is None):
            raise DriverError(ErrorCode.BAD_REQUEST, "sync top needs the source's backing node and file")
        size = await self._virtual_size(device)
        await layers.create(path, size, backing_path)
        try:
            target = await self.add_target(job_id, path, backing_node)
            await self.start_mirror(job_id, device, target, sync, speed, copy_mode, buf_size)
        except BaseException:
            with contextlib.suppress(DriverError):
                await self.drop_target(job_id)
            path.unlink(missing_ok=True)
            raise

    async def start_mirror(
        self,
        job_id: str,
        device: str,
        target: str,
        sync: Sync = "full",
        speed: int | None = None,
        copy_mode: CopyMode = "background",
        buf_size: int | None = None,
    ) -> None:
        """`blockdev-mirror` from node `device` to node `target`; READY once both hold the same data.
        QEMU's rate limit lets one burst of `buf_size` bytes (default 16 MiB) through before it
        throttles: a small `buf_size` makes a low `speed` smooth from the start."""
        args: dict[str, object] = {
            "job-id": job_id,
            "device": device,
            "target": target,
            "sync": sync,
            "copy-mode": copy_mode,
            "auto-dismiss": False,
        }
        if speed is not None:
            args["speed"] = speed
        if buf_size is not None:
            args["buf-size"] = buf_size
        await self.monitor.execute("blockdev-mirror", args)

    async def start_stream(
        self, job_id: str, device: str, base_node: str | None = None, speed: int | None = None
    ) -> None:
        """`block-stream`: copy the backing layers above `base_node` (all when None) into `device`."""
        args: dict[str, object] = {"job-id": job_id, "device": device, "auto-dismiss": False}
        if base_node is not None:
            args["base-node"] = base_node
        if speed is not None:
            args["speed"] = speed
        await self.monitor.execute("block-stream", args)

    async def start_commit(
        self,
        job_id: str,
        device: str,
        top_node: str | None = None,
        base_node: str | None = None,
        speed: int | None = None,
    ) -> None:
        """`block-commit`: merge `top_node` (the active layer when None: the job then goes READY and
        needs `complete`, as a mirror) down into `base_node`."""
        args: dict[str, object] = {"job-id": job_id, "device": device, "auto-dismiss": False}
        if top_node is not None:
            args["top-node"] = top_node
        if base_node is not None:
            args["base-node"] = base_node
        if speed is not None:
            args["speed"] = speed
        await self.monitor.execute("block-commit", args)

    async def set_speed(self, job_id: str, speed: int) -> None:
        """Change the rate limit of a running job (0: unlimited)."""
        await self.monitor.execute("block-job-set-speed", {"device": job_id, "speed": speed})

    # --- waits and ends --------------------------------------------------------------------------

    async def wait_status(self, job_id: str, wanted: set[str], timeout: float = JOB_TIMEOUT_S) -> JobInfo:
        """Wait until the job is in one of `wanted`; BlockJobError if it ends (or is gone) first.
        `concluded` and `null` (dismissed) may be asked for, to wait for the end."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        with self.monitor.subscribe(JOB_EVENTS, job_match(job_id)) as events:
            job = await self.get(job_id)
            while True:
                if job is None:
                    if GONE in wanted:
                        return JobInfo(job_id, "", GONE, 0, 0, None)
                    raise BlockJobError(ErrorCode.NOT_FOUND, f"block job {job_id} not found")
                if job.status in wanted:
                    return job
                if job.status == ENDED:
                    why = job.error or "it was cancelled or finished"
                    raise BlockJobError(ErrorCode.INTERNAL, f"block job {job_id} ended before {sorted(wanted)}: {why}")
                try:
                    await events.next(max(0.0, deadline - loop.time()))
                except EventsMissed:
                    pass
                except TimeoutError:
                    raise BlockJobError(
                        ErrorCode.INTERNAL, f"block job {job_id} still {job.status} after {timeout:g} s"
                    ) from None
                job = await self.get(job_id)

    async def wait_ready(self, job_id: str, timeout: float = JOB_TIMEOUT_S) -> JobInfo:
        """A mirror (or active commit) is READY: source and target hold the same data."""
        return await self.wait_status(job_id, {"ready"}, timeout)

    async def wait_ended(self, job_id: str, timeout: float = JOB_TIMEOUT_S) -> JobInfo:
        """Wait for the end of a job, dismiss it, and raise BlockJobError if it ended in error."""
        job = await self.wait_status(job_id, {ENDED, GONE}, timeout)
        await self.dismiss(job_id)
        if job.error is not None:
            raise BlockJobError(ErrorCode.INTERNAL, f"block job {job_id} failed: {job.error}")
        return job

    async def complete(self, job_id: str, timeout: float = JOB_TIMEOUT_S) -> JobInfo:
        """Pivot a READY mirror (or active commit) to its target and wait for the end."""
        await self.monitor.execute("job-complete", {"id": job_id})
        return await self.wait_ended(job_id, timeout)  # reads query-jobs after subscribing: nothing lost

    async def cancel(self, job_id: str, force: bool = True, timeout: float = CANCEL_TIMEOUT_S) -> JobInfo:
        """Stop the job and wait until it is gone. `force` (job-cancel) throws a mirror's target away;
        without it a READY mirror ends COMPLETED with a consistent target and no pivot. A job that has
        already ended, or is unknown, is not an error."""
        job = await self.get(job_id)
        if job is None:
            return JobInfo(job_id, "", GONE, 0, 0, None)
        if job.status != ENDED:
            try:
                if force:
                    await self.monitor.execute("job-cancel", {"id": job_id})
                else:
                    await self.monitor.execute("block-job-cancel", {"device": job_id})
            except QmpError:
                # It may have ended meanwhile; anything else is a real error.
                again = await self.get(job_id)
                if again is not None and again.status != ENDED:
                    raise
        job = await self.wait_status(job_id, {ENDED, GONE}, timeout)
        await self.dismiss(job_id)
        return job

    async def dismiss(self, job_id: str) -> None:
        """Forget a concluded job (it then leaves query-jobs); an unknown one is not an error."""
        try:
            await self.monitor.execute("job-dismiss", {"id": job_id})
        except QmpError:
            if await self.get(job_id) is not None:
                raise

    async def drop_target(self, job_id: str, target_nodes: tuple[str, str] | None = None) -> Path | None:
        """Close a mirror target opened by `add_target` (after its job ended); returns its file."""
        file_node, fmt_node = target_nodes or target_node(job_id)
        nodes = await self.monitor.execute("query-named-block-nodes", {"flat": True})
        path: Path | None = None
        names = set()
        for node in nodes:
            names.add(str(node.get("node-name")))
            if node.get("node-name") == file_node:
                path = Path(str(node["file"]))
        for node_name in (fmt_node, file_node):
            if node_name in names:
                await self.monitor.execute("blockdev-del", {"node-name": node_name})
        return path

    async def discard_target(self, job_id: str, path: Path | None = None) -> Path | None:
        """Close a cancelled mirror's target and delete its file (found by node name if not given)."""
        found = await self.drop_target(job_id)
        gone = path or found
        if gone is not None:
            gone.unlink(missing_ok=True)
        return gone

    async def _virtual_size(self, node_name: str) -> int:
        for node in await self.monitor.execute("query-named-block-nodes", {"flat": True}):
            if node.get("node-name") == node_name:
                return int(node["image"]["virtual-size"])
        raise DriverError(ErrorCode.NOT_FOUND, f"no block node {node_name}")
