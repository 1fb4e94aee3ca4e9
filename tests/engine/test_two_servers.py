"""Two management servers on one PostgreSQL database: jobs submitted to either run exactly once, on
whichever server claims them, and either server answers for any job."""

from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from helpers.serverproc import ServerProcess

JOBS = 40


@pytest.mark.postgres
def test_jobs_run_exactly_once_across_two_servers(
    tmp_path: Path, pg_database: str, server_factory: Callable[..., ServerProcess]
) -> None:
    one = server_factory(data_dir=tmp_path / "one", database_url=pg_database, server_id="server-one")
    two = server_factory(data_dir=tmp_path / "two", database_url=pg_database, server_id="server-two")
    keys = one.admin_keys()  # keys live in the shared database: both servers accept them
    clients = [one.cs(keys), two.cs(keys)]

    account_ids = one.insert_accounts(JOBS, prefix="shared")

    def submit(i: int) -> str:
        jobid: str = clients[i % 2].deleteAccount(id=account_ids[i])["jobid"]
        return jobid

    with ThreadPoolExecutor(max_workers=8) as pool:
        jobids = list(pool.map(submit, range(JOBS)))
    assert len(set(jobids)) == JOBS

    deadline = time.monotonic() + 60
    while True:
        rows = one.sql("SELECT id, status, owner, attempts FROM jobs WHERE cmd = 'deleteAccount'")
        if all(r[1] not in ("queued", "running") for r in rows):
            break
        assert time.monotonic() < deadline, rows
        time.sleep(0.2)

    by_id = {r[0]: r for r in rows}
    assert set(by_id) == set(jobids)
    assert {r[1] for r in rows} == {"succeeded"}
    # Claimed once each (attempts counts claims), by one of the two servers.
    assert {r[3] for r in rows} == {1}
    owners = {r[2] for r in rows}
    assert owners <= {"server-one", "server-two"}
    # Exactly one completion event per job: nobody ran a job twice.
    events = one.sql(
        "SELECT resource_id, count(*) FROM events WHERE type = 'ACCOUNT.DELETE' AND state = 'Completed' "
        "AND level = 'INFO' GROUP BY resource_id"
    )
    completed = dict(events)
    assert all(completed.get(a) == 1 for a in account_ids), completed

    # Either server answers for any job, whoever ran it.
    for i, jobid in enumerate(jobids[:10]):
        res = clients[(i + 1) % 2].queryAsyncJobResult(jobid=jobid)
        assert res["jobstatus"] == 1 and res["jobresult"] == {"success": True}
    assert clients[1].listAccounts(keyword="shared-", pagesize=-1) == {}
    print(f"jobs per server: { {o: sum(1 for r in rows if r[2] == o) for o in owners} }")
