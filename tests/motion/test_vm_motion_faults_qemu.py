"""The step-fault matrices of storage motion between two real QEMU hosts (TCG, the tiny guest), with the
guest writing self-checking blocks through them and verifying every block after.

One VM, moved back and forth: its root disk (a linked clone: its template base is pulled host to host)
and its data disk (vdb, the one the guest rewrites) on one host's local pool move with it to the other
host's local pool (`migrateVirtualMachineWithVolume`; the tops mirrored over NBD), the worker stopped
after each step in turn; then, the VM stopped, the offline `migrateVolume` matrix of its data disk
between its local pool and a cluster pool. After each faulted run: the job ended and a failed one names
the cause, nothing is transitional, no file is on any pool that the database does not know, the VM runs
on exactly the host the database names (one QEMU process, only that agent reports it) with exactly the
layers the database names open (read from /proc), and (offline) the disk's blocks all check out on the
host. At the end the guest's own verify says every block is good.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from motionlib import refused
from test_guest_integrity_qemu import TwoHosts
from test_guest_integrity_qemu import _make as make_two_hosts

from helpers.agentproc import AgentProcess, start_agent
from helpers.faultlib import (
    Promises,
    check_promises,
    fault_server_env,
    files_in_pools,
    kill_qemus_under,
    known_layers,
    run_fault_matrix,
)
from helpers.serverproc import start_server
from strato.db.models.storage import LAYER_CONFIG_DRIVE
from strato.image.integrity import parse_generations, verify_image
from strato.protocol.client import AgentCallError
from strato.protocol.messages import GetVm, PowerState

pytestmark = [pytest.mark.qemu]

BLOCKS = 64
LOOP_S = 900
"""The ceiling of the guest's write loop over the whole live matrix; the test ends it with a key (VNC)
once the matrix is done."""
FILL_MIB = 32
"""Data put in the data disk (beyond the blocks) before the pool-fill test."""
FSIZE_MIB = 20
"""The largest file the full target may hold: more than the template base (about 10 MiB), less than
the data disk."""
FILL_LOOP_S = 600
INTERRUPTED = "interrupted by a management server restart"


@dataclass
class FaultHosts:
    """The two-host cloud of test_guest_integrity_qemu on a server that stops workers where the fault
    file says, and the VM all tests here move."""

    hosts: TwoHosts
    fault_file: Path
    pools: dict[str, Path]
    """pool or image store id -> its directory."""
    vm_id: str = ""
    restarted: list[AgentProcess] = field(default_factory=list)
    """Agents a test restarted (stopped at the end)."""
    gens: dict[int, int] = field(default_factory=dict)
    """The generation of every block when the guest's loop ended (its STRATO-INTEGRITY-GENS line)."""

    def files(self) -> set[tuple[str, str]]:
        return files_in_pools(self.pools)


@pytest.fixture(scope="module")
def cloud(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FaultHosts]:
    from strato.image.tiny import default_image_path

    if shutil.which("qemu-system-x86_64") is None or not default_image_path().is_file():
        pytest.skip("QEMU and the tiny guest image are needed")
    base = tmp_path_factory.mktemp("xf")
    fault_file = base / "fault"
    server = start_server(base / "server", env=fault_server_env(fault_file))
    agents: list[AgentProcess] = []
    restarted: list[AgentProcess] = []
    try:
        for n in (1, 2):
            agents.append(
                start_agent(base / f"a{n}", token=f"xf{n}-{uuid.uuid4().hex[:6]}", driver="qemu", accel="tcg")
            )
        hosts = make_two_hosts(base, server, agents)
        api = hosts.api()
        pools = {p["id"]: Path(p["path"]) for p in api.listStoragePools(zoneid=hosts.ids["zone"])["storagepool"]}
        for store in api.listImageStores(zoneid=hosts.ids["zone"])["imagestore"]:
            pools[store["id"]] = base / "store"
        yield FaultHosts(hosts, fault_file, pools, restarted=restarted)
    finally:
        server.stop()
        for agent in restarted:
            agent.stop()
        for agent in agents:
            agent.stop()
        kill_qemus_under(base)
        shutil.rmtree(base, ignore_errors=True)


# --- what the hosts show ---------------------------------------------------------------------------------


def _qemu_pids(cloud: FaultHosts, instance: str) -> list[int]:
    out = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if "qemu-system" in cmdline and instance in cmdline and str(cloud.hosts.base) in cmdline:
            out.append(int(entry.name))
    return out


def _open_pool_files(cloud: FaultHosts, pid: int) -> set[str]:
    """The files on a pool the QEMU process has open (what it really reads and writes)."""
    roots = tuple(os.path.realpath(p) + "/" for p in cloud.pools.values())
    out = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.path.realpath(os.readlink(fd))
        except OSError:
            continue
        if target.startswith(roots):
            out.add(target)
    return out


def _chain_files(cloud: FaultHosts, vol_id: str) -> tuple[str, set[str]]:
    """(the top layer's file, every file of the volume's chain) as the database names them."""
    rows = cloud.hosts.server.sql(
        "SELECT l.id, l.parent_id, l.pool_id, l.path FROM volumes v JOIN layers l ON l.id = v.top_layer_id "
        "WHERE v.id = ?",
        vol_id,
    )
    files: list[str] = []
    while rows:
        _id, parent, pool, path = rows[0]
        files.append(os.path.realpath(cloud.pools[str(pool)] / str(path)))
        rows = cloud.hosts.server.sql("SELECT id, parent_id, pool_id, path FROM layers WHERE id = ?", parent)
    return files[0], set(files)


def _running_on(cloud: FaultHosts, instance: str) -> list[str]:
    """The hosts whose agent reports the VM running."""
    out = []
    for host_id, agent in cloud.hosts.agents.items():
        try:
            report = agent.client(timeout=30).call(GetVm(name=instance))
        except AgentCallError:
            continue
        if report.power_state == PowerState.RUNNING:
            out.append(host_id)
    return out


def _settled(cloud: FaultHosts, host: str, pools: dict[str, str], state: str = "Running") -> None:
    """The VM `state` on `host` (ids), each volume Ready on the pool named; running: one QEMU process,
    only that host's agent reports it, and it has exactly the database's layers of its disks open."""
    vm = cloud.hosts.vm(cloud.vm_id)
    assert vm["state"] == state, vm
    vols = cloud.hosts.volumes(cloud.vm_id)
    assert {v["id"]: (v["state"], v["storageid"]) for v in vols} == {k: ("Ready", p) for k, p in pools.items()}
    if state != "Running":
        assert _qemu_pids(cloud, vm["instancename"]) == []
        return
    assert vm["hostid"] == host, (vm["hostid"], host)
    assert _running_on(cloud, vm["instancename"]) == [host]
    pids = _qemu_pids(cloud, vm["instancename"])
    assert len(pids) == 1, f"QEMU processes of the VM: {pids}"
    open_files = _open_pool_files(cloud, pids[0])
    wanted: set[str] = set()
    for vol in vols:
        top, chain = _chain_files(cloud, vol["id"])
        assert top in open_files, (top, sorted(open_files))
        wanted |= chain
    drive = cloud.hosts.server.sql(
        "SELECT pool_id, path FROM layers WHERE vm_id = ? AND kind = ? AND removed IS NULL",
        cloud.vm_id,
        LAYER_CONFIG_DRIVE,
    )
    wanted |= {os.path.realpath(cloud.pools[str(p)] / str(path)) for p, path in drive}
    assert open_files <= wanted, f"open but not the database's: {sorted(open_files - wanted)}"


def _named_cause(found: Promises) -> None:
    if found.job["jobstatus"] == 2:
        text = found.job["jobresult"]["errortext"]
        assert INTERRUPTED in text or found.step == "(no fault)", text


def _console(cloud: FaultHosts) -> str:
    return cloud.hosts.console(cloud.vm_id)


def _end_loop(cloud: FaultHosts) -> None:
    """A key pressed on the guest's keyboard (VNC) ends its write loop."""
    cloud.hosts.end_loop(cloud.vm_id)


# --- the VM ----------------------------------------------------------------------------------------------


def _deploy(cloud: FaultHosts) -> None:
    commands = f"integrity-write:vdb:{BLOCKS};integrity-loop:vdb:{LOOP_S};integrity-gens:vdb;integrity-verify:vdb"
    cloud.vm_id = cloud.hosts.deploy("host1", "local1", ["local1"], commands)
    cloud.hosts.wait_console(cloud.vm_id, "STRATO-INTEGRITY LOOP-START", timeout=300)


def test_fault_matrix_of_a_vm_moving_with_its_local_disks_between_two_qemu_hosts(cloud: FaultHosts) -> None:
    hosts, ids = cloud.hosts, cloud.hosts.ids
    _deploy(cloud)
    started = time.monotonic()
    moves: list[tuple[tuple[str, dict[str, str]], tuple[str, dict[str, str]]]] = []

    def start() -> str:
        vm = hosts.vm(cloud.vm_id)
        here = "host1" if vm["hostid"] == ids["host1"] else "host2"
        there = "host2" if here == "host1" else "host1"
        vols = hosts.volumes(cloud.vm_id)
        before = {v["id"]: v["storageid"] for v in vols}
        after = {v["id"]: ids[f"local{there[-1]}"] for v in vols}
        moves.append(((ids[here], before), (ids[there], after)))
        params: dict[str, str] = {}
        for i, (vol_id, pool) in enumerate(after.items()):
            params[f"migrateto[{i}].volume"] = vol_id
            params[f"migrateto[{i}].pool"] = pool
        job = hosts.api().migrateVirtualMachineWithVolume(virtualmachineid=cloud.vm_id, hostid=ids[there], **params)
        return str(job["jobid"])

    def check(step: str, found: Promises) -> None:
        source, target = moves[-1]
        host, pools = target if found.job["jobstatus"] == 1 else source
        _settled(cloud, host, pools)
        _named_cause(found)

    names = run_fault_matrix(hosts.server, hosts.api(), cloud.fault_file, "vm.migrate_with_volume", start,
                             cloud.files, after_each=check)  # fmt: skip
    assert {"disk 0: copy frozen layers", "prepare incoming", "migrate", "finish incoming"} <= set(names), names
    took = time.monotonic() - started
    assert "LOOP-DONE" not in _console(cloud), f"the guest stopped writing before the matrix ended ({took:.0f} s)"
    _end_loop(cloud)
    text = hosts.wait_console(cloud.vm_id, "STRATO-RUN-END integrity-verify:vdb", timeout=240)
    assert "STRATO-RUN-END integrity-verify:vdb rc=0" in text, text[-3000:]
    assert f"STRATO-INTEGRITY OK {BLOCKS} blocks" in text, text[-3000:]
    writes = re.search(r"LOOP-DONE writes (\d+)", text)
    assert writes is not None and int(writes.group(1)) > BLOCKS, text[-2000:]
    gens_line = re.search(r"STRATO-INTEGRITY-GENS[^\n]*", text)
    assert gens_line is not None, text[-2000:]
    cloud.gens = parse_generations(gens_line.group(0))


def test_fault_matrix_of_an_offline_volume_move_on_qemu(cloud: FaultHosts) -> None:
    """The stopped VM's data disk between its host's local pool and a cluster pool; after each run the
    disk (read through its chain on the host) holds every block at the generation the guest last wrote;
    at the end the guest, booted again with only a verify, finds every block good."""
    hosts, ids = cloud.hosts, cloud.hosts.ids
    if not cloud.vm_id or not cloud.gens:
        pytest.skip("needs the VM the live matrix wrote")
    api = hosts.api()
    hosts.ok(api.stopVirtualMachine(id=cloud.vm_id, forced=True))
    root, data = hosts.volumes(cloud.vm_id)
    local = data["storageid"]
    moves: list[tuple[str, str]] = []

    def start() -> str:
        now = hosts.volumes(cloud.vm_id)[1]["storageid"]
        target = ids["a"] if now == local else local
        moves.append((now, target))
        return str(api.migrateVolume(volumeid=data["id"], storageid=target)["jobid"])

    def check(step: str, found: Promises) -> None:
        source, target = moves[-1]
        pool = target if found.job["jobstatus"] == 1 else source
        _settled(cloud, "", {root["id"]: root["storageid"], data["id"]: pool}, state="Stopped")
        _named_cause(found)
        top, _chain = _chain_files(cloud, data["id"])
        report = verify_image(top, cloud.gens)
        assert report.ok, (step, report.summary())
        assert report.count == BLOCKS

    names = run_fault_matrix(hosts.server, api, cloud.fault_file, "volume.migrate", start, cloud.files,
                             after_each=check)  # fmt: skip
    assert "copy top layer" in names and "switch database" in names, names
    # Data beyond the blocks, for the next test's move to be larger than its target may grow a file.
    top, _chain = _chain_files(cloud, data["id"])
    filled = subprocess.run(["qemu-io", "-f", "qcow2", "-c", f"write -P 0x5a 64M {FILL_MIB}M", top],
                            capture_output=True, text=True, timeout=120, check=False)  # fmt: skip
    assert filled.returncode == 0, filled.stderr
    commands = f"integrity-verify:vdb;integrity-loop:vdb:{FILL_LOOP_S};integrity-verify:vdb"
    api.updateVirtualMachine(id=cloud.vm_id, **{"details[0].guestcommands": commands})
    host = ids["host2"] if root["storageid"] == ids["local2"] else ids["host1"]
    hosts.ok(api.startVirtualMachine(id=cloud.vm_id, hostid=host))
    text = hosts.wait_console(cloud.vm_id, "STRATO-INTEGRITY LOOP-START", timeout=240)
    assert "STRATO-RUN-END integrity-verify:vdb rc=0" in text and f"STRATO-INTEGRITY OK {BLOCKS} blocks" in text, text[
        -3000:
    ]


def _restart_agent(cloud: FaultHosts, host_id: str, prefix: list[str] | None) -> None:
    old = cloud.hosts.agents[host_id]
    old.stop()
    cloud.hosts.agents[host_id] = start_agent(old.data_dir, token=old.token, driver="qemu", accel="tcg",
                                              port=old.port, command_prefix=prefix)  # fmt: skip
    cloud.restarted.append(cloud.hosts.agents[host_id])
    deadline = time.monotonic() + 120
    while (host := cloud.hosts.api().listHosts(id=host_id)["host"][0])["state"] != "Up":
        assert time.monotonic() < deadline, f"host {host['name']} is {host['state']} after its agent restarted"
        time.sleep(0.5)


def test_the_target_pool_fills_during_a_move_to_another_host(cloud: FaultHosts) -> None:
    """The target host's agent (and the incoming QEMU it starts) may not grow a file beyond FSIZE_MIB
    (RLIMIT_FSIZE: the file system refuses the write as a full one would; QEMU's NBD server answers the
    source's mirror ENOSPC). The root disk's template base fits, the data disk's FILL_MIB does not: the
    job fails naming the cause, the VM keeps running on its source disks, nothing of the target stays.
    A pool too small by its recorded capacity is refused at the request instead."""
    hosts, ids = cloud.hosts, cloud.hosts.ids
    if not cloud.vm_id or "LOOP-START" not in _console(cloud):
        pytest.skip("needs the VM the offline matrix restarted")
    api = hosts.api()
    vm = hosts.vm(cloud.vm_id)
    here = "1" if vm["hostid"] == ids["host1"] else "2"
    there = "2" if here == "1" else "1"
    vols = hosts.volumes(cloud.vm_id)
    before = {v["id"]: v["storageid"] for v in vols}
    params: dict[str, str] = {}
    for i, vol in enumerate(vols):
        params[f"migrateto[{i}].volume"] = vol["id"]
        params[f"migrateto[{i}].pool"] = ids[f"local{there}"]

    # By the pool's capacity: refused at once, nothing started.
    api.updateStoragePool(id=ids[f"local{there}"], capacitybytes=256 * 1024 * 1024)
    try:
        code, text = refused(api.migrateVirtualMachineWithVolume, virtualmachineid=cloud.vm_id,
                             hostid=ids[f"host{there}"], **params)  # fmt: skip
    finally:
        api.updateStoragePool(id=ids[f"local{there}"], capacitybytes=64 * 1024**3)
    assert code == 533 and ("free" in text or "full" in text), (code, text)
    assert vols[1]["name"] in text, text
    _settled(cloud, ids[f"host{here}"], before)

    # For real: the target's file system refuses to grow the files.
    _restart_agent(cloud, ids[f"host{there}"], ["prlimit", f"--fsize={FSIZE_MIB * 1024 * 1024}", "--"])
    try:
        job = api.migrateVirtualMachineWithVolume(virtualmachineid=cloud.vm_id, hostid=ids[f"host{there}"], **params)
        found = check_promises(hosts.server, api, str(job["jobid"]), "target full", cloud.files, timeout=240)
        assert not found.broken(), found.broken()
        assert found.job["jobstatus"] == 2, found.job
        error = found.job["jobresult"]["errortext"]
        assert re.search(r"No space left|ENOSPC|File too large|EFBIG", error), error
        print(f"the full target's job error: {error}")
        _settled(cloud, ids[f"host{here}"], before)
        leftovers = {f for pool, f in cloud.files() if pool == ids[f"local{there}"]}
        assert leftovers <= {f for pool, f in known_layers(hosts.server) if pool == ids[f"local{there}"]}
    finally:
        _restart_agent(cloud, ids[f"host{there}"], None)
    assert "LOOP-DONE" not in _console(cloud), "the guest stopped writing before the move ended"
    _end_loop(cloud)
    text = hosts.wait_console(cloud.vm_id, "LOOP-DONE", timeout=120)
    text = hosts.wait_console(cloud.vm_id, "STRATO-RUN-END integrity-verify:vdb rc=", timeout=120)
    ends = re.findall(r"STRATO-RUN-END integrity-verify:vdb rc=\d+", text)
    while len(ends) < 2:
        time.sleep(1)
        text = _console(cloud)
        ends = re.findall(r"STRATO-RUN-END integrity-verify:vdb rc=\d+", text)
    assert ends == ["STRATO-RUN-END integrity-verify:vdb rc=0"] * 2, text[-3000:]
    hosts.ok(api.destroyVirtualMachine(id=cloud.vm_id, expunge=True))
