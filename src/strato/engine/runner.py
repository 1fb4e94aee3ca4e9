"""Job workers: each server claims runnable jobs, runs them in threads, and takes over the jobs of
servers that died (its own previous life included)."""

from __future__ import annotations

import logging
import threading
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta

from sqlalchemy import select
from sqlalchemy.orm import Session

from strato.db.base import as_utc, new_id, utcnow
from strato.db.engine import Database
from strato.db.models import Job, ServerNode
from strato.db.models.jobs import JOB_CANCELLED, JOB_FAILED, JOB_RUNNING, JOB_SUCCEEDED
from strato.engine import queue
from strato.engine.audit import record_event
from strato.engine.context import JobCancelled, JobContext
from strato.engine.faults import WorkerStopped
from strato.engine.jobkinds import JobResult, get_kind
from strato.errors import CloudError, ErrorCode

log = logging.getLogger("strato.jobs")


class JobRunner:
    def __init__(
        self,
        db: Database,
        server_id: str,
        workers: int = 4,
        poll_interval: float = 0.5,
        heartbeat_interval: float = 2.0,
        dead_after: float = 15.0,
    ) -> None:
        self.db = db
        self.server_id = server_id
        self.workers = workers
        self.poll_interval = poll_interval
        self.heartbeat_interval = heartbeat_interval
        self.dead_after = dead_after
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="job")
        self._busy = 0
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    # --- life cycle --------------------------------------------------------------------------------

    def start(self) -> None:
        with self.db.session() as s:
            node = s.get(ServerNode, self.server_id)
            if node is None:
                s.add(ServerNode(id=self.server_id))
            else:
                node.incarnation, node.started, node.heartbeat = new_id(), utcnow(), utcnow()
        # Jobs this server id was running before it restarted are orphans: nobody else runs them.
        self._take_over([self.server_id])
        for target, name in ((self._dispatch_loop, "job-dispatch"), (self._heartbeat_loop, "job-heartbeat")):
            t = threading.Thread(target=target, name=name, daemon=True)
            t.start()
            self._threads.append(t)

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        for t in self._threads:
            t.join(timeout=5)
        self._pool.shutdown(wait=False, cancel_futures=True)

    def notify(self) -> None:
        """Wakes the dispatcher at once (after a local submit) instead of at the next poll."""
        self._wake.set()

    # --- loops -------------------------------------------------------------------------------------

    def _dispatch_loop(self) -> None:
        while not self._stop.is_set():
            try:
                self._claim_and_start()
            except Exception:
                log.exception("job dispatch failed")
            self._wake.wait(self.poll_interval)
            self._wake.clear()

    def _heartbeat_loop(self) -> None:
        while not self._stop.wait(self.heartbeat_interval):
            try:
                with self.db.session() as s:
                    node = s.get(ServerNode, self.server_id)
                    if node is not None:
                        node.heartbeat = utcnow()
                self._take_over(self._dead_servers())
            except Exception:
                log.exception("job heartbeat failed")

    def _dead_servers(self) -> list[str]:
        limit = utcnow() - timedelta(seconds=self.dead_after)
        with self.db.session() as s:
            nodes = s.scalars(select(ServerNode).where(ServerNode.id != self.server_id)).all()
            return [n.id for n in nodes if as_utc(n.heartbeat) < limit]

    def _claim_and_start(self) -> None:
        with self._lock:
            free = self.workers - self._busy
        if free <= 0:
            return
        with self.db.session() as s:
            jobs = queue.claim(s, self.server_id, free, self.db.is_postgres)
            seqs = [j.seq for j in jobs]
        for seq in seqs:
            self._launch(seq, recovering=False)

    def _take_over(self, owners: list[str]) -> None:
        with self.db.session() as s:
            seqs = []
            for job in queue.orphaned(s, owners):
                # Conditional: when two servers see the same dead one, only one takes each job.
                if queue.take_over(s, job.seq, owners, self.server_id):
                    log.info("taking over job %s (%s) from %s", job.id, job.kind, owners)
                    seqs.append(job.seq)
        for seq in seqs:
            self._launch(seq, recovering=True)

    def _launch(self, seq: int, recovering: bool) -> None:
        with self._lock:
            self._busy += 1
        self._pool.submit(self._run_guarded, seq, recovering)

    def _run_guarded(self, seq: int, recovering: bool) -> None:
        try:
            self.run_job(seq, recovering)
        except Exception:
            log.exception("job %s crashed the worker", seq)
        finally:
            with self._lock:
                self._busy -= 1
            self._wake.set()

    # --- running one job ---------------------------------------------------------------------------

    def run_job(self, seq: int, recovering: bool) -> None:
        with self.db.session() as s:
            job = s.get(Job, seq)
            if job is None or job.status != JOB_RUNNING:
                return
            cancelled_before_start = job.cancel_requested and not job.steps
            s.expunge(job)
        if cancelled_before_start:
            self._finish_failed(seq, ErrorCode.INTERNAL_ERROR, "The job was cancelled before it started",
                                status=JOB_CANCELLED)  # fmt: skip
            return
        kind = get_kind(job.kind)
        ctx = JobContext(self.db, job, recovering=recovering)
        if kind is None:
            self._finish_failed(seq, ErrorCode.INTERNAL_ERROR, f"Unknown job kind {job.kind}")
            return
        try:
            if recovering:
                if kind.recover is None:
                    raise CloudError(
                        f"The job ({job.cmd}) was interrupted when its management server stopped, and this "
                        "kind of job cannot be resumed; its resources were returned to a stable state"
                    )
                result = kind.recover(ctx)
            else:
                result = kind.run(ctx)
        except WorkerStopped:
            # Fault injection: this worker "died" at a step boundary. The job stays running with its step
            # log, and is recovered from it as a restarted server would (a fresh context from the database).
            log.warning("job %s (%s) stopped by fault injection; recovering it", job.id, job.kind)
            self.run_job(seq, recovering=True)
            return
        except JobCancelled as exc:
            ctx.compensate()
            self._finish_failed(seq, ErrorCode.INTERNAL_ERROR, exc.text, status=JOB_CANCELLED)
        except CloudError as exc:
            ctx.compensate()
            self._finish_failed(seq, exc.code, exc.text)
        except Exception as exc:
            log.exception("job %s (%s) failed", job.id, job.kind)
            ctx.compensate()
            self._finish_failed(seq, ErrorCode.INTERNAL_ERROR, f"Internal error running {job.cmd}: {exc}")
        else:
            self._finish_ok(seq, result)

    def _still_mine(self, s: Session, seq: int) -> Job | None:
        """The job, locked, if this server still owns it running; None once another server took it over
        (this one was thought dead: a missed heartbeat), which then finishes it: ending it here too would
        complete it twice."""
        job = s.get(Job, seq, with_for_update=True)
        assert job is not None
        if job.owner != self.server_id or job.status != JOB_RUNNING:
            log.warning("job %s (%s) is now %s on %s: not finishing it here", job.id, job.kind, job.status, job.owner)
            return None
        return job

    def _finish_ok(self, seq: int, result: JobResult) -> None:
        with self.db.session() as s:
            job = self._still_mine(s, seq)
            if job is None:
                return
            job.status = JOB_SUCCEEDED
            job.result = result
            job.result_code = 0
            job.completed = utcnow()
            if job.progress_total:
                job.progress_done = job.progress_total
            kind = get_kind(job.kind)
            if kind is not None and kind.event:
                record_event(
                    s,
                    kind.event,
                    f"Successfully completed {job.cmd}",
                    account_id=job.account_id,
                    user_id=job.user_id,
                    resource_type=job.instance_type,
                    resource_id=job.instance_id,
                )

    def _finish_failed(self, seq: int, code: ErrorCode, text: str, status: str = JOB_FAILED) -> None:
        with self.db.session() as s:
            job = self._still_mine(s, seq)
            if job is None:
                return
            job.status = status
            job.result = {"errorcode": int(code), "errortext": text}
            job.result_code = int(code)
            job.completed = utcnow()
            kind = get_kind(job.kind)
            if kind is not None and kind.on_fail is not None:
                try:
                    with s.begin_nested():  # a broken hook must not keep the job from ending
                        kind.on_fail(s, job)
                except Exception:
                    log.exception("on_fail of job %s (%s) failed; its resources may need attention", job.id, job.kind)
            if kind is not None and kind.event:
                record_event(
                    s,
                    kind.event,
                    f"Error while running {job.cmd}: {text}",
                    level="ERROR",
                    account_id=job.account_id,
                    user_id=job.user_id,
                    resource_type=job.instance_type,
                    resource_id=job.instance_id,
                )


def purge_expired_jobs(db: Database, older_than: timedelta) -> int:
    """Deletes finished jobs (and their resource rows) that ended before now - older_than."""
    from sqlalchemy import delete

    from strato.db.models import JobResource

    limit = utcnow() - older_than
    with db.session() as s:
        seqs = list(s.scalars(select(Job.seq).where(Job.completed.is_not(None), Job.completed < limit)))
        if seqs:
            s.execute(delete(JobResource).where(JobResource.job_seq.in_(seqs)))
            s.execute(delete(Job).where(Job.seq.in_(seqs)))
        return len(seqs)
