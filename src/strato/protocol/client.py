"""Synchronous client of the agent protocol, used by the server's services from worker threads.

One `AgentClient` per host keeps a pooled `httpx.Client`; it may be shared by threads. Failures come
back as exceptions carrying the agent's typed `ErrorCode`, or as `AgentUnreachable` when no answer came.
"""

from __future__ import annotations

import contextlib
import functools
import ssl
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar, cast

import httpx
from pydantic import BaseModel, ValidationError

from strato.protocol.answers import HealthReport
from strato.protocol.messages import (
    AgentCommand,
    AgentError,
    Command,
    CommandEnvelope,
    ErrorCode,
    TaskReport,
    TaskStarted,
    TaskState,
)

A = TypeVar("A", bound=BaseModel)

ProgressCallback = Callable[[int, int], None]
PhaseCallback = Callable[[str], None]


class AgentClientError(Exception):
    """Base of everything the agent client raises."""


class AgentCallError(AgentClientError):
    """The agent answered with a typed error (`status` is None when a long task failed)."""

    def __init__(self, code: ErrorCode, message: str, status: int | None = None) -> None:
        super().__init__(f"{code.value}: {message}")
        self.code = code
        self.message = message
        self.status = status


class AgentUnreachable(AgentClientError):
    """No answer: connection refused or reset, DNS failure, or timeout. The command may or may not
    have run, so callers treat it as unknown and ask the agent for ground truth later."""


@functools.cache
def _tls_context() -> ssl.SSLContext:
    """httpx's default verifying TLS context, built once for every client: httpx builds one per client
    otherwise (loading the CA bundle, about 17 ms of CPU), which the first monitor round over 1,000 hosts
    paid 1,000 times."""
    return httpx.create_ssl_context()


class AgentClient:
    """Typed calls to one agent over HTTP with its bearer token."""

    def __init__(self, base_url: str, token: str, timeout: float = 30.0, connect_timeout: float = 5.0) -> None:
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        self._connect_timeout = min(timeout, connect_timeout)
        self._http = httpx.Client(
            base_url=self.base_url,
            headers={"Authorization": f"Bearer {token}"},
            timeout=httpx.Timeout(timeout, connect=min(timeout, connect_timeout)),
            limits=httpx.Limits(max_connections=20, max_keepalive_connections=10, keepalive_expiry=2.0),
            verify=_tls_context(),
        )

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> AgentClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- transport -----------------------------------------------------------------------------------

    def _request(self, method: str, path: str, json: Any = None, timeout: float | None = None) -> httpx.Response:
        try:
            if timeout is None:
                response = self._http.request(method, path, json=json)
            else:
                limits = httpx.Timeout(timeout, connect=self._connect_timeout)
                response = self._http.request(method, path, json=json, timeout=limits)
        except httpx.TimeoutException as exc:
            raise AgentUnreachable(f"agent {self.base_url} timed out on {method} {path}: {exc}") from exc
        except httpx.TransportError as exc:
            raise AgentUnreachable(f"agent {self.base_url} unreachable: {exc}") from exc
        if response.status_code >= 400:
            raise self._error(response)
        return response

    @staticmethod
    def _error(response: httpx.Response) -> AgentCallError:
        try:
            error = AgentError.model_validate(response.json())
        except (ValueError, ValidationError):
            text = response.text[:300]
            return AgentCallError(ErrorCode.INTERNAL, f"HTTP {response.status_code}: {text}", response.status_code)
        return AgentCallError(error.code, error.message, response.status_code)

    @staticmethod
    def _parse(model: type[BaseModel], response: httpx.Response) -> Any:
        try:
            return model.model_validate(response.json())
        except (ValueError, ValidationError) as exc:
            raise AgentCallError(ErrorCode.INTERNAL, f"unreadable answer from agent: {exc}") from exc

    # --- commands ------------------------------------------------------------------------------------

    def call(self, command: AgentCommand[A]) -> A:
        """Run a command and return its typed answer (the model its declaration names); long-running
        ones are started and waited for. A command the agent may take long to answer is waited for as
        long as it declares (`answer_within`), never less than this client's timeout."""
        if command.declared.long_running:
            return self.run_long(command)
        allowed = command.answer_within()
        timeout = None if allowed is None or allowed <= self.timeout else allowed
        response = self._request("POST", "/v1/command", json=self._envelope(command), timeout=timeout)
        result: A = self._parse(command.answer_model, response)
        return result

    @staticmethod
    def _envelope(command: Command) -> dict[str, Any]:
        return CommandEnvelope(command=command).model_dump(mode="json")

    def start_task(self, command: Command) -> str:
        """Start a long-running command and return its task id."""
        response = self._request("POST", "/v1/command", json=self._envelope(command))
        started: TaskStarted = self._parse(TaskStarted, response)
        return started.task_id

    def task(self, task_id: str) -> TaskReport:
        report: TaskReport = self._parse(TaskReport, self._request("GET", f"/v1/tasks/{task_id}"))
        return report

    def cancel_task(self, task_id: str) -> TaskReport:
        report: TaskReport = self._parse(TaskReport, self._request("DELETE", f"/v1/tasks/{task_id}"))
        return report

    def run_long(
        self,
        command: AgentCommand[A],
        on_progress: ProgressCallback | None = None,
        poll_interval: float = 0.1,
        cancel_event: threading.Event | None = None,
        on_phase: PhaseCallback | None = None,
    ) -> A:
        """Start a long-running command and poll it to the end, reporting (done, total) as it changes,
        and the task's phase text (`on_phase`) when the agent names a new one; `on_phase` runs before
        `on_progress` so that a progress report carries the phase it belongs to.

        When `cancel_event` is set, the remote task is cancelled and AgentCallError(CANCELLED) raised; when
        `on_progress` raises, the remote task is cancelled and the exception goes on."""
        task_id = self.start_task(command)
        last: tuple[int, int] | None = None
        last_phase: str | None = None
        while True:
            try:
                report = self.task(task_id)
            except AgentCallError as exc:
                if exc.status != 404:
                    raise
                raise AgentUnreachable(
                    f"task {task_id} ({command.type}) vanished from {self.base_url}: the agent restarted; "
                    "its outcome is unknown"
                ) from exc
            current = (report.progress_done, report.progress_total)
            new_phase = report.phase if report.phase and report.phase != last_phase else None
            last_phase = report.phase or last_phase
            if on_phase is not None and new_phase is not None:
                on_phase(new_phase)
                last = None  # report the progress again, now with its phase
            if on_progress is not None and current != last and report.progress_total > 0:
                try:
                    on_progress(*current)
                except BaseException:
                    # The caller gave up (e.g. its job was cancelled): the agent must stop too, or it
                    # would go on writing a file that the caller's clean-up has already removed.
                    with contextlib.suppress(AgentClientError):
                        self.cancel_task(task_id)
                    raise
            last = current
            if report.state != TaskState.RUNNING:
                return self._outcome(command, report)
            if cancel_event is not None and cancel_event.wait(poll_interval):
                final = self.cancel_task(task_id)
                if final.state == TaskState.SUCCEEDED:
                    return self._outcome(command, final)
                raise AgentCallError(ErrorCode.CANCELLED, f"{command.type} cancelled (task {task_id})")
            if cancel_event is None:
                time.sleep(poll_interval)

    def _outcome(self, command: AgentCommand[A], report: TaskReport) -> A:
        if report.state == TaskState.SUCCEEDED:
            try:
                return cast(A, command.answer_model.model_validate(report.answer or {}))
            except ValidationError as exc:
                raise AgentCallError(ErrorCode.INTERNAL, f"unreadable task answer: {exc}") from exc
        if report.error is not None:
            raise AgentCallError(report.error.code, report.error.message)
        code = ErrorCode.CANCELLED if report.state == TaskState.CANCELLED else ErrorCode.INTERNAL
        raise AgentCallError(code, f"task {report.task_id} ended {report.state.value}")

    def health(self) -> HealthReport:
        """Checks the agent serves and the token is right (raises otherwise)."""
        report: HealthReport = self._parse(HealthReport, self._request("GET", "/v1/health"))
        return report
