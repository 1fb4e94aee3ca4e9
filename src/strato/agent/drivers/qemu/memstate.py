"""A running VM's memory written live to a file, and a VM started again from such a file.

The save is a migration into `exec:cat > <file>` (QEMU 7.2 has no `file:` URI) with
`pause-before-switchover`: RAM is copied while the guest runs, QEMU then stops the guest and waits at
`pre-switchover`, which is where a snapshot freezes the disks; `migrate-continue` writes the last dirty
pages and the device state, and the migration ends `completed` with the guest paused (QEMU inactivates
the images at the end of a migration; `cont` activates them again). The guest's pause is measured from
QEMU's own STOP and RESUME event timestamps.

The restore is an incoming migration from `exec:cat <file>` into a QEMU started with `-incoming defer
-S`, then `cont`: the guest runs on from the saved instant without booting.
"""

from __future__ import annotations

import asyncio
import contextlib
import shlex
from pathlib import Path
from typing import Any

from strato.agent.drivers.base import DriverError, ProgressFn
from strato.agent.drivers.qemu.migration import DOWNTIME_LIMIT_MS, UNLIMITED_BANDWIDTH, _wait_migration
from strato.agent.drivers.qemu.monitor import RUN_STATE_EVENTS, EventsMissed, Subscription, VmMonitor
from strato.protocol.messages import LayerInfo

SAVE_TIMEOUT_S = 3600.0
ROLLBACK_WAIT_S = 15.0
PROGRESS_S = 0.2
MEMORY_FORMAT = "vmstate"
"""LayerInfo.format of a memory file: QEMU's migration stream, not a disk image."""
_PAUSED = {"paused", "finish-migrate", "postmigrate", "pre-switchover"}


def _event_time(event: dict[str, Any]) -> float:
    stamp = event.get("timestamp") or {}
    return float(stamp.get("seconds", 0)) + float(stamp.get("microseconds", 0)) / 1e6


def file_info(name: str, path: Path) -> LayerInfo:
    st = path.stat()
    return LayerInfo(name=name, format=MEMORY_FORMAT, virtual_size=st.st_size, physical_size=st.st_blocks * 512)


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
            "migrate-set-parameters", {"downtime-limit": DOWNTIME_LIMIT_MS, "max-bandwidth": UNLIMITED_BANDWIDTH}
        )
        self.started = True
        await self.monitor.execute("migrate", {"uri": f"exec:cat > {shlex.quote(str(self.path))}"})
        self._reporter = asyncio.get_running_loop().create_task(self._report(), name="memsave-progress")
        await _wait_migration(self.monitor, {"pre-switchover"}, SAVE_TIMEOUT_S)
        self.stopped_at = await self._last_stop()

    async def finish(self) -> int:
        """Write the last pass and the device state; the guest stays paused. Returns the bytes sent."""
        await self.monitor.execute("migrate-continue", {"state": "pre-switchover"})
        info = await _wait_migration(self.monitor, {"completed"}, SAVE_TIMEOUT_S)
        self._stop_reporter()
        sent = int((info.get("ram") or {}).get("transferred", 0))
        self.progress(sent, sent)
        return sent

    async def resume(self) -> float:
        """`cont` after the save; the guest's pause in ms, from QEMU's STOP to RESUME timestamps."""
        await self.monitor.execute("cont")
        resumed = await self._next("RESUME")
        return max(0.0, (_event_time(resumed) - (self.stopped_at or _event_time(resumed))) * 1000)

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
                await self.monitor.execute("cont")

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
    await monitor.execute("migrate-incoming", {"uri": f"exec:cat {shlex.quote(str(path))}"})
    # The incoming side may still say "none" just after migrate-incoming (its coroutine not yet started),
    # which _wait_migration takes for an ended migration: wait for it to leave "none" first.
    for _ in range(100):
        info: dict[str, Any] = await monitor.execute("query-migrate")
        if str(info.get("status", "none")) != "none":
            break
        await asyncio.sleep(0.05)
    await _wait_migration(monitor, {"completed"}, SAVE_TIMEOUT_S)
    progress(size, size)
