"""API fuzzing against a real server on a simulated cloud (a zone, a pod, a simulator host, VMs, a data
volume, so that ids exist): requests built from the registry's declarations (helpers/apifuzz.py) with a
fixed seed, so CI runs the same ones. No answer is a server error, every error is in CloudStack's
envelope, a refused request changes no row, and the server stays up. scripts/fuzz_api.py is the long run.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine.simcloud import simulated_cloud
from helpers import apifuzz
from helpers.agentproc import AgentProcess, start_agent
from helpers.serverproc import ADMIN_PASSWORD, ServerProcess, login, start_server, wait_job

EXAMPLES = int(os.environ.get("STRATO_FUZZ_EXAMPLES", "1000"))
EXAMPLES_ON = {"sqlite": EXAMPLES, "postgres": EXAMPLES // 2}
"""PostgreSQL checks what SQLite lets through (string lengths, types): fewer draws, the same seed."""


@pytest.fixture(scope="module")
def world(
    backend: str, request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[apifuzz.World, ServerProcess, Any]]:
    tmp = tmp_path_factory.mktemp(f"fuzz-{backend}")
    url = None
    if backend == "postgres":
        pg = request.getfixturevalue("pg_server")
        url = pg.create_database()
        request.addfinalizer(lambda: pg.drop_database(url))
    server = start_server(tmp / "server", database_url=url)
    agent: AgentProcess | None = None
    try:
        agent = start_agent(tmp / "agent", driver="simulator")
        api = server.cs()
        ids = simulated_cloud(api, agent, tmp / "store")
        vms = [api.deployVirtualMachine(zoneid=ids["zone"], serviceofferingid=ids["offering"],
                                        templateid=ids["template"], name=f"fz{i}") for i in range(3)]  # fmt: skip
        for vm in vms:
            assert wait_job(api, vm["jobid"])["jobstatus"] == 1
        vol = api.createVolume(name="fzvol", zoneid=ids["zone"], diskofferingid=ids["disk_offering"])
        assert wait_job(api, vol["jobid"])["jobstatus"] == 1
        known = [*ids.values(), *(v["id"] for v in vms), vol["id"]]
        known += [p["id"] for p in api.listPods()["pod"]] + [c["id"] for c in api.listClusters()["cluster"]]
        known += [p["id"] for p in api.listStoragePools()["storagepool"]]
        session, info = login(server.endpoint, "admin", ADMIN_PASSWORD)
        cookies = {"JSESSIONID": str(session.cookies.get("JSESSIONID")), "sessionkey": info["sessionkey"]}
        session.close()
        kinds = {k: [v] for k, v in ids.items()} | {"vm": [v["id"] for v in vms], "volume": [vol["id"]]}
        kinds |= {"pod": [p["id"] for p in api.listPods()["pod"]],
                  "cluster": [c["id"] for c in api.listClusters()["cluster"]],
                  "pool": [p["id"] for p in api.listStoragePools()["storagepool"]]}  # fmt: skip
        w = apifuzz.World(server.endpoint, server.admin_keys(), known, url or server.sqlite_path, session=cookies,
                          kinds=kinds)  # fmt: skip
        yield w, server, api
    finally:
        if agent is not None:
            agent.stop()
        server.stop()


@pytest.fixture(scope="module")
def client() -> Iterator[httpx.Client]:
    with httpx.Client(timeout=60) as c:
        yield c


def test_fuzzed_requests_get_no_server_error_and_change_nothing_when_refused(
    world: tuple[apifuzz.World, ServerProcess, Any], client: httpx.Client, backend: str
) -> None:
    w, server, api = world
    tally = apifuzz.Tally()

    @settings(max_examples=EXAMPLES_ON[backend], derandomize=not os.environ.get("STRATO_FUZZ_RANDOM"),
              database=None, deadline=None, suppress_health_check=list(HealthCheck))  # fmt: skip
    @given(st.data())
    def fuzz(data: st.DataObject) -> None:
        req = data.draw(apifuzz.fuzz_requests(w))
        apifuzz.run_one(client, w, req, tally, lambda jobid: wait_job(api, jobid, timeout=60))

    started = time.monotonic()
    fuzz()
    print(f"fuzz: {time.monotonic() - started:.1f}s", tally.summary())
    assert server.alive()
    assert isinstance(api.listZones(), dict)
    assert "internal error in" not in server.stderr()
    n = EXAMPLES_ON[backend]
    assert tally.by_status.get(200, 0) > n // 50 and sum(k for s, k in tally.by_status.items() if s != 200) > n // 5
    assert tally.by_auth.get("session", 0) > n // 10, tally.summary()  # the UI's way in was fuzzed too


def test_a_10_mb_body_is_refused_in_the_envelope(
    world: tuple[apifuzz.World, ServerProcess, Any], client: httpx.Client
) -> None:
    w, server, api = world
    before = apifuzz.dump(w.database)
    body = b"command=createZone&name=" + b"z" * (10 * 1024 * 1024)
    resp = client.post(w.endpoint, content=body, headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert resp.status_code == 431 and resp.json()["errorresponse"]["errorcode"] == 431
    assert apifuzz.dump(w.database) == before
    assert server.alive() and isinstance(api.listZones(), dict)


def test_create_zone_with_a_domainid_that_does_not_exist_is_431(
    world: tuple[apifuzz.World, ServerProcess, Any], client: httpx.Client
) -> None:
    """Found by the fuzzer: createZone name=b2m6phnbbl domainid=b19fb737-18e9-b14a-7d5a-4845d2687d0a
    answered 530 (the database's foreign key refused the row)."""
    w, _, _ = world
    req = apifuzz.FuzzRequest("createZone", [("command", "createZone"), ("name", "b2m6phnbbl"),
                              ("domainid", "b19fb737-18e9-b14a-7d5a-4845d2687d0a")], "POST", "signed")  # fmt: skip
    before = apifuzz.dump(w.database)
    resp = apifuzz.send(client, w.endpoint, req, w.keys)
    assert resp.status_code == 431, resp.text
    assert "domain" in resp.json()["createzoneresponse"]["errortext"]
    assert apifuzz.dump(w.database) == before
