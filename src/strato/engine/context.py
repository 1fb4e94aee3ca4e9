"""What a running job sees: its parameters, a database, progress reporting, steps and cancellation."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from strato.db.base import utcnow
from strato.db.engine import Database
from strato.db.models import Job
from strato.engine import faults
from strato.errors import CloudError, ErrorCode


class JobCancelled(CloudError):
    code = ErrorCode.INTERNAL_ERROR


class JobContext:
    def __init__(self, db: Database, job: Job, recovering: bool = False) -> None:
        self.db = db
        self.job_id = job.id
        self.job_seq = job.seq
        self.kind = job.kind
        self.params: dict[str, Any] = dict(job.params or {})
        self.account_id = job.account_id
        self.user_id = job.user_id
        self.instance_id = job.instance_id
        self.recovering = recovering
        self.previous_steps: list[dict[str, Any]] = list(job.steps or [])
        self._undo: list[tuple[str, Callable[[], None]]] = []

    # --- progress and cancellation -----------------------------------------------------------------

    def progress(self, done: int, total: int, detail: dict[str, Any] | None = None) -> None:
        """Records progress (any unit; bytes for copies), and optionally its detail (parts adding up to
        it, a phase text: kept as given, shown by the job's view). Also the point where cancellation is
        seen."""
        with self.db.session() as s:
            job = s.get(Job, self.job_seq)
            if job is None:
                return
            job.progress_done, job.progress_total = max(0, done), max(0, total)
            if detail is not None:
                job.progress_detail = detail
            cancel = job.cancel_requested
        if cancel:
            raise JobCancelled("The job was cancelled")

    def part_progress(self, index: int, count: int) -> Callable[[int, int], None]:
        """A progress callback for part `index` of `count` equal parts of the job (e.g. one disk of several)."""

        def report(done: int, total: int) -> None:
            share = (done / total) if total else 0.0
            self.progress(int(1000 * (index + share) / max(count, 1)), 1000)

        return report

    def progress_detail(self) -> dict[str, Any]:
        """The detail last recorded (an operation restarted after a crash goes on from it)."""
        with self.db.session() as s:
            job = s.get(Job, self.job_seq)
            return dict(job.progress_detail or {}) if job is not None else {}

    def cancel_requested(self) -> bool:
        with self.db.session() as s:
            job = s.get(Job, self.job_seq)
            return bool(job and job.cancel_requested)

    # --- steps -------------------------------------------------------------------------------------

    def step_done(self, name: str) -> bool:
        """Whether an earlier run of this job (before a crash) completed the named step."""
        return any(st["name"] == name and st["state"] == "done" for st in self.previous_steps)

    @contextmanager
    def step(self, name: str, undo: Callable[[], None] | None = None) -> Iterator[None]:
        """A named step persisted in the job's step log; its undo runs if a later step fails."""
        self._log(name, "running")
        try:
            yield
        except BaseException:
            self._log(name, "failed")
            raise
        self._log(name, "done")
        if undo is not None:
            self._undo.append((name, undo))
        faults.after_step(self.kind, name)

    def keep_completed_steps(self) -> None:
        """What the job has done so far stands even if a later step fails: nothing to undo before here."""
        self._undo.clear()

    def compensate(self) -> None:
        """Runs the undo actions of the completed steps, newest first, each at most once."""
        while self._undo:
            name, undo = self._undo.pop()
            try:
                undo()
                self._log(name, "undone")
            except Exception as exc:  # compensation is best effort; the log says what stayed
                self._log(name, f"undo failed: {exc}")

    def record(self, name: str, state: str, data: dict[str, Any] | None = None) -> None:
        """Appends to the job's step log (what recovery reads): running, done (with the step's output),
        failed, undone, or the reason an undo failed."""
        entry: dict[str, Any] = {"name": name, "state": state, "at": utcnow().isoformat()}
        if data:
            entry["data"] = data
        with self.db.session() as s:
            job = s.get(Job, self.job_seq)
            if job is None:
                return
            job.steps = [*(job.steps or []), entry]

    def _log(self, name: str, state: str) -> None:
        self.record(name, state)
