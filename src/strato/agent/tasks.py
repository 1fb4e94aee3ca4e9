"""Long-running commands run as asyncio tasks the server polls; finished ones are kept a while."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from pydantic import BaseModel

from strato.agent.agentlog import get_logger
from strato.agent.drivers.base import DriverError, ProgressFn
from strato.agent.drivers.roles import set_phase_sink
from strato.protocol.messages import AgentError, ErrorCode, TaskReport, TaskState

log = get_logger("tasks")

TaskBody = Callable[[ProgressFn], Awaitable[BaseModel]]


@dataclass
class _Task:
    task_id: str
    command: str
    state: TaskState = TaskState.RUNNING
    done: int = 0
    total: int = 0
    phase: str | None = None
    answer: dict[str, object] | None = None
    error: AgentError | None = None
    finished_at: float | None = None
    handle: asyncio.Task[None] | None = field(default=None, repr=False)

    def report(self) -> TaskReport:
        return TaskReport(
            task_id=self.task_id,
            command=self.command,
            state=self.state,
            progress_done=self.done,
            progress_total=self.total,
            phase=self.phase,
            answer=self.answer,
            error=self.error,
        )


class TaskRegistry:
    """Runs task bodies, tracks progress and outcome, forgets finished tasks after `retention_s`
    or beyond the newest `max_finished`, so a long-lived agent does not grow without bound."""

    def __init__(self, retention_s: float = 3600.0, max_finished: int = 1000) -> None:
        self.retention_s = retention_s
        self.max_finished = max_finished
        self._tasks: OrderedDict[str, _Task] = OrderedDict()

    def start(self, command: str, body: TaskBody) -> str:
        """Schedule `body` on the running loop and return its task id at once."""
        self._prune()
        task = _Task(task_id=uuid.uuid4().hex, command=command)

        def progress(done: int, total: int) -> None:
            task.done, task.total = done, total

        task.handle = asyncio.get_running_loop().create_task(self._run(task, body, progress))
        self._tasks[task.task_id] = task
        log.info("task started", extra={"task_id": task.task_id, "command": command})
        return task.task_id

    async def _run(self, task: _Task, body: TaskBody, progress: ProgressFn) -> None:
        def phase(text: str) -> None:
            if text != task.phase:
                log.info("task phase", extra={"task_id": task.task_id, "command": task.command, "phase": text})
            task.phase = text

        set_phase_sink(phase)  # this asyncio task's own context: seen by the body and the tasks it starts
        try:
            answer = await body(progress)
        except asyncio.CancelledError:
            self._finish(task, TaskState.CANCELLED, error=AgentError(code=ErrorCode.CANCELLED, message="cancelled"))
            return
        except DriverError as exc:
            self._finish(task, TaskState.FAILED, error=AgentError(code=exc.code, message=exc.message))
            return
        except Exception as exc:
            log.exception("task crashed", extra={"task_id": task.task_id, "command": task.command})
            error = AgentError(code=ErrorCode.INTERNAL, message=f"{type(exc).__name__}: {exc}")
            self._finish(task, TaskState.FAILED, error=error)
            return
        self._finish(task, TaskState.SUCCEEDED, answer=answer.model_dump(mode="json"))

    def _finish(
        self,
        task: _Task,
        state: TaskState,
        answer: dict[str, object] | None = None,
        error: AgentError | None = None,
    ) -> None:
        task.state, task.answer, task.error = state, answer, error
        task.finished_at = time.monotonic()
        extra = {"task_id": task.task_id, "command": task.command, "state": state.value}
        if error is not None:
            extra["error"] = error.message
        log.info("task finished", extra=extra)

    def get(self, task_id: str) -> TaskReport | None:
        self._prune()
        task = self._tasks.get(task_id)
        return task.report() if task is not None else None

    async def cancel(self, task_id: str) -> TaskReport | None:
        """Cancel a running task and wait for it to unwind; a finished task is reported as is."""
        task = self._tasks.get(task_id)
        if task is None:
            return None
        if task.handle is not None and not task.handle.done():
            task.handle.cancel()
            await asyncio.wait([task.handle])
        return task.report()

    async def close(self) -> None:
        """Cancel whatever still runs (the agent is stopping)."""
        handles = [t.handle for t in self._tasks.values() if t.handle is not None and not t.handle.done()]
        for handle in handles:
            handle.cancel()
        if handles:
            await asyncio.wait(handles)

    def _prune(self) -> None:
        now = time.monotonic()
        finished = sorted((t.finished_at, t.task_id) for t in self._tasks.values() if t.finished_at is not None)
        keep_from = max(0, len(finished) - self.max_finished)
        for index, (finished_at, task_id) in enumerate(finished):
            if index < keep_from or now - finished_at > self.retention_s:
                del self._tasks[task_id]
