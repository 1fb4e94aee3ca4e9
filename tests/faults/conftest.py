"""Fixtures of the step-fault tests: a management server started with fault injection armed by a file
(STRATO_FAULT_FILE), and a cloud on it.

`simcloud`: one simulator host with its local pool and a cluster pool, an image store, a template and
offerings. `qemucloud`: the same with a real QEMU agent under TCG and the tiny guest template. Both are
module-scoped; each test makes its own resources with unique names.
"""

from __future__ import annotations

import shutil
import sys
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from cs import CloudStack

_TESTS = str(Path(__file__).resolve().parents[1])
if _TESTS not in sys.path:
    sys.path.insert(0, _TESTS)

from helpers.agentproc import AgentProcess, start_agent  # noqa: E402
from helpers.faultlib import fault_server_env, files_in_pools, kill_qemus_under, simulated_layers  # noqa: E402
from helpers.serverproc import ServerProcess, start_server, wait_job  # noqa: E402


@dataclass
class FaultCloud:
    """A cloud whose server stops workers where the fault file says."""

    base: Path
    server: ServerProcess
    agent: AgentProcess
    fault_file: Path
    driver: str  # "simulator" or "qemu"
    ids: dict[str, str]  # zone, pod, cluster, host, local, shared, store, template, offering, disk
    pool_dirs: dict[str, Path] = field(default_factory=dict)
    store_dir: Path | None = None

    def api(self, **kwargs: Any) -> CloudStack:
        """The root admin; async commands answer their job id (not followed)."""
        kwargs.setdefault("timeout", 60)
        return self.server.cs(**kwargs)

    def files(self) -> set[tuple[str, str]]:
        """(pool id, path) of every layer file on the pools: real files, or the simulator's records."""
        if self.driver == "qemu":
            assert self.store_dir is not None
            return files_in_pools({**self.pool_dirs, self.ids["store"]: self.store_dir})
        return simulated_layers([self.agent.data_dir], self.ids["local"])

    def wait(self, job_id: str, timeout: float = 120) -> dict[str, Any]:
        return wait_job(self.api(), job_id, timeout)

    def ok(self, started: dict[str, Any], timeout: float = 120) -> dict[str, Any]:
        """Waits for an async call's job and asserts it succeeded; the job's result."""
        job = self.wait(started["jobid"], timeout)
        assert job["jobstatus"] == 1, job
        return dict(job.get("jobresult") or {})

    def name(self, prefix: str) -> str:
        return f"{prefix}-{uuid.uuid4().hex[:6]}"


def _make_cloud(base: Path, server: ServerProcess, agent: AgentProcess, driver: str, fault_file: Path) -> FaultCloud:
    api = server.cs(timeout=60)
    hv = "Simulator" if driver == "simulator" else "KVM"
    zone = api.createZone(name=f"fz-{uuid.uuid4().hex[:6]}")["zone"]
    pod = api.createPod(name="p", zoneid=zone["id"])["pod"]
    cluster = api.addCluster(clustername="c", zoneid=zone["id"], podid=pod["id"], hypervisor=hv)["cluster"][0]
    host = api.addHost(
        zoneid=zone["id"],
        podid=pod["id"],
        clusterid=cluster["id"],
        url=agent.base_url,
        username="x",
        password=agent.token,
        hypervisor=hv,
    )["host"][0]
    local = api.listStoragePools(zoneid=zone["id"], hostid=host["id"], scope="host")["storagepool"][0]
    shared_dir = base / "shared"
    shared_dir.mkdir()
    shared = api.createStoragePool(
        name="shared",
        zoneid=zone["id"],
        podid=pod["id"],
        clusterid=cluster["id"],
        scope="cluster",
        url=f"SharedMountPoint://localhost{shared_dir}",
    )["storagepool"]
    store_dir = base / "store"
    store_dir.mkdir()
    store = api.addImageStore(name="s", provider="NFS", url=f"file://localhost{store_dir}", zoneid=zone["id"])
    if driver == "qemu":
        from strato.image.tiny import default_image_path

        image = base / "tiny.qcow2"
        shutil.copyfile(default_image_path(), image)
        url = f"file://{image}"
    else:
        url = "http://images.invalid/t.qcow2"  # the simulator records http templates without fetching them
    tmpl = api.registerTemplate(
        name="t",
        displaytext="t",
        url=url,
        format="QCOW2",
        hypervisor=hv,
        zoneid=zone["id"],
        ostypeid="Other Linux (64-bit)",
        ispublic=True,
    )["template"][0]
    job = wait_job(api, tmpl["jobid"], 120)
    assert job["jobstatus"] == 1, job
    offering = api.createServiceOffering(name="s", displaytext="s", cpunumber=1, cpuspeed=1000, memory=128)
    disk = api.createDiskOffering(name="d", displaytext="d", disksize=1)["diskoffering"]
    return FaultCloud(
        base=base,
        server=server,
        agent=agent,
        fault_file=fault_file,
        driver=driver,
        ids={
            "zone": zone["id"],
            "pod": pod["id"],
            "cluster": cluster["id"],
            "host": host["id"],
            "local": local["id"],
            "shared": shared["id"],
            "store": store["imagestore"]["id"],
            "template": tmpl["id"],
            "offering": offering["serviceoffering"]["id"],
            "disk": disk["id"],
        },
        pool_dirs={local["id"]: Path(local["path"]), shared["id"]: shared_dir},
        store_dir=store_dir,
    )


def _cloud(tmp_path_factory: pytest.TempPathFactory, driver: str) -> Iterator[FaultCloud]:
    base = tmp_path_factory.mktemp(f"faults-{driver}")
    fault_file = base / "fault"
    server = start_server(base / "server", env=fault_server_env(fault_file))
    agent: AgentProcess | None = None
    try:
        kwargs: dict[str, Any] = {"accel": "tcg"} if driver == "qemu" else {}
        agent = start_agent(base / "agent", token=f"f-{uuid.uuid4().hex[:8]}", driver=driver, **kwargs)
        yield _make_cloud(base, server, agent, driver, fault_file)
    finally:
        server.stop()
        if agent is not None:
            agent.stop()
        kill_qemus_under(base)
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope="module")
def simcloud(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FaultCloud]:
    yield from _cloud(tmp_path_factory, "simulator")


@pytest.fixture(scope="module")
def qemucloud(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FaultCloud]:
    from strato.image.tiny import default_image_path

    if shutil.which("qemu-system-x86_64") is None or not default_image_path().is_file():
        pytest.skip("QEMU and the tiny guest image are needed")
    yield from _cloud(tmp_path_factory, "qemu")


@pytest.fixture
def unique() -> Callable[[str], str]:
    return lambda prefix: f"{prefix}-{uuid.uuid4().hex[:6]}"
