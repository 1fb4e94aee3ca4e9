"""A running VM's memory written live to a file, and a VM started again from such a file.

The save is a migration into the file, opened here and passed to QEMU (`getfd`, an `fd:` URI: QEMU
7.2 has no `file:` URI), with `pause-before-switchover`: RAM is copied while the guest runs, QEMU then
stops the guest and waits at `pre-switchover`, which is where a snapshot freezes the disks;
`migrate-continue` writes the last dirty pages and the device state, and the migration ends
`completed` with the guest paused (QEMU inactivates the images at the end of a migration; `cont`
activates them again). The guest's pause is measured from QEMU's own STOP and RESUME timestamps.

The restore is an incoming migration from the file (an `fd:` URI as well) into a QEMU started with
`-incoming defer -S`, then `cont`: the guest runs on from the saved instant without booting.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from pathlib import Path
from typing import Any

from strato.agent.drivers.base import DriverError, ProgressFn
from strato.agent.drivers.qemu.migration import DOWNTIME_LIMIT_MS, UNLIMITED_BANDWIDTH, _wait_migration
from strato.agent.drivers.qemu.monitor import RUN_STATE_EVENTS, EventsMissed, Subscription, VmMonitor
from strato.agent.drivers.qemu.pools import os_error
from strato.agent.drivers.qemu.qmp import QmpError
from strato.protocol.messages import ErrorCode, LayerInfo

SAVE_TIMEOUT_S = 3600.0
ROLLBACK_WAIT_S = 15.0
PROGRESS_S = 0.2
MEMORY_FORMAT = "vmstate"
"""LayerInfo.format of a memory file: QEMU's migration stream, not a disk image."""
_PAUSED = {"paused", "finish-migrate", "postmigrate", "pre-switchover"}


def _event_time(event: dict[str, Any]) -> float:
    stamp = event.get("timestamp") or {}
    return float(stamp.get("seconds", 0)) + float(stamp.get("microseconds", 0)) / 1e6


async def cont(monitor: VmMonitor, timeout: float = ROLLBACK_WAIT_S, retry_s: float = 0.005) -> None:
    """`cont`, retried while QEMU says "Migration is not finalized yet": the status is `completed` a
    moment before the runstate leaves finish-migrate (the cleanup runs later on the main loop), and
    a caller may send it even earlier, while the last pass is still being written."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        try:
            await monitor.execute("cont")
            return
        except QmpError as exc:
            if "not finalized" not in exc.message or loop.time() >= deadline:
                raise
        await asyncio.sleep(retry_s)


SAVE_FD = "strato-memsave"
LOAD_FD = "strato-memload"


async def _pass_file(monitor: VmMonitor, path: Path, flags: int, name: str) -> None:
    """Open the memory file here and give QEMU the descriptor: QEMU writes (reads) it itself, with no
    helper process (an `exec:cat` migration waits for its `cat` to exit at the end, on QEMU's main
    loop, which delayed `cont` by up to 200 ms on a busy host)."""
    try:
        fd = os.open(path, flags | os.O_CLOEXEC)
    except OSError as exc:
        raise os_error(exc, f"open {path.name}") from exc
    try:
        await monitor.pass_fd(fd, name)
    finally:
        os.close(fd)


def file_info(name: str, path: Path) -> LayerInfo:
    st = path.stat()
    return LayerInfo(name=name, format=MEMORY_FORMAT, virtual_size=st.st_size, physical_size=st.st_blocks * 512)


SAVE_BANDWIDTH_ENV = "STRATO_MEMORY_SAVE_BANDWIDTH"
"""Bytes per second a memory save may write (the agent's environment): spares a busy pool, and lets
tests hold a save in its live phase. Unset: as fast as QEMU goes."""


def save_bandwidth() -> int:
    raw = os.environ.get(SAVE_BANDWIDTH_ENV, "")
    try:
        value = int(raw) if raw else 0
    except ValueError:
        return UNLIMITED_BANDWIDTH
    return value if value > 0 else UNLIMITED_BANDWIDTH


class MemorySave:
    """One live RAM save of a VM to `path`: `until_switchover`, then `finish` (or `abort`)."""

    def __init__(self, monitor: VmMonitor, path: Path, progress: ProgressFn) -> None:
        self.monitor = monitor
        self.path = path
        self.progress = progress
        self.started = False
        self.stopped_at: float | None = None
        """QEMU's timestamp of the STOP that paused the guest for the switch-over."""
        self._events: contextlib.ExitStack = contextlib.ExitStack()
        self._runstate: Subscription | None = None
        self._reporter: asyncio.Task[None] | None = None

    async def until_switchover(self) -> None:
        """Start the migration into the file and wait (events) until QEMU has paused the guest at
        pre-switchover."""
        self._runstate = self._events.enter_context(self.monitor.subscribe(RUN_STATE_EVENTS))
        await self.monitor.execute(
            "migrate-set-capabilities",
            {"capabilities": [{"capability": "pause-before-switchover", "state": True},
                              {"capability": "events", "state": True}]},
        )  # fmt: skip
        await self.monitor.execute(
            "migrate-set-parameters", {"downtime-limit": DOWNTIME_LIMIT_MS, "max-bandwidth": save_bandwidth()}
        )
        await _pass_file(self.monitor, self.path, os.O_WRONLY | os.O_CREAT, SAVE_FD)
        self.started = True
        await self.monitor.execute("migrate", {"uri": f"fd:{SAVE_FD}"})
        self._reporter = asyncio.get_running_loop().create_task(self._report(), name="memsave-progress")
        # The guest is paused from here until `resume`: wait on the events alone, no confirming
        # query-migrate round trips inside the pause (the same below for `completed`).
        await _wait_migration(self.monitor, {"pre-switchover"}, SAVE_TIMEOUT_S, confirm=False)
        self.stopped_at = await self._last_stop()

    async def finish(self) -> None:
        """Write the last pass and the device state; the guest stays paused."""
        await self.switch_over()
        await _wait_migration(self.monitor, {"completed"}, SAVE_TIMEOUT_S, confirm=False)
        self._done()

    async def switch_over(self) -> None:
        """Let QEMU write the last pass and the device state (`resume` then waits for the end)."""
        await self.monitor.execute("migrate-continue", {"state": "pre-switchover"})

    async def resume(self) -> float:
        """After `switch_over`: `cont` as soon as QEMU takes it (it refuses until the save has ended:
        no wait for the `completed` event and a confirming query first), then check the save did
        complete (a failed one resumes the guest by itself). Returns the guest's pause in ms, from
        QEMU's STOP to RESUME timestamps."""
        await cont(self.monitor, SAVE_TIMEOUT_S, retry_s=0.001)
        resumed = await self._next("RESUME")
        info = await self.monitor.execute("query-migrate")
        if info.get("status") != "completed":
            why = info.get("error-desc") or info.get("status")
            raise DriverError(ErrorCode.INTERNAL, f"memory save did not complete: {why}")
        self._done()
        return max(0.0, (_event_time(resumed) - (self.stopped_at or _event_time(resumed))) * 1000)

    def _done(self) -> None:
        self._stop_reporter()
        written = self.path.stat().st_size
        self.progress(written, written)

    async def abort(self) -> None:
        """Cancel the migration (if it runs), resume a guest it paused, and remove the file."""
        self._stop_reporter()
        if self.started:
            with contextlib.suppress(DriverError):
                status = (await self.monitor.execute("query-migrate")).get("status")
                if status not in (None, "completed", "failed", "cancelled", "none"):
                    await self.monitor.execute("migrate_cancel")
                    with contextlib.suppress(DriverError):
                        await _wait_migration(self.monitor, {"cancelled", "failed", "none"}, ROLLBACK_WAIT_S)
        self.path.unlink(missing_ok=True)

    async def resume_if_paused(self) -> None:
        with contextlib.suppress(DriverError):
            if (await self.monitor.execute("query-status")).get("status") in _PAUSED:
                await cont(self.monitor)

    def close(self) -> None:
        self._stop_reporter()
        self._events.close()

    def _stop_reporter(self) -> None:
        if self._reporter is not None:
            self._reporter.cancel()
            self._reporter = None

    async def _report(self) -> None:
        while True:
            with contextlib.suppress(DriverError):
                ram = (await self.monitor.execute("query-migrate")).get("ram") or {}
                total = int(ram.get("total", 0))
                if total:
                    self.progress(min(int(ram.get("transferred", 0)), total), total)
            await asyncio.sleep(PROGRESS_S)

    async def _last_stop(self) -> float | None:
        """The timestamp of the latest STOP seen so far (the switch-over's)."""
        assert self._runstate is not None
        stopped: float | None = None
        while True:
            try:
                event = await self._runstate.next(0.0)
            except (TimeoutError, EventsMissed):
                return stopped
            if event.get("event") == "STOP":
                stopped = _event_time(event)

    async def _next(self, name: str) -> dict[str, Any]:
        assert self._runstate is not None
        return await self._runstate.wait(lambda e: e.get("event") == name, ROLLBACK_WAIT_S)


async def load(monitor: VmMonitor, path: Path, progress: ProgressFn) -> None:
    """Feed the memory file into a QEMU waiting with `-incoming defer` and wait until it is loaded."""
    size = path.stat().st_size
    progress(0, size)
    await monitor.execute("migrate-set-capabilities", {"capabilities": [{"capability": "events", "state": True}]})
    await _pass_file(monitor, path, os.O_RDONLY, LOAD_FD)
    await monitor.execute("migrate-incoming", {"uri": f"fd:{LOAD_FD}"})
    # The incoming side may still say "none" just after migrate-incoming (its coroutine not yet started),
    # which _wait_migration takes for an ended migration: wait for it to leave "none" first.
    for _ in range(100):
        info: dict[str, Any] = await monitor.execute("query-migrate")
        if str(info.get("status", "none")) != "none":
            break
        await asyncio.sleep(0.05)
    await _wait_migration(monitor, {"completed"}, SAVE_TIMEOUT_S)
    progress(size, size)
