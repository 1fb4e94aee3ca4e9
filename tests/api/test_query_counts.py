"""Every list command renders its page in a fixed number of SQL statements, whatever the page size.

The server is started with STRATO_TEST_COUNT_SQL=1, which makes each API response carry the number of
statements its request ran (X-Strato-SQL-Statements; see strato.server.sqlcount). 500 of each kind of
row are written straight into the database (the API would take minutes to make them: createAccount
hashes a password, deployVirtualMachine needs hosts), each with what its view shows: a domain of its
own, users, tags, a host, a root volume on a chain of layers, template copies, a job result. Each list
command is then asked for a page of 10 and a page of 500 rows: both must cost the same statements.
SQLite only: the count is the views' and does not depend on the backend."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from helpers.bulk import seed_cloud
from helpers.serverproc import Keys, ServerProcess, signed_query, start_server

N = 500


@pytest.fixture(scope="module")
def counting_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    proc = start_server(
        tmp_path_factory.mktemp("qcount"),
        env={"STRATO_TEST_COUNT_SQL": "1"},
    )
    try:
        seed_cloud(proc, N)
        yield proc
    finally:
        proc.stop()


LISTS: list[tuple[str, dict[str, str], str]] = [
    ("listAccounts", {"listall": "true"}, "account"),
    ("listDomains", {"listall": "true"}, "domain"),
    ("listUsers", {"listall": "true"}, "user"),
    ("listVirtualMachines", {"listall": "true"}, "virtualmachine"),
    ("listVolumes", {"listall": "true"}, "volume"),
    ("listTemplates", {"listall": "true", "templatefilter": "all"}, "template"),
    ("listIsos", {"listall": "true", "isofilter": "all"}, "iso"),
    ("listStoragePools", {}, "storagepool"),
    ("listImageStores", {}, "imagestore"),
    ("listHosts", {}, "host"),
    ("listZones", {}, "zone"),
    ("listPods", {}, "pod"),
    ("listClusters", {}, "cluster"),
    ("listAsyncJobs", {"listall": "true"}, "asyncjobs"),
    ("listEvents", {"listall": "true"}, "event"),
    ("listTags", {"listall": "true"}, "tag"),
    ("listServiceOfferings", {}, "serviceoffering"),
    ("listDiskOfferings", {}, "diskoffering"),
]


def _call(server: ServerProcess, keys: Keys, params: dict[str, str]) -> tuple[dict[str, Any], int]:
    expires = (datetime.now(UTC) + timedelta(minutes=5)).strftime("%Y-%m-%dT%H:%M:%S%z")
    full = {**params, "apiKey": keys.apikey, "response": "json", "signatureVersion": "3", "expires": expires}
    resp = httpx.get(f"{server.endpoint}?{signed_query(full, keys.secretkey)}", timeout=60)
    assert resp.status_code == 200, resp.text[:500]
    return resp.json(), int(resp.headers["X-Strato-SQL-Statements"])


@pytest.mark.parametrize(("command", "params", "item"), LISTS, ids=[c for c, _, _ in LISTS])
def test_list_costs_the_same_statements_at_10_and_500_rows(
    counting_server: ServerProcess, command: str, params: dict[str, str], item: str
) -> None:
    keys = counting_server.admin_keys()
    counts = {}
    for size in (10, N):
        body, statements = _call(
            counting_server, keys, {"command": command, "page": "1", "pagesize": str(size), **params}
        )
        rows = next(iter(body.values())).get(item, [])
        assert len(rows) == size, f"{command} pagesize={size} gave {len(rows)} rows"
        counts[size] = statements
    assert counts[10] == counts[N], f"{command}: {counts[10]} statements for 10 rows, {counts[N]} for {N}"


def test_resource_limits_and_auth_cost_the_same_statements(counting_server: ServerProcess) -> None:
    """listResourceLimits of an account and a signed call's authentication: a fixed count."""
    keys = counting_server.admin_keys()
    a = [_call(counting_server, keys, {"command": "listResourceLimits"})[1] for _ in range(3)]
    assert a[0] == a[1] == a[2]
    _, zones = _call(counting_server, keys, {"command": "listZones", "id": "00000000-0000-0000-0000-000000000000"})
    # BEGIN, the caller (user, account and domain in one join), api.signature.version3.only, count, page.
    assert zones <= 5, f"a signed listZones of nothing ran {zones} statements"


def test_sql_count_header_is_test_only(tmp_path: Path) -> None:
    """A server started without the variable adds no header."""
    proc = start_server(tmp_path / "plain")
    try:
        keys = proc.admin_keys()
        expires = (datetime.now(UTC) + timedelta(minutes=5)).strftime("%Y-%m-%dT%H:%M:%S%z")
        full = {
            "command": "listZones",
            "apiKey": keys.apikey,
            "response": "json",
            "signatureVersion": "3",
            "expires": expires,
        }
        resp = httpx.get(f"{proc.endpoint}?{signed_query(full, keys.secretkey)}", timeout=30)
        assert resp.status_code == 200 and "X-Strato-SQL-Statements" not in resp.headers
    finally:
        proc.stop()
