"""Fixtures of the compute tests: one environment for the whole session, as `strato up` makes it but in the
test's temp dir: a management server (SQLite), two QEMU agents under TCG (two hosts in one cluster), both
hosts' local pools, two cluster pools (shared mount points), two image stores, and the tiny guest
template registered from file://.

Everything is stopped by pid at the end, also on failure; QEMU processes whose command line names the
test's temp dir are killed, and the temp dir is removed.
"""

from __future__ import annotations

import os
import shutil
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

_HERE = str(Path(__file__).resolve().parent)
if _HERE not in sys.path:
    sys.path.insert(0, _HERE)
_TESTS = str(Path(__file__).resolve().parents[1])
if _TESTS not in sys.path:
    sys.path.insert(0, _TESTS)

from computelib import Env, kill_qemus, processes_mentioning  # noqa: E402

from helpers.agentproc import AgentProcess, start_agent  # noqa: E402
from helpers.serverproc import Keys, ServerProcess, create_user_keys, start_server, wait_job  # noqa: E402

pytestmark = pytest.mark.qemu


def _tiny_image(base: Path) -> Path:
    from strato.image.tiny import build_tiny_image, default_image_path

    cached = default_image_path()
    dest = base / "images" / "tiny.qcow2"
    dest.parent.mkdir(parents=True, exist_ok=True)
    if cached.is_file():
        shutil.copyfile(cached, dest)
    else:
        build_tiny_image(dest)
    return dest


def _setup(env_base: Path, server: ServerProcess, agents: dict[str, AgentProcess], image: Path) -> Env:
    api = server.cs(fetch_result=True, job_timeout=180, timeout=60)
    tag = uuid.uuid4().hex[:6]
    zone = api.createZone(name=f"zone-{tag}")["zone"]
    pod = api.createPod(name=f"pod-{tag}", zoneid=zone["id"])["pod"]
    cluster = api.addCluster(clustername=f"cluster-{tag}", zoneid=zone["id"], podid=pod["id"], hypervisor="KVM")[
        "cluster"
    ][0]
    hosts = {}
    for key, agent in agents.items():
        hosts[key] = api.addHost(
            zoneid=zone["id"],
            podid=pod["id"],
            clusterid=cluster["id"],
            url=agent.base_url,
            username="strato",
            password=agent.token,
            hypervisor="KVM",
        )["host"][0]
    pools: dict[str, dict[str, Any]] = {}
    for n, key in enumerate(("host1", "host2"), start=1):
        local = api.listStoragePools(zoneid=zone["id"], hostid=hosts[key]["id"], scope="host")["storagepool"]
        assert len(local) == 1, local
        pools[f"local{n}"] = local[0]
    for n in (1, 2):
        path = env_base / f"shared{n}"
        path.mkdir()
        pools[f"shared{n}"] = api.createStoragePool(
            name=f"shared{n}-{tag}",
            zoneid=zone["id"],
            podid=pod["id"],
            clusterid=cluster["id"],
            scope="cluster",
            url=f"SharedMountPoint://localhost{path}",
        )["storagepool"]
    stores: dict[str, dict[str, Any]] = {}
    for n in (1, 2):
        path = env_base / f"store{n}"
        path.mkdir()
        store = api.addImageStore(
            name=f"store{n}-{tag}", provider="NFS", url=f"file://localhost{path}", zoneid=zone["id"]
        )["imagestore"]
        stores[f"store{n}"] = {**store, "path": str(path)}
    offering = api.createServiceOffering(
        name=f"tiny-{tag}", displaytext="1 CPU, 128 MiB", cpunumber=1, cpuspeed=1000, memory=128
    )["serviceoffering"]
    big = api.createServiceOffering(
        name=f"bigger-{tag}", displaytext="1 CPU, 192 MiB", cpunumber=1, cpuspeed=1000, memory=192
    )["serviceoffering"]
    disk = api.createDiskOffering(name=f"1g-{tag}", displaytext="1 GiB", disksize=1)["diskoffering"]
    registered = api.registerTemplate(
        name=f"tiny-{tag}",
        displaytext="tiny guest",
        url=f"file://{image}",
        format="QCOW2",
        hypervisor="KVM",
        zoneid=zone["id"],
        imagestoreid=stores["store1"]["id"],
        ostypeid="Other Linux (64-bit)",
        ispublic=True,  # users of the permission tests deploy from it
    )["template"][0]
    job = wait_job(server.cs(), registered["jobid"], timeout=120)
    assert job["jobstatus"] == 1, job
    env = Env(
        base=env_base,
        server=server,
        agents=agents,
        api=api,
        zoneid=zone["id"],
        podid=pod["id"],
        clusterid=cluster["id"],
        hosts=hosts,
        pools=pools,
        stores=stores,
        offering=offering,
        big_offering=big,
        disk_offering=disk,
        tiny_image=image,
        raw=server.cs(timeout=60),
        template=registered,
    )
    env.template = env.template_info(registered["id"])
    assert env.template["isready"], env.template
    return env


@pytest.fixture(scope="session")
def env(tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest) -> Iterator[Env]:
    """STRATO_COMPUTE_BACKEND=postgres runs the compute tests against PostgreSQL (SQLite by default,
    to keep the suite short; the API tests run on both)."""
    if shutil.which("qemu-system-x86_64") is None or shutil.which("qemu-img") is None:
        pytest.skip("qemu-system-x86_64 and qemu-img are needed")
    base = tmp_path_factory.mktemp("compute")
    server: ServerProcess | None = None
    agents: dict[str, AgentProcess] = {}
    made: Env | None = None
    try:
        image = _tiny_image(base)
        database_url = None
        if os.environ.get("STRATO_COMPUTE_BACKEND", "sqlite") == "postgres":
            database_url = request.getfixturevalue("pg_server").create_database()
        server = start_server(base / "server", database_url=database_url)
        for n in (1, 2):
            agents[f"host{n}"] = start_agent(
                base / f"host{n}", token=f"compute-{uuid.uuid4().hex[:8]}", driver="qemu", accel="tcg"
            )
        made = _setup(base, server, agents, image)
        yield made
    finally:
        if made is not None:
            for client in made.clients:
                client.close()
        for agent in agents.values():
            agent.stop()
        if server is not None:
            server.stop()
        kill_qemus(base)
        deadline = time.monotonic() + 10
        while (left := [p for p in processes_mentioning(str(base)) if "qemu-system" in p[1]]) and (
            time.monotonic() < deadline
        ):
            time.sleep(0.2)
        shutil.rmtree(base, ignore_errors=True)
        assert left == [], f"QEMU processes left: {left}"


@pytest.fixture
def make_user(env: Env) -> Callable[..., Keys]:
    """Creates a plain user account (accounttype 0 unless told) and returns its keys."""

    def make(prefix: str = "user", **kwargs: Any) -> Keys:
        return create_user_keys(env.api, env.server.endpoint, username=f"{prefix}-{uuid.uuid4().hex[:8]}", **kwargs)

    return make


@pytest.fixture
def unique() -> Callable[[str], str]:
    return lambda prefix: f"{prefix}-{uuid.uuid4().hex[:6]}"
