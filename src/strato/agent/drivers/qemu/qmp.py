"""A thin wrapper around `qemu.qmp.QMPClient`: timeouts on every call, no unbounded event queue.

`QmpSession` is one connection; the driver holds one per running VM through `monitor.VmMonitor`,
which reconnects it and routes its events. `qmp_execute` is a one-shot form for tools and tests
that talk to a QEMU no agent is attached to (QEMU's monitor serves one client at a time).
"""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path
from types import TracebackType
from typing import Any

from qemu.qmp import ConnectError, EventListener, ExecuteError, QMPClient, Runstate
from qemu.qmp.qmp_client import NegotiationError

from strato.agent.drivers.base import DriverError
from strato.protocol.messages import ErrorCode

CONNECT_TIMEOUT_S = 5.0
CALL_TIMEOUT_S = 10.0
NEGOTIATION_ATTEMPTS = 3
_DISCONNECTING: set[asyncio.Task[None]] = set()
"""Disconnects in progress, held so that none is garbage-collected before it ends."""


class QmpError(DriverError):
    """QEMU answered a command with an error (error class kept for callers that care)."""

    def __init__(self, command: str, error_class: str, message: str) -> None:
        # QEMU's image locking: another QEMU (or qemu-img) has the image open for writing.
        locked = "Failed to get" in message and "lock" in message
        super().__init__(ErrorCode.INVALID_STATE if locked else ErrorCode.INTERNAL, f"{command}: {message}")
        self.error_class = error_class


class QmpUnavailable(DriverError):
    """The monitor could not be reached or went away (QEMU exited or hangs)."""

    def __init__(self, message: str) -> None:
        super().__init__(ErrorCode.INTERNAL, message)


class QmpSession:
    """One connection to a QEMU monitor socket."""

    def __init__(
        self,
        socket_path: Path,
        name: str = "strato",
        timeout: float = CALL_TIMEOUT_S,
        listener: EventListener | None = None,
    ) -> None:
        self.socket_path = socket_path
        self.timeout = timeout
        self.name = name
        self.listener = listener
        self.client: Any = self._new_client()

    def _new_client(self) -> Any:
        client: Any = QMPClient(self.name)
        # The default all-events listener queues every event forever; it cannot be removed through
        # the public API, so make it accept nothing. Events go only to `listener` (if given), which
        # is registered before connecting so no event of the session is missed.
        client.events.event_filter = lambda _event: False
        if self.listener is not None:
            client.register_listener(self.listener)
        return client

    @property
    def connected(self) -> bool:
        return bool(self.client.runstate == Runstate.RUNNING)

    async def wait_disconnected(self) -> None:
        """Return once the connection has broken (QEMU exited, or closed the socket)."""
        while self.client.runstate == Runstate.RUNNING:
            await self.client.runstate_changed()

    async def connect(self, timeout: float = CONNECT_TIMEOUT_S) -> None:
        """Connect and negotiate. QEMU runs `qmp_capabilities` in its main loop and may emit an event
        (RESET, DEVICE_DELETED...) between switching the session to command mode and answering, and
        qemu.qmp then takes the event for the answer and fails the negotiation. Nothing has run yet
        at that point, so the connection is simply retried."""
        for attempt in range(NEGOTIATION_ATTEMPTS):
            try:
                await self._connect_once(timeout)
                return
            except QmpUnavailable as exc:
                if not isinstance(exc.__cause__, ConnectError) or not isinstance(exc.__cause__.exc, NegotiationError):
                    raise
                if attempt == NEGOTIATION_ATTEMPTS - 1:
                    raise
                self.client = self._new_client()
                await asyncio.sleep(0.05)

    async def _connect_once(self, timeout: float) -> None:
        try:
            await asyncio.wait_for(self.client.connect(str(self.socket_path)), timeout)
        except (TimeoutError, OSError, EOFError) as exc:
            await self.disconnect()
            raise QmpUnavailable(f"cannot connect to {self.socket_path}: {exc!r}") from exc
        except Exception as exc:  # qemu.qmp wraps failures in ConnectError
            await self.disconnect()
            raise QmpUnavailable(f"cannot connect to {self.socket_path}: {exc}") from exc

    async def execute(
        self, command: str, arguments: dict[str, object] | None = None, timeout: float | None = None
    ) -> Any:
        """Run one command; QMP errors become QmpError, lost connections QmpUnavailable."""
        try:
            return await asyncio.wait_for(
                self.client.execute(command, arguments), self.timeout if timeout is None else timeout
            )
        except ExecuteError as exc:
            raise QmpError(command, exc.error_class, str(exc)) from exc
        except TimeoutError as exc:
            raise QmpUnavailable(f"{command}: no answer from QEMU") from exc
        except Exception as exc:
            raise QmpUnavailable(f"{command}: {exc!r}") from exc

    async def pass_fd(self, fd: int, name: str) -> None:
        """Hand QEMU a file descriptor (SCM_RIGHTS) and name it (`getfd`), e.g. for an `fd:` migration
        URI; the caller keeps and closes its own copy."""
        try:
            self.client.send_fd_scm(fd)
        except Exception as exc:
            raise QmpUnavailable(f"getfd: cannot pass a file descriptor: {exc!r}") from exc
        await self.execute("getfd", {"fdname": name})

    async def disconnect(self) -> None:
        """Always safe to call; errors of a connection that already broke are expected. Runs to its
        end even if the caller is cancelled: qemu.qmp interrupted mid-disconnect leaves its reader
        task's error unretrieved (asyncio then reports it as an unhandled exception)."""
        task = asyncio.get_running_loop().create_task(self._disconnect())
        _DISCONNECTING.add(task)
        task.add_done_callback(_DISCONNECTING.discard)
        # Bounded for the caller (a hung QEMU may never let the writer flush); the task goes on.
        await asyncio.wait({task}, timeout=CONNECT_TIMEOUT_S)

    async def _disconnect(self) -> None:
        with contextlib.suppress(Exception):
            await self.client.disconnect()

    async def __aenter__(self) -> QmpSession:
        await self.connect()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.disconnect()


async def qmp_execute(
    socket_path: Path,
    command: str,
    arguments: dict[str, object] | None = None,
    timeout: float = CALL_TIMEOUT_S,
) -> Any:
    """Connect, run one command, disconnect."""
    async with QmpSession(socket_path, timeout=timeout) as session:
        return await session.execute(command, arguments)
