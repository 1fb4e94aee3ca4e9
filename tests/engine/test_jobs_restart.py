"""A server killed (SIGKILL) while async jobs are queued and running: after a restart (same server id) or
when another server takes over (dead server's heartbeat), queued jobs run, running jobs are recovered as
their kind defines (account.delete: run again; it is idempotent) and nothing stays pending."""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import requests
from cs import CloudStack

from helpers.postgres import PostgresServer
from helpers.serverproc import ServerProcess

JOBS = 100
SUBMITTERS = 4


@pytest.fixture(params=["sqlite", "postgres"])
def database_url(request: pytest.FixtureRequest) -> Iterator[str | None]:
    if request.param == "sqlite":
        yield None
        return
    pg: PostgresServer = request.getfixturevalue("pg_server")
    url = pg.create_database()
    try:
        yield url
    finally:
        pg.drop_database(url)


def _job_states(server: ServerProcess) -> dict[str, tuple[str, str | None, int]]:
    rows = server.sql("SELECT id, status, owner, attempts FROM jobs WHERE cmd = 'deleteAccount'")
    return {r[0]: (r[1], r[2], r[3]) for r in rows}


def _kill_while_running(server: ServerProcess, tries: int = 2000) -> dict[str, tuple[str, str | None, int]]:
    """Freezes the server (SIGSTOP), reads the committed job states, and kills it (SIGKILL) at a moment
    when one job is running and others are still queued; otherwise lets it run a little and retries."""
    for _ in range(tries):
        os.kill(server.proc.pid, signal.SIGSTOP)
        states = _job_states(server)
        statuses = [s for s, _, _ in states.values()]
        if statuses.count("running") >= 1 and statuses.count("queued") >= 3:
            server.kill()
            return states
        os.kill(server.proc.pid, signal.SIGCONT)
        if len(statuses) == JOBS and "queued" not in statuses:
            break
        time.sleep(0.003)
    raise AssertionError(f"never caught a running job with others queued: {statuses}")


def _wait_all_ended(server: ServerProcess, timeout: float = 60.0) -> dict[str, tuple[str, str | None, int]]:
    deadline = time.monotonic() + timeout
    while True:
        states = _job_states(server)
        if all(s not in ("queued", "running") for s, _, _ in states.values()):
            return states
        if time.monotonic() > deadline:
            pending = {k: v for k, v in states.items() if v[0] in ("queued", "running")}
            raise AssertionError(f"jobs still pending after {timeout}s: {pending}")
        time.sleep(0.2)


@pytest.mark.parametrize("after", ["restart", "takeover"])
def test_killed_server_jobs_are_finished(
    tmp_path: Path,
    database_url: str | None,
    after: str,
    server_factory: Callable[..., ServerProcess],
) -> None:
    # One worker: the jobs run one at a time, so at any moment one runs and the rest wait.
    first = server_factory(
        data_dir=tmp_path / "a",
        database_url=database_url,
        server_id="node-a",
        extra_args=["--job-workers", "1"],
    )
    admin_keys = first.admin_keys()
    account_ids = first.insert_accounts(JOBS, prefix="victim")

    # Clients keep submitting while the server is frozen, inspected and finally killed under them;
    # a request cut by the crash may or may not have queued its job, so jobs are counted in the database.
    failures: list[Exception] = []

    def submit(share: list[str]) -> None:
        client = first.cs(admin_keys, timeout=60)
        for account_id in share:
            try:
                client.deleteAccount(id=account_id)
            except (requests.ConnectionError, requests.exceptions.ChunkedEncodingError):
                return  # the server was killed under this request
            except Exception as exc:
                failures.append(exc)
                return

    submitters = [threading.Thread(target=submit, args=(account_ids[i::SUBMITTERS],)) for i in range(SUBMITTERS)]
    for t in submitters:
        t.start()
    try:
        at_kill = _kill_while_running(first)
    finally:
        if first.alive():
            first.kill()
        for t in submitters:
            t.join(timeout=60)
    assert failures == []
    jobids = [r[0] for r in first.sql("SELECT id FROM jobs WHERE cmd = 'deleteAccount'")]
    running = [j for j, (s, _, _) in at_kill.items() if s == "running"]
    queued = [j for j, (s, _, _) in at_kill.items() if s == "queued"]
    assert running and queued and all(at_kill[j][1] == "node-a" for j in running)

    if after == "restart":
        # The same server id comes back: it recognises the jobs it left running.
        second = server_factory(
            data_dir=tmp_path / "a",
            port=first.port,
            database_url=database_url,
            server_id="node-a",
            extra_args=["--job-workers", "2"],
        )
        new_owner = "node-a"
    else:
        # Another server notices node-a's heartbeat stopped and takes over its running jobs.
        if database_url is None:
            database_url = f"sqlite:///{first.sqlite_path}"
        second = server_factory(
            data_dir=tmp_path / "b",
            database_url=database_url,
            server_id="node-b",
            extra_args=["--job-workers", "2", "--dead-after", "2", "--heartbeat-interval", "0.5"],
        )
        new_owner = "node-b"

    final = _wait_all_ended(second)
    assert set(final) == set(jobids)
    assert {s for s, _, _ in final.values()} == {"succeeded"}, final
    # Each job was claimed once: recovery continues the claimed run instead of queueing it again.
    assert {a for _, _, a in final.values()} == {1}
    for j in running:
        assert final[j][1] == new_owner
    for j in queued:
        assert final[j][1] in ("node-a", "node-b") and final[j][1] == new_owner

    # What a client sees: every job ended with success, every account is gone, nothing pending.
    client: CloudStack = second.cs(first.admin_keys())
    for j in running + queued[:5]:
        res = client.queryAsyncJobResult(jobid=j)
        assert res["jobstatus"] == 1 and res["jobresultcode"] == 0 and res["jobresult"] == {"success": True}
    pending = [j for j in client.listAsyncJobs(pagesize=-1)["asyncjobs"] if j["jobstatus"] == 0]
    assert pending == []
    gone = second.sql(
        "SELECT j.instance_id FROM jobs j JOIN accounts a ON a.id = j.instance_id "
        "WHERE j.cmd = 'deleteAccount' AND a.removed IS NOT NULL"
    )
    assert len(gone) == len(jobids)
    # The server still takes new work.
    acct = second.insert_accounts(1, prefix="after")[0]
    assert client.deleteAccount(id=acct, fetch_result=True) == {"success": True}
