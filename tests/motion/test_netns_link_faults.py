"""Cross-host faults with each party in its own network namespace, so the link between the two hosts
is cut for real (tests/helpers/netns.py): the management server, host-1's agent and host-2's agent
(real QEMU under TCG, the tiny guest) are namespaces on one switch; a cut drops every packet between
host-1 and host-2 in the switch while the server still reaches both.

- the link breaks while a VM's data disk moves from host-1's local pool to host-2's over NBD
  (migrateVirtualMachineWithVolume, slowed by `bandwidth`): the job fails naming the cause, the VM
  runs on host-1, its guest verifies every block, nothing of the target stays on host-2, nothing is
  left Migrating; with the link restored, the same move succeeds and the guest verifies on host-2;
- the link is down when host-2 pulls a frozen layer from host-1's agent (PullLayer: the VM's config
  drive, which moves with its root disk between local pools): the same promises.

- the link breaks during the disk mirror while the hosts keep the kernel's default TCP settings (a
  dead peer surfaces only after ~15 minutes of retransmissions): the agent's stall watch fails the
  move when no byte has reached the target for its STALL_S (20 s), with the same promises.

For the other tests the hosts' namespaces give up on an unanswered TCP peer after a few seconds
(net.ipv4.tcp_retries2=3, a per-namespace setting) instead of the kernel's default ~15 minutes, so
that the broken link surfaces as a TCP error within the test's time. Skipped with the reason where
namespaces cannot be made.
"""

from __future__ import annotations

import base64
import contextlib
import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from cs import CloudStack

from helpers.agentproc import AgentProcess, start_agent
from helpers.faultlib import files_in_pools, kill_qemus_under, known_layers, transitional
from helpers.netns import Lab, netns_lab, pids_in, unavailable
from helpers.serverproc import ServerProcess, start_server, wait_job
from helpers.vnc import end_loop, vnc_port_of
from strato.agent.drivers.qemu.stall import stall_seconds
from strato.protocol.messages import GetConsoleLog

pytestmark = pytest.mark.qemu
MiB = 1024 * 1024
FILL = 12 * MiB
QUICK_RETRIES = "3"
STALL_MARGIN_S = 25.0
"""Beyond the agent's STALL_S: its sampling, the rollback, the server noticing the failed job."""
"""Data in the moving disk beyond the guest's blocks: ~12 s of mirror at 1 MiB/s, time to cut."""


@dataclass
class LinkCloud:
    lab: Lab
    base: Path
    server: ServerProcess
    agents: dict[str, AgentProcess]
    ids: dict[str, str]
    pool_dirs: dict[str, Path]

    def api(self) -> CloudStack:
        return self.server.cs(timeout=120)

    def wait(self, started: dict[str, Any], timeout: float = 300) -> dict[str, Any]:
        return wait_job(self.api(), started["jobid"], timeout)

    def ok(self, started: dict[str, Any], timeout: float = 300) -> dict[str, Any]:
        job = self.wait(started, timeout)
        assert job["jobstatus"] == 1, job
        return dict(job.get("jobresult") or {})

    def console(self, host: str, vm: dict[str, Any]) -> str:
        client = self.agents[host].client(timeout=30)
        return client.call(GetConsoleLog(name=vm["instancename"], tail_bytes=None)).text

    def end_loop(self, host: str, vm: dict[str, Any]) -> None:
        """A key pressed on the guest's keyboard ends its write loop: QEMU's VNC listens on the host
        namespace's loopback, reached through a relay."""
        port = vnc_port_of(vm["instancename"], self.agents[host].data_dir)
        end_loop(self.lab.forward(host, port, "127.0.0.1"), lambda: self.console(host, vm))

    def wait_console(self, host: str, vm: dict[str, Any], text: str, count: int = 1, timeout: float = 300) -> str:
        deadline = time.monotonic() + timeout
        while True:
            log = self.console(host, vm)
            if log.count(text) >= count:
                return log
            assert time.monotonic() < deadline, f"{text!r} not seen on {host}:\n{log[-2000:]}"
            time.sleep(1)


def _skip_reason() -> str | None:
    from strato.agent.drivers.qemu.driver import QemuDriver
    from strato.image.tiny import default_image_path

    if shutil.which("qemu-system-x86_64") is None or shutil.which("qemu-io") is None:
        return "needs qemu-system-x86_64 and qemu-io"
    if not default_image_path().is_file():
        return "the tiny guest image is needed (scripts/build-guest-image.sh)"
    if not QemuDriver.capabilities.live_migration:
        return "the QEMU driver does not claim live_migration"
    return unavailable()


def _relay(lab: Lab, host: str) -> Any:
    return lambda port: f"http://127.0.0.1:{lab.forward(host, port)}"


@pytest.fixture(scope="module")
def linkcloud(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LinkCloud]:
    reason = _skip_reason()
    if reason:
        pytest.skip(reason)
    base = tmp_path_factory.mktemp("netns")
    with netns_lab(["mgmt", "host-1", "host-2"]) as lab:
        for host in ("host-1", "host-2"):
            lab.sysctl(host, "net.ipv4.tcp_retries2", QUICK_RETRIES)
        server: ServerProcess | None = None
        agents: dict[str, AgentProcess] = {}
        try:
            server = start_server(base / "server", command_prefix=lab.run("mgmt", []), listen_host=lab.addr["mgmt"],
                                  test_url_for=_relay(lab, "mgmt"))  # fmt: skip
            for n, host in enumerate(("host-1", "host-2"), start=1):
                agents[host] = start_agent(
                    base / f"a{n}", token=f"n{n}-{uuid.uuid4().hex[:6]}", driver="qemu", accel="tcg",
                    command_prefix=lab.run(host, []), listen_host=lab.addr[host], test_url_for=_relay(lab, host),
                )  # fmt: skip
            yield _make(lab, base, server, agents)
        finally:
            if server is not None:
                server.stop()
            for agent in agents.values():
                agent.stop()
            kill_qemus_under(base)
            shutil.rmtree(base, ignore_errors=True)


def _make(lab: Lab, base: Path, server: ServerProcess, agents: dict[str, AgentProcess]) -> LinkCloud:
    from strato.image.tiny import default_image_path

    api = server.cs(timeout=120)
    ids: dict[str, str] = {}
    zone = api.createZone(name="netns")["zone"]
    pod = api.createPod(name="p", zoneid=zone["id"])["pod"]
    cluster = api.addCluster(clustername="c", zoneid=zone["id"], podid=pod["id"], hypervisor="KVM")["cluster"][0]
    ids["zone"] = zone["id"]
    pool_dirs: dict[str, Path] = {}
    for host, agent in agents.items():
        added = api.addHost(zoneid=zone["id"], podid=pod["id"], clusterid=cluster["id"], url=agent.url, username="x",
                            password=agent.token, hypervisor="KVM")["host"][0]  # fmt: skip
        ids[host] = added["id"]
        local = api.listStoragePools(zoneid=zone["id"], hostid=added["id"], scope="host")["storagepool"][0]
        ids[f"local-{host[-1]}"] = local["id"]
        pool_dirs[local["id"]] = Path(str(server.sql("SELECT path FROM storage_pools WHERE id = ?", local["id"])[0][0]))
    shared_dir = base / "shared"
    shared_dir.mkdir()
    url = f"SharedMountPoint://localhost{shared_dir}"
    shared = api.createStoragePool(name="shared", zoneid=zone["id"], podid=pod["id"], clusterid=cluster["id"],
                                   scope="cluster", url=url)["storagepool"]  # fmt: skip
    ids["shared"] = shared["id"]
    pool_dirs[shared["id"]] = shared_dir
    store = base / "store"
    store.mkdir()
    api.addImageStore(name="s", provider="NFS", url=f"file://localhost{store}", zoneid=zone["id"])
    image = base / "tiny.qcow2"
    shutil.copyfile(default_image_path(), image)
    tmpl = api.registerTemplate(name="t", displaytext="t", url=f"file://{image}", format="QCOW2", hypervisor="KVM",
                                zoneid=zone["id"], ostypeid="Other Linux (64-bit)")["template"][0]  # fmt: skip
    assert wait_job(api, tmpl["jobid"], 120)["jobstatus"] == 1
    ids["template"] = tmpl["id"]
    ids["offering"] = api.createServiceOffering(name="s", displaytext="s", cpunumber=1, cpuspeed=1000,
                                                memory=128)["serviceoffering"]["id"]  # fmt: skip
    ids["disk"] = api.createDiskOffering(name="d", displaytext="d", disksize=1)["diskoffering"]["id"]
    return LinkCloud(lab, base, server, agents, ids, pool_dirs)


# --- what the user sees, and what is left ------------------------------------------------------------


def _vm(cloud: LinkCloud, vm_id: str) -> dict[str, Any]:
    return dict(cloud.api().listVirtualMachines(id=vm_id)["virtualmachine"][0])


def _top_file(cloud: LinkCloud, vol_id: str) -> Path:
    pool_id, path = cloud.server.sql(
        "SELECT l.pool_id, l.path FROM layers l JOIN volumes v ON v.top_layer_id = l.id WHERE v.id = ?", vol_id
    )[0]
    return cloud.pool_dirs[str(pool_id)] / str(path)


def _qemus_in(cloud: LinkCloud, host: str) -> list[int]:
    found = []
    for pid in pids_in(cloud.lab.ns[host]):
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        if b"qemu-system" in cmdline:
            found.append(pid)
    return found


def _nothing_left(cloud: LinkCloud, vm: dict[str, Any]) -> None:
    """The VM runs on host-1, host-2 runs no QEMU, no file on a pool the database does not know, nothing
    in a transitional state."""
    now = _vm(cloud, vm["id"])
    assert now["state"] == "Running" and now["hostid"] == cloud.ids["host-1"], now
    assert _qemus_in(cloud, "host-2") == []
    assert len(_qemus_in(cloud, "host-1")) == 1
    assert transitional(cloud.server) == []
    unknown = files_in_pools(cloud.pool_dirs) - known_layers(cloud.server)
    assert unknown == set(), unknown


def _failed(cloud: LinkCloud, started: dict[str, Any]) -> str:
    job = cloud.wait(started, timeout=300)
    assert job["jobstatus"] == 2, job
    return str(job["jobresult"].get("errortext", ""))


def _deploy(cloud: LinkCloud, commands: str, root_pool: str, userdata: str | None = None) -> dict[str, Any]:
    """A stopped VM, a data disk on host-1's local pool filled beyond the guest's blocks, attached; started."""
    api = cloud.api()
    args: dict[str, Any] = {"zoneid": cloud.ids["zone"], "serviceofferingid": cloud.ids["offering"],
                            "templateid": cloud.ids["template"], "name": f"nl-{uuid.uuid4().hex[:6]}",
                            "hostid": cloud.ids["host-1"], "rootdiskstorageid": cloud.ids[root_pool],
                            "startvm": False, "details[0].guestcommands": commands}  # fmt: skip
    if userdata:
        args["userdata"] = base64.b64encode(userdata.encode()).decode()
    started = api.deployVirtualMachine(**args)
    cloud.ok(started)
    vol = api.createVolume(name=f"nd-{uuid.uuid4().hex[:6]}", zoneid=cloud.ids["zone"],
                           diskofferingid=cloud.ids["disk"], storageid=cloud.ids["local-1"])  # fmt: skip
    cloud.ok(vol)
    argv = ["qemu-io", "-f", "qcow2", "-c", f"write -P 0x6b 256M {FILL}", str(_top_file(cloud, vol["id"]))]
    fill = subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False)
    assert fill.returncode == 0, fill.stderr
    cloud.ok(api.attachVolume(id=vol["id"], virtualmachineid=started["id"]))
    cloud.ok(api.startVirtualMachine(id=started["id"], hostid=cloud.ids["host-1"]))
    vm = _vm(cloud, started["id"])
    cloud.wait_console("host-1", vm, "STRATO-RUN-BEGIN integrity-loop")
    return vm


def _data_disk(cloud: LinkCloud, vm_id: str) -> dict[str, Any]:
    vols = cloud.api().listVolumes(virtualmachineid=vm_id, type="DATADISK")["volume"]
    return dict(vols[0])


def _root_disk(cloud: LinkCloud, vm_id: str) -> dict[str, Any]:
    return dict(cloud.api().listVolumes(virtualmachineid=vm_id, type="ROOT")["volume"][0])


def _wait_mirroring(cloud: LinkCloud, job_id: str, timeout: float = 120) -> None:
    """Until the job has sent some disk bytes host to host (the NBD mirror runs)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = cloud.api().queryAsyncJobResult(jobid=job_id)
        assert job["jobstatus"] == 0, f"the move ended before the cut: {job}"
        if int(job.get("jobprogressdone") or 0) > 1 * MiB:
            return
        time.sleep(0.2)
    raise AssertionError("the move sent nothing host to host")


def _expunge(cloud: LinkCloud, vm_id: str) -> None:
    cloud.ok(cloud.api().destroyVirtualMachine(id=vm_id, expunge=True))


# --- the tests ---------------------------------------------------------------------------------------

VERIFY = "STRATO-RUN-END integrity-verify:vdb"
LOOP_S = 600
"""The ceiling of the guest's write loops: each test ends them with a key once its moves are done."""


def test_link_cut_during_the_disk_mirror_then_restored(linkcloud: LinkCloud) -> None:
    cloud = linkcloud
    commands = (f"integrity-write:vdb:64,integrity-loop:vdb:{LOOP_S},integrity-gens:vdb,integrity-verify:vdb,"
                f"integrity-loop:vdb:{LOOP_S},integrity-gens:vdb,integrity-verify:vdb")  # fmt: skip
    vm = _deploy(cloud, commands, root_pool="shared")
    data = _data_disk(cloud, vm["id"])
    move = {"migrateto[0].volume": data["id"], "migrateto[0].pool": cloud.ids["local-2"]}
    try:
        started = cloud.api().migrateVirtualMachineWithVolume(virtualmachineid=vm["id"], hostid=cloud.ids["host-2"],
                                                              bandwidth=1, **move)  # fmt: skip
        _wait_mirroring(cloud, started["jobid"])
        cloud.lab.cut("host-1", "host-2")
        cut_at = time.monotonic()
        error = _failed(cloud, started)
        took = time.monotonic() - cut_at
        print(f"job failed {took:.1f} s after the cut: {error}")
        assert f"NBD export at {cloud.lab.addr['host-2']}:" in error and "Input/output error" in error, error
        assert _data_disk(cloud, vm["id"])["storageid"] == cloud.ids["local-1"]
        _nothing_left(cloud, vm)
        cloud.end_loop("host-1", vm)
        log = cloud.wait_console("host-1", vm, VERIFY)
        assert f"{VERIFY} rc=0" in log, log[-3000:]
        cloud.lab.restore("host-1", "host-2")
        moved = cloud.ok(cloud.api().migrateVirtualMachineWithVolume(virtualmachineid=vm["id"],
                                                                     hostid=cloud.ids["host-2"], **move))  # fmt: skip
        assert moved["virtualmachine"]["hostid"] == cloud.ids["host-2"], moved
        assert moved["virtualmachine"]["state"] == "Running"
        assert _data_disk(cloud, vm["id"])["storageid"] == cloud.ids["local-2"]
        assert _qemus_in(cloud, "host-1") == [] and len(_qemus_in(cloud, "host-2")) == 1
        assert transitional(cloud.server) == []
        cloud.end_loop("host-2", vm)
        log = cloud.wait_console("host-2", vm, VERIFY)
        assert f"{VERIFY} rc=0" in log, log[-3000:]
    finally:
        cloud.lab.restore("host-1", "host-2")
        _expunge(cloud, vm["id"])


def test_link_down_while_a_frozen_layer_is_pulled(linkcloud: LinkCloud) -> None:
    cloud = linkcloud
    commands = f"integrity-write:vdb:64,integrity-loop:vdb:{LOOP_S},integrity-gens:vdb,integrity-verify:vdb"
    vm = _deploy(cloud, commands, root_pool="local-1", userdata="#cloud-config\n")
    root, data = _root_disk(cloud, vm["id"]), _data_disk(cloud, vm["id"])
    drives = cloud.server.sql("SELECT count(*) FROM layers WHERE vm_id = ? AND removed IS NULL", vm["id"])
    assert drives[0][0] == 1, "the VM has no config drive to pull"
    move = {"migrateto[0].volume": root["id"], "migrateto[0].pool": cloud.ids["local-2"],
            "migrateto[1].volume": data["id"], "migrateto[1].pool": cloud.ids["local-2"]}  # fmt: skip
    try:
        cloud.lab.cut("host-1", "host-2")
        started = cloud.api().migrateVirtualMachineWithVolume(virtualmachineid=vm["id"], hostid=cloud.ids["host-2"],
                                                              **move)  # fmt: skip
        error = _failed(cloud, started)
        print(f"job failed: {error}")
        steps = cloud.server.sql("SELECT steps FROM jobs WHERE id = ?", started["jobid"])[0][0]
        assert "copy config drive" in str(steps), steps
        assert f"from http://{cloud.lab.addr['host-1']}:" in error and "connect timeout" in error, error
        assert _root_disk(cloud, vm["id"])["storageid"] == cloud.ids["local-1"]
        _nothing_left(cloud, vm)
        cloud.end_loop("host-1", vm)
        log = cloud.wait_console("host-1", vm, VERIFY)
        assert f"{VERIFY} rc=0" in log, log[-3000:]
    finally:
        cloud.lab.restore("host-1", "host-2")
        _expunge(cloud, vm["id"])


@contextlib.contextmanager
def _default_tcp(lab: Lab) -> Iterator[str]:
    """host-1 and host-2 with the kernel's own tcp_retries2 (that of the untouched mgmt namespace)
    for the test's duration, then the fixture's quick one again; yields the default."""
    default = lab.sysctl_value("mgmt", "net.ipv4.tcp_retries2")
    try:
        for host in ("host-1", "host-2"):
            lab.sysctl(host, "net.ipv4.tcp_retries2", default)
        yield default
    finally:
        for host in ("host-1", "host-2"):
            lab.sysctl(host, "net.ipv4.tcp_retries2", QUICK_RETRIES)


def test_link_cut_with_default_tcp_fails_as_a_stall(linkcloud: LinkCloud) -> None:
    cloud = linkcloud
    stall_s = stall_seconds()  # the agents' too: they run with this test's environment
    commands = f"integrity-write:vdb:64,integrity-loop:vdb:{LOOP_S},integrity-gens:vdb,integrity-verify:vdb"
    vm = _deploy(cloud, commands, root_pool="shared")
    data = _data_disk(cloud, vm["id"])
    move = {"migrateto[0].volume": data["id"], "migrateto[0].pool": cloud.ids["local-2"]}
    try:
        with _default_tcp(cloud.lab) as retries:
            assert int(retries) >= 8, f"the kernel's tcp_retries2 is {retries}: not the default ~15 minutes"
            started = cloud.api().migrateVirtualMachineWithVolume(virtualmachineid=vm["id"],
                                                                  hostid=cloud.ids["host-2"], bandwidth=1,
                                                                  **move)  # fmt: skip
            _wait_mirroring(cloud, started["jobid"])
            cloud.lab.cut("host-1", "host-2")
            cut_at = time.monotonic()
            error = _failed(cloud, started)
            took = time.monotonic() - cut_at
        print(f"job failed {took:.1f} s after the cut (tcp_retries2={retries}): {error}")
        assert f"no data reached the target host for {stall_s:g} s" in error, error
        assert "link between the hosts is probably broken" in error, error
        assert stall_s <= took <= stall_s + STALL_MARGIN_S, took
        assert _data_disk(cloud, vm["id"])["storageid"] == cloud.ids["local-1"]
        _nothing_left(cloud, vm)
        cloud.end_loop("host-1", vm)
        log = cloud.wait_console("host-1", vm, VERIFY)
        assert f"{VERIFY} rc=0" in log, log[-3000:]
    finally:
        cloud.lab.restore("host-1", "host-2")
        _expunge(cloud, vm["id"])
