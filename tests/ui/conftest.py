"""The browser tests' cloud (module-scoped, shared by the few tests): a management server, one simulator
host (cluster "sim") with two cluster pools, and one QEMU host under TCG (cluster "kvm") with the tiny
template, whose console VM is deployed at set-up and waited for only by the console test. Headless
Chromium is Debian's (`/usr/bin/chromium`), driven by Playwright; skipped with the reason without them."""

from __future__ import annotations

import shutil
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

_TESTS = str(Path(__file__).resolve().parents[1])
if _TESTS not in sys.path:
    sys.path.insert(0, _TESTS)
_COMPUTE = str(Path(__file__).resolve().parents[1] / "compute")
if _COMPUTE not in sys.path:
    sys.path.insert(0, _COMPUTE)

from computelib import kill_qemus  # noqa: E402

from helpers.agentproc import AgentProcess, start_agent  # noqa: E402
from helpers.serverproc import ServerProcess, start_server, wait_job  # noqa: E402

CHROMIUM = "/usr/bin/chromium"


@dataclass
class UiCloud:
    server: ServerProcess
    sim: AgentProcess
    api: Any  # cs client of the root admin, following jobs
    raw: Any  # the same, answering jobids
    zoneid: str
    pools: dict[str, dict[str, Any]]  # "shared1", "shared2" (simulator cluster)
    sim_template: str
    offering: str
    disk_offering: str
    console_vm: str
    console_job: str
    extra: dict[str, Any] = field(default_factory=dict)


def _make(base: Path, server: ServerProcess, sim: AgentProcess, qemu: AgentProcess | None) -> UiCloud:
    api = server.cs(fetch_result=True, job_timeout=120, timeout=60)
    raw = server.cs(timeout=60)
    tag = uuid.uuid4().hex[:6]
    zone = api.createZone(name=f"uizone-{tag}")["zone"]
    pod = api.createPod(name="pod", zoneid=zone["id"])["pod"]
    sim_cluster = api.addCluster(clustername="sim", zoneid=zone["id"], podid=pod["id"], hypervisor="Simulator")[
        "cluster"
    ][0]
    api.addHost(zoneid=zone["id"], podid=pod["id"], clusterid=sim_cluster["id"], url=sim.base_url, username="x",
                password=sim.token, hypervisor="Simulator")  # fmt: skip
    pools = {}
    for n in (1, 2):
        path = base / f"shared{n}"
        path.mkdir()
        pools[f"shared{n}"] = api.createStoragePool(
            name=f"shared{n}-{tag}",
            zoneid=zone["id"],
            podid=pod["id"],
            clusterid=sim_cluster["id"],
            scope="cluster",
            url=f"SharedMountPoint://localhost{path}",
        )["storagepool"]
    store = base / "store"
    store.mkdir()
    api.addImageStore(url=f"file://localhost{store}", provider="NFS", zoneid=zone["id"])
    sim_tmpl = api.registerTemplate(
        name=f"simtmpl-{tag}",
        displaytext="t",
        url="http://images.invalid/t.qcow2",  # the simulator records http templates without fetching them
        format="QCOW2",
        hypervisor="Simulator",
        zoneid=zone["id"],
    )["template"][0]
    assert wait_job(raw, sim_tmpl["jobid"])["jobstatus"] == 1
    offering = api.createServiceOffering(name=f"small-{tag}", displaytext="s", cpunumber=1, cpuspeed=1000,
                                         memory=128)["serviceoffering"]  # fmt: skip
    disk = api.createDiskOffering(name=f"1g-{tag}", displaytext="1 GiB", disksize=1)["diskoffering"]
    console_vm = console_job = ""
    if qemu is not None:
        from strato.image.tiny import build_tiny_image, default_image_path

        image = base / "tiny.qcow2"
        if default_image_path().is_file():
            shutil.copyfile(default_image_path(), image)
        else:
            build_tiny_image(image)
        # Its own zone and image store: the simulator host would "copy" the template without its bytes.
        kzone = api.createZone(name=f"uikvm-{tag}")["zone"]
        kpod = api.createPod(name="kpod", zoneid=kzone["id"])["pod"]
        kvm = api.addCluster(clustername="kvm", zoneid=kzone["id"], podid=kpod["id"], hypervisor="KVM")["cluster"][0]
        kstore = base / "kstore"
        kstore.mkdir()
        api.addImageStore(url=f"file://localhost{kstore}", provider="NFS", zoneid=kzone["id"])
        qhost = api.addHost(zoneid=kzone["id"], podid=kpod["id"], clusterid=kvm["id"], url=qemu.base_url, username="x",
                            password=qemu.token, hypervisor="KVM")["host"][0]  # fmt: skip
        tiny = api.registerTemplate(
            name=f"tiny-{tag}",
            displaytext="tiny",
            url=f"file://{image}",
            format="QCOW2",
            hypervisor="KVM",
            zoneid=kzone["id"],
            ostypeid="Other Linux (64-bit)",
        )["template"][0]
        assert wait_job(raw, tiny["jobid"], timeout=120)["jobstatus"] == 1
        local = api.createServiceOffering(name=f"local-{tag}", displaytext="local", cpunumber=1, cpuspeed=1000,
                                          memory=128, storagetype="local")["serviceoffering"]  # fmt: skip
        started = raw.deployVirtualMachine(name="console-vm", zoneid=kzone["id"], serviceofferingid=local["id"],
                                           templateid=tiny["id"], hostid=qhost["id"])  # fmt: skip
        console_vm, console_job = started["id"], started["jobid"]
    return UiCloud(server, sim, api, raw, zone["id"], pools, sim_tmpl["id"], offering["id"], disk["id"],
                   console_vm, console_job)  # fmt: skip


@pytest.fixture(scope="module")
def uicloud(tmp_path_factory: pytest.TempPathFactory) -> Iterator[UiCloud]:
    base = tmp_path_factory.mktemp("ui")
    server: ServerProcess | None = None
    agents: list[AgentProcess] = []
    try:
        server = start_server(base / "server")
        sim = start_agent(base / "sim", token=f"sim-{uuid.uuid4().hex[:8]}")
        agents.append(sim)
        qemu = None
        if shutil.which("qemu-system-x86_64"):
            qemu = start_agent(base / "qemu", token=f"q-{uuid.uuid4().hex[:8]}", driver="qemu", accel="tcg")
            agents.append(qemu)
        yield _make(base, server, sim, qemu)
    finally:
        for agent in agents:
            agent.stop()
        if server is not None:
            server.stop()
        kill_qemus(base)
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if not Path(CHROMIUM).is_file():
        pytest.skip(f"{CHROMIUM} is missing (apt-get install chromium)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip("playwright is not installed (pip install playwright)")
    with sync_playwright() as pw:
        chromium = pw.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.fixture
def page(browser: Any, uicloud: UiCloud) -> Iterator[Any]:
    context = browser.new_context(base_url=uicloud.server.base_url)
    pg = context.new_page()
    pg.set_default_timeout(15000)
    errors: list[str] = []
    pg.on("pageerror", lambda exc: errors.append(str(exc)))
    try:
        yield pg
    finally:
        context.close()
    assert errors == [], errors
