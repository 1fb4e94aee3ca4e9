"""Operation units: one class per long operation.

An operation holds its typed parameters, its rules (`check`, written once and run both when the request
arrives and when the job starts under its locks), its named steps (each idempotent, recorded in the job's
step log as it passes, with the undo that takes it back) and how it ends after a failure (`failed`, the
stable state its resources return to).

Failure and crash are one code path. When a step fails, the steps done since the last commit point are
undone newest first, the failing step included (its undo must cope with a half-done step). When a server
dies and another (or the same one, restarted) takes the job over, it reads the step log: past a commit
point the operation goes forward from the first step not done (steps are idempotent); before it, every
step that started is undone, exactly as after a failure. Either way the undo asks the agents for ground
truth (removing a file that is not there is no error).
"""

from __future__ import annotations

import abc
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Generic, TypeVar

from pydantic import BaseModel
from sqlalchemy.orm import Session

from strato.db.models import Job
from strato.engine import faults
from strato.engine.context import JobContext
from strato.engine.jobkinds import KINDS, JobKind, JobResult
from strato.errors import CloudError, ErrorCode

log = logging.getLogger("strato.jobs")

P = TypeVar("P", bound=BaseModel)
StepData = dict[str, Any]


class OperationInterrupted(CloudError):
    """A job left by a server that died was rolled back from its step log."""

    code = ErrorCode.RESOURCE_UNAVAILABLE


class FinishForward(Exception):
    """Raised by an undo that finds its step happened after all (an agent finished it while the server
    died, or its answer was lost): the step counts as done with `data` as its output, and the
    operation goes forward from the step after it instead of being undone."""

    def __init__(self, why: str, data: StepData | None = None) -> None:
        super().__init__(why)
        self.data: StepData = dict(data or {})


@dataclass(frozen=True)
class Step:
    """One named, idempotent piece of an operation.

    `run` may return a small JSON-able dict, kept in the step log and readable by later steps (also after a
    restart) through `Operation.output`. `undo` takes the step back, also when it only half happened.
    A `commit` step is a point of no return: once it is done, a failure or a crash later on finishes the
    operation forward instead of undoing what came before it. An undo may raise `FinishForward` when
    it finds the step did happen: the operation then finishes forward from there."""

    name: str
    run: Callable[[], StepData | None]
    undo: Callable[[], None] | None = None
    commit: bool = False


class Operation(abc.ABC, Generic[P]):
    """The base of every long operation; subclasses are registered as job kinds by their `kind`."""

    kind: ClassVar[str]
    """The job kind stored with the job (registered once, here)."""
    cmd: ClassVar[str]
    """The API command shown for the job (`cmd` of queryAsyncJobResult)."""
    params_model: ClassVar[type[BaseModel]]
    event: ClassVar[str | None] = None
    """The audit event recorded when the job ends."""
    resumable: ClassVar[bool] = False
    """Recovery goes forward from the first step not done even before any commit step (for operations
    whose every step is safe to repeat and whose purpose is to finish: stop, delete, expunge)."""
    interrupted_text: ClassVar[str] = (
        "The operation was interrupted by a management server restart; what it had done was undone"
    )

    def __init__(self, job: JobContext, params: P) -> None:
        self.job = job
        self.params = params
        self.db = job.db
        self._outputs: dict[str, StepData] = {}

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "kind" in cls.__dict__:
            _register(cls)

    # --- what each operation declares ---------------------------------------------------------------

    @classmethod
    @abc.abstractmethod
    def resources(cls, params: P) -> list[str]:
        """The resources the job locks ("vm:<id>", "volume:<id>", ...): jobs sharing one run one at a time."""

    @classmethod
    def check(cls, session: Session, params: P) -> None:
        """The operation's rules: raise a CloudError when it cannot run. Runs at the request and again when
        the job starts under its locks, so both see the same rules (and answer the same error)."""

    @abc.abstractmethod
    def steps(self) -> Sequence[Step]:
        """The named steps in order; the list depends only on the parameters (it is rebuilt on recovery)."""

    @abc.abstractmethod
    def result(self) -> JobResult:
        """The job's result once every step is done."""

    @classmethod
    def failed(cls, session: Session, params: P) -> None:
        """Puts the resources in a stable state after a failed (undone) run, in the transaction that
        records the failure."""

    # --- for steps ------------------------------------------------------------------------------------

    def output(self, step: str) -> StepData:
        """What an earlier step returned (in this run, or in the run before a restart)."""
        return self._outputs.get(step, {})

    # --- running --------------------------------------------------------------------------------------

    def execute(self) -> JobResult:
        steps = list(self.steps())
        names = [s.name for s in steps]
        if len(set(names)) != len(names):
            raise RuntimeError(f"operation {self.kind} has two steps of one name: {names}")
        last = _last_states(self.job.previous_steps)
        self._outputs.update(_outputs(self.job.previous_steps))
        if not self.job.recovering:
            with self.db.session() as s:
                type(self).check(s, self.params)
            self._forward(steps, done=set())
            return self.result()
        done = {n for n, state in last.items() if state == "done"}
        commit_at = max((i for i, s in enumerate(steps) if s.commit and s.name in done), default=-1)
        if commit_at >= 0 or self.resumable:
            log.info("job %s (%s): recovering forward after %s", self.job.job_id, self.kind, sorted(done))
            self._forward(steps[commit_at + 1 :], done=done)
            return self.result()
        log.info("job %s (%s): recovering by rollback of %s", self.job.job_id, self.kind, sorted(last))
        resumed = self._undo([s for s in steps if s.name in last and last[s.name] != "undone"])
        if resumed is None:
            raise OperationInterrupted(self.interrupted_text)
        self._resume(steps, resumed)
        return self.result()

    def _forward(self, steps: list[Step], done: set[str], all_steps: list[Step] | None = None) -> None:
        everything = all_steps if all_steps is not None else steps
        undoable = [s for s in steps if s.name in done]
        for step in steps:
            if step.name in done:
                continue
            self.job.record(step.name, "running")
            try:
                data = step.run()
            except faults.WorkerStopped:
                raise
            except BaseException:
                self.job.record(step.name, "failed")
                resumed = self._undo([*undoable, step])
                if resumed is None:
                    raise
                self._resume(everything, resumed)
                return
            self._outputs[step.name] = data or {}
            self.job.record(step.name, "done", data)
            faults.after_step(self.kind, step.name)
            undoable = [] if step.commit else [*undoable, step]

    def _resume(self, steps: list[Step], resumed: Step) -> None:
        """Forward from the step after `resumed` (an undo found it done): every step before it is done;
        those after the last commit point stay undoable should a later step fail."""
        at = steps.index(resumed)
        start = 1 + max((i for i, s in enumerate(steps[:at]) if s.commit), default=-1)
        if resumed.commit:
            start = at + 1
        log.info("job %s (%s): step %s had happened; finishing forward", self.job.job_id, self.kind, resumed.name)
        self._forward(steps[start:], done={s.name for s in steps[: at + 1]}, all_steps=steps)

    def _undo(self, steps: list[Step]) -> Step | None:
        """Undoes the steps newest first; each undo is best effort and its outcome is logged. Stops at
        an undo raising FinishForward (its step recorded done) and answers that step."""
        for step in reversed(steps):
            if step.undo is None:
                continue
            try:
                step.undo()
                self.job.record(step.name, "undone")
            except faults.WorkerStopped:
                raise
            except FinishForward as forward:
                log.info("job %s (%s): undo of %s: %s", self.job.job_id, self.kind, step.name, forward)
                self._outputs[step.name] = forward.data
                self.job.record(step.name, "done", forward.data)
                return step
            except Exception as exc:
                log.exception("job %s (%s): undo of %s failed", self.job.job_id, self.kind, step.name)
                self.job.record(step.name, f"undo failed: {exc}")
        return None


def _last_states(log_entries: list[dict[str, Any]]) -> dict[str, str]:
    last: dict[str, str] = {}
    for entry in log_entries:
        last[entry["name"]] = entry["state"]
    return last


def _outputs(log_entries: list[dict[str, Any]]) -> dict[str, StepData]:
    return {e["name"]: dict(e.get("data") or {}) for e in log_entries if e["state"] == "done"}


def _register(cls: type[Operation[Any]]) -> None:
    if cls.kind in KINDS:
        raise RuntimeError(f"job kind {cls.kind} declared twice")

    def run(ctx: JobContext) -> JobResult:
        return cls(ctx, cls.params_model.model_validate(ctx.params)).execute()

    def on_fail(session: Session, job: Job) -> None:
        cls.failed(session, cls.params_model.model_validate(job.params or {}))

    KINDS[cls.kind] = JobKind(name=cls.kind, run=run, recover=run, on_fail=on_fail, event=cls.event)


def operation_for(kind: str) -> type[Operation[Any]] | None:
    """The operation class registered under a job kind (None for older plain job kinds)."""
    for sub in _all_subclasses(Operation):
        if sub.__dict__.get("kind") == kind:
            return sub
    return None


def _all_subclasses(cls: type[Any]) -> list[type[Any]]:
    out = []
    for sub in cls.__subclasses__():
        out.append(sub)
        out.extend(_all_subclasses(sub))
    return out
