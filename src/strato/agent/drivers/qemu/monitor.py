"""One long-lived QMP connection per running VM, with its events routed to subscribers.

QEMU's monitor serves one client at a time, and a long block job or migration reports its progress
only through events; so the agent holds one connection per VM for the life of its QEMU and lets any
number of callers use it at once (qemu.qmp pipelines their commands, each with its own timeout).

Events are never queued for nobody: a caller that wants one subscribes *before* issuing the command
that causes it, and the subscription holds what arrives until the caller reads it. When the
connection breaks while QEMU lives (or a subscription overflows), the subscription says so
(`EventsMissed`), so the caller re-reads the state (e.g. `query-jobs`) instead of waiting forever.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from qemu.qmp import EventListener

from strato.agent.drivers.qemu.qmp import CALL_TIMEOUT_S, CONNECT_TIMEOUT_S, QmpSession, QmpUnavailable

log = logging.getLogger("strato.agent.qemu.monitor")

Event = dict[str, Any]
EventMatch = Callable[[Event], bool]

RECONNECT_MIN_S = 0.05
RECONNECT_MAX_S = 1.0
SUBSCRIPTION_LIMIT = 1000

JOB_EVENTS = frozenset(
    {"JOB_STATUS_CHANGE", "BLOCK_JOB_READY", "BLOCK_JOB_COMPLETED", "BLOCK_JOB_ERROR", "BLOCK_JOB_CANCELLED"}
)
"""What a block job reports; JOB_STATUS_CHANGE names the job in `id`, the BLOCK_JOB_* in `device`."""
MIGRATION_EVENTS = frozenset({"MIGRATION", "MIGRATION_PASS"})
RUN_STATE_EVENTS = frozenset({"STOP", "RESUME", "SHUTDOWN"})


class EventsMissed(Exception):
    """The connection was re-established (or the subscription overflowed): events may have been
    missed, so re-read the state from QEMU before waiting again."""


class MonitorClosed(QmpUnavailable):
    """QEMU has exited (or the agent closed the monitor): no more events will come."""


def job_match(job_id: str) -> EventMatch:
    """Events of one job: JOB_STATUS_CHANGE by `id`, BLOCK_JOB_* by `device` (the job id for jobs
    started with a `job-id`)."""

    def match(event: Event) -> bool:
        data = event.get("data") or {}
        return data.get("id") == job_id or data.get("device") == job_id

    return match


class Subscription:
    """The events of some names (and an optional filter) from the moment it was made until closed."""

    def __init__(self, names: frozenset[str], match: EventMatch | None, limit: int = SUBSCRIPTION_LIMIT) -> None:
        self.names = names
        self.match = match
        self.limit = limit
        self._queue: deque[Event] = deque()
        self._missed = False
        self._closed = False
        self._wakeup = asyncio.Event()

    def offer(self, event: Event) -> None:
        if self._closed or (self.names and event.get("event") not in self.names):
            return
        if self.match is not None and not self.match(event):
            return
        if len(self._queue) >= self.limit:
            self._queue.popleft()
            self._missed = True
        self._queue.append(event)
        self._wakeup.set()

    def missed(self) -> None:
        self._missed = True
        self._wakeup.set()

    def close(self) -> None:
        self._closed = True
        self._wakeup.set()

    async def next(self, timeout: float | None = None) -> Event:
        """The next event; `EventsMissed` first if some may have been lost, `MonitorClosed` once
        QEMU is gone, TimeoutError after `timeout` seconds."""
        async with asyncio.timeout(timeout):
            while True:
                if self._missed:
                    self._missed = False
                    raise EventsMissed()
                if self._queue:
                    return self._queue.popleft()
                if self._closed:
                    raise MonitorClosed("the VM's monitor is closed (QEMU exited)")
                self._wakeup.clear()
                await self._wakeup.wait()

    async def wait(self, match: EventMatch, timeout: float | None = None) -> Event:
        """The first event for which `match` is true (others are read and dropped)."""
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        while True:
            left = None if deadline is None else max(0.0, deadline - loop.time())
            event = await self.next(left)
            if match(event):
                return event


class _Router(EventListener):
    """Registered on each connection: hands every event to the monitor at once, queues nothing."""

    def __init__(self, monitor: VmMonitor) -> None:
        super().__init__()
        self._monitor = monitor

    async def put(self, event: Any) -> None:
        self._monitor._route(dict(event))


class VmMonitor:
    """The QMP connection of one QEMU process (by pid): connects at once, reconnects while the
    process lives, ends when it exits or on `close()`."""

    def __init__(
        self,
        name: str,
        socket_path: Path,
        pid: int,
        alive: Callable[[], bool],
        call_timeout: float = CALL_TIMEOUT_S,
    ) -> None:
        self.name = name
        self.socket_path = socket_path
        self.pid = pid
        self.call_timeout = call_timeout
        self.connections = 0
        self.paused: bool | None = None
        """From STOP/RESUME since connecting (None: no such event seen yet)."""
        self.shutdown: Event | None = None
        """The SHUTDOWN event, once QEMU announced it is going down."""
        self._alive = alive
        self._session: QmpSession | None = None
        self._subscriptions: set[Subscription] = set()
        self._change = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closed = False

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._supervise(), name=f"qmp-{self.name}")

    @property
    def closed(self) -> bool:
        return self._closed or (self._task is not None and self._task.done())

    @property
    def connected(self) -> bool:
        return self._session is not None and self._session.connected

    # --- commands --------------------------------------------------------------------------------

    async def execute(
        self, command: str, arguments: dict[str, object] | None = None, timeout: float | None = None
    ) -> Any:
        """Run one command on the shared connection; any number may be in flight at once."""
        budget = self.call_timeout if timeout is None else timeout
        loop = asyncio.get_running_loop()
        deadline = loop.time() + budget
        session = await self._wait_session(min(budget, CONNECT_TIMEOUT_S), command)
        return await session.execute(command, arguments, timeout=max(0.0, deadline - loop.time()))

    async def pass_fd(self, fd: int, name: str) -> None:
        """Give QEMU a file descriptor named `name` on this connection (see QmpSession.pass_fd)."""
        session = await self._wait_session(CONNECT_TIMEOUT_S, "getfd")
        await session.pass_fd(fd, name)

    async def _wait_session(self, timeout: float, command: str) -> QmpSession:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            if self._session is not None and self._session.connected:
                return self._session
            if self.closed:
                raise MonitorClosed(f"{command}: VM {self.name} has no monitor (QEMU exited)")
            change = self._change
            try:
                async with asyncio.timeout(max(0.0, deadline - loop.time())):
                    await change.wait()
            except TimeoutError:
                raise QmpUnavailable(f"{command}: cannot connect to the monitor of VM {self.name}") from None

    # --- events ----------------------------------------------------------------------------------

    @contextlib.contextmanager
    def subscribe(self, names: Iterable[str], match: EventMatch | None = None) -> Iterator[Subscription]:
        """Hold events of `names` matching `match` from now until the block ends: enter it before
        issuing the command whose events you will wait for."""
        sub = Subscription(frozenset(names), match)
        if self.closed:
            sub.close()
        self._subscriptions.add(sub)
        try:
            yield sub
        finally:
            self._subscriptions.discard(sub)

    def _route(self, event: Event) -> None:
        name = event.get("event")
        if name == "STOP":
            self.paused = True
        elif name == "RESUME":
            self.paused = False
        elif name == "SHUTDOWN":
            self.shutdown = event
        log.debug("VM %s: event %s %s", self.name, name, event.get("data"))
        for sub in list(self._subscriptions):
            sub.offer(event)

    # --- connection ------------------------------------------------------------------------------

    def _changed(self) -> None:
        self._change.set()
        self._change = asyncio.Event()

    async def _supervise(self) -> None:
        delay = RECONNECT_MIN_S
        try:
            while not self._closed and self._alive():
                session = QmpSession(self.socket_path, name=f"strato-{self.name}", listener=_Router(self))
                try:
                    await session.connect(CONNECT_TIMEOUT_S)
                except QmpUnavailable as exc:
                    log.debug("VM %s: monitor not reachable yet: %s", self.name, exc.message)
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, RECONNECT_MAX_S)
                    continue
                delay = RECONNECT_MIN_S
                self.connections += 1
                if self.connections > 1:
                    log.info("VM %s: monitor reconnected", self.name)
                    for sub in list(self._subscriptions):
                        sub.missed()
                self._session = session
                self._changed()
                try:
                    await session.wait_disconnected()
                finally:
                    self._session = None
                    self._changed()
                    await session.disconnect()
        finally:
            self._closed = True
            self._session = None
            for sub in list(self._subscriptions):
                sub.close()
            self._changed()

    def abandon(self) -> None:
        """Stop watching this QEMU without waiting (the supervisor disconnects as it ends)."""
        self._closed = True
        if self._task is not None:
            self._task.cancel()
        for sub in list(self._subscriptions):
            sub.close()
        self._changed()

    async def close(self) -> None:
        """Stop watching this QEMU (it keeps running); waiting callers get MonitorClosed."""
        self.abandon()
        if self._task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
