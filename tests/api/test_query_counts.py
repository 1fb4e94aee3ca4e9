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


# Each registered list* command with the parameters that list the seeded rows; None: the command's own
# parameters (required ones) are set from the seeded data at run time.
LISTS: dict[str, dict[str, str]] = {
    "listAccounts": {"listall": "true"},
    "listDomains": {"listall": "true"},
    "listUsers": {"listall": "true"},
    "listVirtualMachines": {"listall": "true"},
    "listVolumes": {"listall": "true"},
    "listTemplates": {"listall": "true", "templatefilter": "all"},
    "listIsos": {"listall": "true", "isofilter": "all"},
    "listStoragePools": {},
    "listImageStores": {},
    "listHosts": {},
    "listZones": {},
    "listPods": {},
    "listClusters": {},
    "listAsyncJobs": {"listall": "true"},
    "listEvents": {"listall": "true"},
    "listTags": {"listall": "true"},
    "listServiceOfferings": {},
    "listDiskOfferings": {},
    "listNetworks": {"listall": "true"},
    "listPhysicalNetworks": {},
    "listNetworkServiceProviders": {},
    "listNetworkOfferings": {},
    "listNics": {},  # virtualmachineid: vm0, on every seeded network
    "listPublicIpAddresses": {"listall": "true"},
    "listVlanIpRanges": {},
    "listPortForwardingRules": {"listall": "true"},
    "listFirewallRules": {"listall": "true"},
    "listEgressFirewallRules": {"listall": "true"},
    "listSecurityGroups": {"listall": "true"},
    "listSSHKeyPairs": {"listall": "true"},
    "listSnapshotPolicies": {"listall": "true"},
    "listSnapshots": {"listall": "true"},
    "listVMSnapshot": {"listall": "true"},
    "listUsageRecords": {"startdate": "2000-01-01", "enddate": "2100-01-01"},
}

# List commands whose rows are not database rows that can number 500: a fixed set in code, or a few per
# account or per zone. Each is named with why; any other list* command must be in LISTS.
NOT_PAGED_ROWS = {
    "listApis": "the command registry",
    "listCapabilities": "one object",
    "listHypervisorCapabilities": "a fixed table in code",
    "listConfigurations": "the settings declared in code",
    "listStorageProviders": "a fixed list in code",
    "listUsageTypes": "a fixed list in code",
    "listResourceLimits": "one row per resource type (test_resource_limits_and_auth_cost_the_same_statements)",
    "listCapacity": "a few totals per zone, not paged",
}


def _registered_lists() -> set[str]:
    import strato.api.commands  # noqa: F401  (registers every command)
    from strato.api.registry import COMMANDS

    return {c.name for c in COMMANDS.values() if c.name.startswith("list")}


def test_every_list_command_is_counted() -> None:
    """A list command added without an entry here (or an exclusion with its reason) fails."""
    missing = _registered_lists() - LISTS.keys() - NOT_PAGED_ROWS.keys()
    assert not missing, f"list commands without a query-count case: {sorted(missing)}"
    assert not (LISTS.keys() - _registered_lists()), "a counted command is not registered"


def _item(command: str) -> str:
    from strato.api.registry import COMMANDS

    item = COMMANDS[command.lower()].response_object
    assert item is not None
    return item


def _call(server: ServerProcess, keys: Keys, params: dict[str, str]) -> tuple[dict[str, Any], int]:
    expires = (datetime.now(UTC) + timedelta(minutes=5)).strftime("%Y-%m-%dT%H:%M:%S%z")
    full = {**params, "apiKey": keys.apikey, "response": "json", "signatureVersion": "3", "expires": expires}
    resp = httpx.get(f"{server.endpoint}?{signed_query(full, keys.secretkey)}", timeout=60)
    assert resp.status_code == 200, resp.text[:500]
    return resp.json(), int(resp.headers["X-Strato-SQL-Statements"])


@pytest.mark.parametrize("command", sorted(LISTS))
def test_list_costs_the_same_statements_at_10_and_500_rows(counting_server: ServerProcess, command: str) -> None:
    keys = counting_server.admin_keys()
    params = dict(LISTS[command])
    if command == "listNics":
        params["virtualmachineid"] = counting_server.sql("SELECT id FROM virtual_machines WHERE name = 'vm0'")[0][0]
    item = _item(command)
    # A first call may do one-time work (listSecurityGroups makes the caller's default group).
    _call(counting_server, keys, {"command": command, "page": "1", "pagesize": "1", **params})
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
