"""The operation unit on its own: steps recorded as they pass, a failed step undone with everything done
before it (the failing step included), a worker stopped after any step recovered from the step log (undone
before the commit point, finished after it), and the rules run at the request and again at the start."""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, ClassVar

import pytest
from pydantic import BaseModel
from sqlalchemy.orm import Session

from strato.db import migrate
from strato.db.engine import Database, sqlite_url
from strato.db.models import Job
from strato.db.models.jobs import JOB_FAILED, JOB_SUCCEEDED
from strato.engine import queue
from strato.engine.faults import FAULT_FILE_ENV
from strato.engine.jobkinds import JobResult
from strato.engine.operation import FinishForward, Operation, Step
from strato.engine.runner import JobRunner
from strato.errors import InvalidState


class MakeFiles(BaseModel):
    directory: str
    count: int
    fail_at: int | None = None


class _FileOp(Operation[MakeFiles]):
    """Makes `count` files, then commits ("publish"), then writes a marker: a stand-in for an operation
    that makes files on a pool, switches the database, then tidies up."""

    params_model = MakeFiles
    cmd = "testMakeFiles"

    @classmethod
    def resources(cls, params: MakeFiles) -> list[str]:
        return [f"dir:{params.directory}"]

    @classmethod
    def check(cls, session: Session, params: MakeFiles) -> None:
        if (Path(params.directory) / "locked").exists():
            raise InvalidState(f"Directory {params.directory} is locked")

    def steps(self) -> Sequence[Step]:
        d = Path(self.params.directory)
        out = [Step(f"file {n}", self._maker(d / f"f{n}", n), undo=self._remover(d / f"f{n}"))
               for n in range(self.params.count)]  # fmt: skip
        out.append(Step("publish", lambda: self._touch(d / "published"), commit=True))
        out.append(Step("marker", lambda: self._touch(d / "marker")))
        return out

    def _maker(self, path: Path, n: int) -> Any:
        def run() -> dict[str, Any]:
            path.write_text("x")
            if n == self.params.fail_at:
                raise InvalidState(f"file {n} failed")
            return {"made": path.name}

        return run

    @staticmethod
    def _remover(path: Path) -> Any:
        return lambda: path.unlink(missing_ok=True)

    @staticmethod
    def _touch(path: Path) -> None:
        path.write_text("y")

    def result(self) -> JobResult:
        return {"success": True, "first": self.output("file 0").get("made")}

    @classmethod
    def failed(cls, session: Session, params: MakeFiles) -> None:
        (Path(params.directory) / "failed").write_text("z")


class FileOp(_FileOp):
    kind: ClassVar[str] = "test.files"


@pytest.fixture
def runner(tmp_path: Path) -> Iterator[JobRunner]:
    db = Database(sqlite_url(tmp_path))
    migrate.upgrade(db.engine)
    yield JobRunner(db, "test-server")
    db.dispose()


def _submit(runner: JobRunner, params: MakeFiles) -> int:
    with runner.db.session() as s:
        FileOp.check(s, params)
        job = queue.submit(s, kind=FileOp.kind, cmd=FileOp.cmd, params=params.model_dump(),
                           resources=FileOp.resources(params), account_id=None, user_id=None)  # fmt: skip
        claimed = queue.claim(s, "test-server", 1, False)
        assert [j.seq for j in claimed] == [job.seq]
        return job.seq


def _job(runner: JobRunner, seq: int) -> Job:
    with runner.db.session() as s:
        job = s.get(Job, seq)
        assert job is not None
        s.expunge(job)
        return job


def _files(d: Path) -> set[str]:
    return {p.name for p in d.iterdir()}


def test_steps_are_recorded_and_outputs_reach_the_result(runner: JobRunner, tmp_path: Path) -> None:
    d = tmp_path / "d"
    d.mkdir()
    seq = _submit(runner, MakeFiles(directory=str(d), count=2))
    runner.run_job(seq, recovering=False)
    job = _job(runner, seq)
    assert job.status == JOB_SUCCEEDED and job.result == {"success": True, "first": "f0"}
    assert [(e["name"], e["state"]) for e in job.steps if e["state"] == "done"] == [
        ("file 0", "done"), ("file 1", "done"), ("publish", "done"), ("marker", "done")]  # fmt: skip
    assert _files(d) == {"f0", "f1", "published", "marker"}


def test_a_failed_step_undoes_itself_and_every_step_before(runner: JobRunner, tmp_path: Path) -> None:
    d = tmp_path / "d"
    d.mkdir()
    seq = _submit(runner, MakeFiles(directory=str(d), count=3, fail_at=1))
    runner.run_job(seq, recovering=False)
    job = _job(runner, seq)
    assert job.status == JOB_FAILED and job.result is not None and "file 1 failed" in job.result["errortext"]
    assert _files(d) == {"failed"}  # f1 was half made by the failing step: its undo removed it too
    assert ("file 0", "undone") in [(e["name"], e["state"]) for e in job.steps]


def test_the_rules_run_again_when_the_job_starts(runner: JobRunner, tmp_path: Path) -> None:
    d = tmp_path / "d"
    d.mkdir()
    seq = _submit(runner, MakeFiles(directory=str(d), count=1))
    (d / "locked").write_text("")  # changed between the request and the start
    runner.run_job(seq, recovering=False)
    job = _job(runner, seq)
    assert job.status == JOB_FAILED and job.result is not None
    assert job.result["errortext"] == f"Directory {d} is locked"
    assert _files(d) == {"locked", "failed"}


@pytest.mark.parametrize("step", ["file 0", "file 1", "publish", "marker"])
def test_a_worker_stopped_after_any_step_is_recovered_from_the_log(
    runner: JobRunner, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, step: str
) -> None:
    d = tmp_path / "d"
    d.mkdir()
    fault = tmp_path / "fault"
    fault.write_text(f"test.files {step}")
    monkeypatch.setenv(FAULT_FILE_ENV, str(fault))
    seq = _submit(runner, MakeFiles(directory=str(d), count=2))
    runner.run_job(seq, recovering=False)
    job = _job(runner, seq)
    assert fault.read_text() == ""  # it fired
    if step in ("publish", "marker"):  # past the commit point: finished forward, nothing run twice
        assert job.status == JOB_SUCCEEDED
        assert _files(d) == {"f0", "f1", "published", "marker"}
        runs = [e["name"] for e in job.steps if e["state"] == "running"]
        assert len(runs) == len(set(runs))
    else:  # before it: every step that had started is undone, the resources return to a stable state
        assert job.status == JOB_FAILED and job.result is not None
        assert "interrupted" in job.result["errortext"]
        assert _files(d) == {"failed"}


def test_fault_injection_is_off_without_the_variable(runner: JobRunner, tmp_path: Path) -> None:
    assert FAULT_FILE_ENV not in os.environ
    d = tmp_path / "d"
    d.mkdir()
    seq = _submit(runner, MakeFiles(directory=str(d), count=1))
    t = threading.Thread(target=runner.run_job, args=(seq, False))
    t.start()
    t.join(30)
    assert _job(runner, seq).status == JOB_SUCCEEDED


class _LostAnswerOp(_FileOp):
    """Its commit step happens but reports a failure (an agent's answer lost): its undo finds the
    published file and says so with FinishForward."""

    kind: ClassVar[str] = "test.files_lost_answer"

    def steps(self) -> Sequence[Step]:
        out = list(super().steps())
        out[-2] = Step("publish", self._publish, undo=self._unpublish, commit=True)
        return out

    def _publish(self) -> dict[str, Any]:
        self._touch(Path(self.params.directory) / "published")
        raise InvalidState("the answer was lost")

    def _unpublish(self) -> None:
        if (Path(self.params.directory) / "published").exists():
            raise FinishForward("it was published", {"published": True})


def _submit_lost(runner: JobRunner, d: Path) -> int:
    params = MakeFiles(directory=str(d), count=2)
    with runner.db.session() as s:
        job = queue.submit(s, kind=_LostAnswerOp.kind, cmd=_LostAnswerOp.cmd, params=params.model_dump(),
                           resources=_LostAnswerOp.resources(params), account_id=None, user_id=None)  # fmt: skip
        queue.claim(s, "test-server", 1, False)
        return job.seq


def test_an_undo_that_finds_its_step_done_finishes_forward(runner: JobRunner, tmp_path: Path) -> None:
    d = tmp_path / "d"
    d.mkdir()
    seq = _submit_lost(runner, d)
    runner.run_job(seq, recovering=False)
    job = _job(runner, seq)
    assert job.status == JOB_SUCCEEDED, job.result
    assert _files(d) == {"f0", "f1", "published", "marker"}  # nothing before the step was undone
    states = [(e["name"], e["state"]) for e in job.steps]
    assert ("publish", "done") in states and not any(state == "undone" for _, state in states)


def test_recovery_of_a_step_that_had_happened_finishes_forward(runner: JobRunner, tmp_path: Path) -> None:
    d = tmp_path / "d"
    d.mkdir()
    seq = _submit_lost(runner, d)
    for n in range(2):
        (d / f"f{n}").write_text("x")
    (d / "published").write_text("y")
    with runner.db.session() as s:  # the server died inside "publish", after it happened
        job = s.get(Job, seq)
        assert job is not None
        job.steps = [{"name": "file 0", "state": "done", "data": {"made": "f0"}},
                     {"name": "file 1", "state": "done", "data": {"made": "f1"}},
                     {"name": "publish", "state": "running"}]  # fmt: skip
    runner.run_job(seq, recovering=True)
    job = _job(runner, seq)
    assert job.status == JOB_SUCCEEDED, job.result
    assert job.result == {"success": True, "first": "f0"}
    assert _files(d) == {"f0", "f1", "published", "marker"}


def test_a_job_taken_over_meanwhile_is_finished_by_its_new_owner_only(runner: JobRunner, tmp_path: Path) -> None:
    """A server thought dead (a missed heartbeat) still runs its job while another takes it over: the first
    must not finish it (it would complete twice); the new owner runs it on and finishes it once."""
    d = tmp_path / "d"
    d.mkdir()
    seq = _submit(runner, MakeFiles(directory=str(d), count=2))
    with runner.db.session() as s:
        assert queue.take_over(s, seq, ["test-server"], "server-two")
    runner.run_job(seq, recovering=False)  # the old owner, not knowing
    job = _job(runner, seq)
    assert (job.status, job.owner, job.completed) == ("running", "server-two", None)
    JobRunner(runner.db, "server-two").run_job(seq, recovering=True)
    job = _job(runner, seq)
    assert job.status == JOB_SUCCEEDED and job.owner == "server-two"
    assert _files(d) == {"f0", "f1", "published", "marker"}
