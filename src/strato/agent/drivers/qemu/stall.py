"""Noticing a silently broken link between two hosts, and unblocking QEMU's sockets to it.

A peer that stops answering (packets dropped, no RST) leaves a TCP connection "established" until the
kernel's retransmission timeout, ~15 minutes by default; QEMU 7.2's NBD client and migration wait
that long, and its `keep-alive` socket option (a bare SO_KEEPALIVE with the host's 2-hour default
idle time, and no effect while data is unacknowledged) does not help. So the agent watches the bytes
moved itself: when they do not advance for `stall_seconds()` while progress is expected, the move
fails. Then QEMU's connections to the target are destroyed (`ss -K`, SOCK_DESTROY) before the
rollback, because on a dead link a force-cancelled mirror waits for its in-flight NBD writes and
`blockdev-del` of the NBD node blocks QEMU's main loop, both until that same timeout.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Awaitable, Callable
from typing import NoReturn, TypeVar

from strato.agent.drivers.base import DriverError
from strato.protocol.messages import ErrorCode

log = logging.getLogger("strato.agent.qemu.stall")

T = TypeVar("T")

STALL_S = 20.0
"""No byte moved for this long while some is expected: the link is taken as broken."""
STALL_ENV = "STRATO_LINK_STALL_S"
"""Overrides STALL_S (seconds), for tests."""
SAMPLE_S = 1.0
SS_TIMEOUT_S = 5.0

Sample = tuple[str | None, int]
"""(the stage in which bytes should be moving, or None when none need to; the bytes moved so far)."""


def stall_seconds() -> float:
    raw = os.environ.get(STALL_ENV, "")
    try:
        value = float(raw) if raw else STALL_S
    except ValueError:
        return STALL_S
    return value if value > 0 else STALL_S


def stall_message(seconds: float) -> str:
    return f"no data reached the target host for {seconds:g} s: the link between the hosts is probably broken"


class LinkStalled(DriverError):
    """The bytes of a host-to-host move stopped advancing."""

    def __init__(self, seconds: float) -> None:
        super().__init__(ErrorCode.INTERNAL, stall_message(seconds))


class StallClock:
    """Fails when the bytes moved have not advanced for `seconds` within one stage that expects
    progress; a new stage, or a moment in which none is expected, starts the count again."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self._stage: str | None = None
        self._moved = -1
        self._since = 0.0

    def observe(self, stage: str | None, moved: int, now: float) -> None:
        if stage is None:
            self._stage = None
            return
        if stage != self._stage or moved > self._moved:
            self._stage, self._moved, self._since = stage, moved, now
            return
        if now - self._since >= self.seconds:
            raise LinkStalled(self.seconds)


async def watch(sample: Callable[[], Awaitable[Sample]], seconds: float) -> NoReturn:
    """Sample every second until the bytes stall (raises LinkStalled). A sample that fails (QEMU's
    monitor busy or slow) counts as no progress."""
    clock = StallClock(seconds)
    while True:
        now = time.monotonic()
        try:
            stage, moved = await asyncio.wait_for(sample(), seconds)
        except (DriverError, TimeoutError) as exc:
            log.debug("stall watch: sample failed: %s", exc)
            clock.observe(clock._stage, clock._moved, now)
        else:
            clock.observe(stage, moved, now)
        await asyncio.sleep(SAMPLE_S)


async def until_stalled(aw: Awaitable[T], watcher: asyncio.Task[NoReturn]) -> T:
    """Await `aw`, unless the watcher reports a stall first: then `aw` is cancelled and the stall
    raised."""
    task = asyncio.ensure_future(aw)
    try:
        await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    except asyncio.CancelledError:
        task.cancel()
        await asyncio.wait({task})
        raise
    if task.done():
        return task.result()
    task.cancel()
    await asyncio.wait({task})
    watcher.result()  # raises the stall
    raise AssertionError("the stall watch ended without a stall")


async def break_connections(peers: list[tuple[str, int]]) -> None:
    """Destroy this host's TCP connections to each (host, port): what QEMU waits on there fails at
    once. Bounded; a failure (no `ss`, no CAP_NET_ADMIN) is logged, the caller's own bounded waits
    remain."""
    for host, port in peers:
        where = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        try:
            proc = await asyncio.create_subprocess_exec(
                "ss", "-K", "-tn", "dst", where,
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
            )  # fmt: skip
        except OSError as exc:
            log.warning("cannot break the connections to %s: %s", where, exc)
            return
        try:
            out, err = await asyncio.wait_for(proc.communicate(), SS_TIMEOUT_S)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()
            log.warning("ss -K dst %s did not answer within %g s", where, SS_TIMEOUT_S)
            continue
        killed = max(0, len(out.decode(errors="replace").strip().splitlines()) - 1)
        if proc.returncode != 0:
            log.warning("ss -K dst %s failed: %s", where, err.decode(errors="replace").strip())
        else:
            log.info("broke %d connection(s) to %s", killed, where)
