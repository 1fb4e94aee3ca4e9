"""Ansible's CloudStack modules (the `ngine_io.cloudstack` collection of the `ansible` PyPI package, with
`cs` underneath), unchanged, against a real server with a simulator host: a playbook deploys a VM, adds
and attaches a data disk, reports on it, stops and starts it; a second one makes a pool and puts it in
maintenance, an isolated network, a VM on it and a VM snapshot; a third a security group and its rules.
Run again, each changes nothing.

The modules run in a venv of their own (~/.cache/strato/ansible-venv), made once under a file lock when
absent; the test skips with the reason when it cannot be installed (no network, no pip)."""

from __future__ import annotations

import base64
import fcntl
import json
import os
import re
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from cs import CloudStack, CloudStackApiException

from helpers.agentproc import AgentProcess, start_agent
from helpers.serverproc import Keys, ServerProcess, create_user_keys
from helpers.simcloud import SimCloud, build_sim_cloud

VENV = Path.home() / ".cache" / "strato" / "ansible-venv"
PLAYBOOK_BIN = VENV / "bin" / "ansible-playbook"
RECAP = re.compile(r"^localhost\s+:\s+ok=(\d+)\s+changed=(\d+)\s+unreachable=(\d+)\s+failed=(\d+)", re.M)

PLAYBOOK = """
- hosts: localhost
  connection: local
  gather_facts: false
  tasks:
    - name: deploy the VM
      ngine_io.cloudstack.cs_instance:
        name: "{{ vm }}"
        display_name: "{{ vm }} by ansible"
        zone: "{{ zone }}"
        template: "{{ template }}"
        service_offering: "{{ offering }}"
        user_data: "#cloud-config\\nhostname: {{ vm }}"
        tags: [{key: made-by, value: ansible}]
        state: started
      register: deployed
    - name: a data disk, added and attached
      ngine_io.cloudstack.cs_volume:
        name: "{{ vm }}-data"
        zone: "{{ zone }}"
        disk_offering: "{{ disk }}"
        vm: "{{ vm }}"
        state: attached
      notify: [stop the VM, start the VM]
    - name: report
      ngine_io.cloudstack.cs_instance_info:
        name: "{{ vm }}"
      register: info
    - name: the report as the modules read it
      ansible.builtin.copy:
        content: "{{ {'deployed': deployed, 'info': info} | to_json }}"
        dest: "{{ report }}"
      changed_when: false
  handlers:
    - name: stop the VM
      ngine_io.cloudstack.cs_instance:
        name: "{{ vm }}"
        zone: "{{ zone }}"
        state: stopped
      register: stopped
    - name: start the VM
      ngine_io.cloudstack.cs_instance:
        name: "{{ vm }}"
        zone: "{{ zone }}"
        state: started
"""


def _ensure_venv() -> str | None:
    """The cached venv with ansible and cs, made under a file lock when absent; why not, or None."""
    if PLAYBOOK_BIN.exists():
        return None
    VENV.parent.mkdir(parents=True, exist_ok=True)
    with (VENV.parent / "ansible-venv.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            if PLAYBOOK_BIN.exists():
                return None
            steps = [[sys.executable, "-m", "venv", str(VENV)],
                     [str(VENV / "bin" / "pip"), "install", "-q", "ansible", "cs"]]  # fmt: skip
            for step in steps:
                done = subprocess.run(step, capture_output=True, text=True, timeout=900)
                if done.returncode != 0:
                    subprocess.run(["rm", "-rf", str(VENV)], check=False)
                    return f"cannot install ansible ({' '.join(step[-2:])}): {done.stderr.strip()[-500:]}"
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
    return None


@pytest.fixture(scope="module", params=["sqlite"])
def backend(request: pytest.FixtureRequest) -> str:
    """SQLite only: the modules see the same answers on PostgreSQL, and each playbook run costs ~15 s."""
    return str(request.param)


@dataclass
class Stage:
    server: ServerProcess
    cloud: SimCloud
    user: Keys
    api: CloudStack
    admin: CloudStack
    workdir: Path


@pytest.fixture(scope="module")
def stage(server: ServerProcess, admin: CloudStack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stage]:
    why = _ensure_venv()
    if why:
        pytest.skip(why)
    base = tmp_path_factory.mktemp("ansible")
    agent: AgentProcess = start_agent(base / "agent", token=f"ans-{uuid.uuid4().hex[:8]}")
    try:
        cloud = build_sim_cloud(admin, agent, base)
        user = create_user_keys(admin, server.endpoint, username=f"ans-{uuid.uuid4().hex[:6]}")
        yield Stage(server, cloud, user, server.cs(user), admin, base)
    finally:
        agent.stop()


def _play(
    stage: Stage, vm: str, playbook: str = PLAYBOOK, more: dict[str, str] | None = None
) -> tuple[dict[str, int], dict[str, object]]:
    """One ansible-playbook run as the user; the PLAY RECAP's counts and what the modules reported."""
    book = stage.workdir / f"play-{vm}.yml"
    book.write_text(playbook)
    report = stage.workdir / f"report-{vm}.json"
    zone = stage.api.listZones(id=stage.cloud.zone)["zone"][0]["name"]
    extra = {"vm": vm, "zone": zone, "template": stage.cloud.template, "offering": stage.cloud.offering,
             "disk": stage.cloud.disk, "report": str(report), **(more or {})}  # fmt: skip
    env = {
        "PATH": f"{VENV / 'bin'}:{os.environ.get('PATH', '')}",
        "HOME": str(stage.workdir),
        "ANSIBLE_LOCAL_TEMP": str(stage.workdir / "tmp"),
        "ANSIBLE_PYTHON_INTERPRETER": str(VENV / "bin" / "python"),
        "ANSIBLE_NOCOLOR": "1",
        "ANSIBLE_STDOUT_CALLBACK": "default",
        "CLOUDSTACK_ENDPOINT": stage.server.endpoint,
        "CLOUDSTACK_KEY": stage.user.apikey,
        "CLOUDSTACK_SECRET": stage.user.secretkey,
        "CLOUDSTACK_TIMEOUT": "60",
    }
    t0 = time.monotonic()
    done = subprocess.run([str(PLAYBOOK_BIN), "-v", "-i", "localhost,", str(book), "-e", json.dumps(extra)],
                          capture_output=True, text=True, env=env, timeout=300, cwd=stage.workdir)  # fmt: skip
    print(f"ansible-playbook: {time.monotonic() - t0:.1f} s")
    found = RECAP.search(done.stdout)
    assert done.returncode == 0 and found, f"rc={done.returncode}\n{done.stdout[-6000:]}\n{done.stderr[-3000:]}"
    counts = dict(zip(("ok", "changed", "unreachable", "failed"), map(int, found.groups()), strict=True))
    return counts, json.loads(report.read_text())


def test_playbook_deploys_attaches_restarts_and_runs_again_unchanged(stage: Stage) -> None:
    vm = f"ans-{uuid.uuid4().hex[:6]}"
    first, report = _play(stage, vm)
    # deploy, the disk (added and attached), then the handlers stop and start the VM; the report changes nothing.
    assert first == {"ok": 6, "changed": 4, "unreachable": 0, "failed": 0}, first
    again, report_again = _play(stage, vm)
    assert again == {"ok": 4, "changed": 0, "unreachable": 0, "failed": 0}, again

    deployed = report["deployed"]
    assert isinstance(deployed, dict)
    assert deployed["state"] == "Running" and deployed["name"] == vm and deployed["display_name"] == f"{vm} by ansible"
    assert [(t["key"], t["value"]) for t in deployed["tags"]] == [("made-by", "ansible")], deployed["tags"]
    info = report_again["info"]
    assert isinstance(info, dict)
    [listed] = info["instances"]
    assert listed["id"] == deployed["id"] and listed["state"] == "Running"

    # What the user sees through the API: the VM running again after the handlers, both disks on it,
    # one stop and one start in its events.
    [api_vm] = stage.api.listVirtualMachines(id=deployed["id"])["virtualmachine"]
    assert api_vm["state"] == "Running" and api_vm["displayname"] == f"{vm} by ansible"
    vols = stage.api.listVolumes(virtualmachineid=deployed["id"])["volume"]
    assert sorted((v["type"], v["name"]) for v in vols)[0] == ("DATADISK", f"{vm}-data")
    assert sorted(v["type"] for v in vols) == ["DATADISK", "ROOT"]
    events = [e["type"] for e in stage.api.listEvents(pagesize=500).get("event", [])
              if e.get("state") == "Scheduled" and deployed["id"] in str(e.get("description", ""))]  # fmt: skip
    assert sorted(events) == ["VM.START", "VM.STOP"], events
    # The user data went in as the playbook gave it (cs_instance compares it through getVirtualMachineUserData).
    got = stage.api.getVirtualMachineUserData(virtualmachineid=deployed["id"])["virtualmachineuserdata"]
    assert base64.b64decode(got["userdata"]).decode() == f"#cloud-config\nhostname: {vm}"
    # Another account's user is told the same as for an id that does not exist.
    stranger = stage.server.cs(create_user_keys(stage.admin, stage.server.endpoint, username=f"x-{vm}"))
    for vm_id in (deployed["id"], str(uuid.uuid4())):
        with pytest.raises(CloudStackApiException) as err:
            stranger.getVirtualMachineUserData(virtualmachineid=vm_id)
        assert err.value.error["errorcode"] == 431
        assert err.value.error["errortext"] == f"Unable to find virtual machine with virtualmachineid={vm_id}"


STORAGE_PLAYBOOK = """
- hosts: localhost
  connection: local
  gather_facts: false
  tasks:
    - name: a pool, made and put in maintenance (as the admin)
      ngine_io.cloudstack.cs_storage_pool:
        name: "{{ pool }}"
        zone: "{{ zone }}"
        pod: "{{ pod }}"
        cluster: "{{ cluster }}"
        storage_url: "{{ pool_url }}"
        scope: cluster
        allocation_state: maintenance
        api_key: "{{ admin_key }}"
        api_secret: "{{ admin_secret }}"
      register: pool_down
    - name: an isolated network of the user's
      ngine_io.cloudstack.cs_network:
        name: "{{ net }}"
        display_text: "{{ net }} by ansible"
        zone: "{{ zone }}"
        network_offering: DefaultIsolatedNetworkOfferingWithSourceNatService
      register: net_made
    - name: a VM on it
      ngine_io.cloudstack.cs_instance:
        name: "{{ vm }}"
        zone: "{{ zone }}"
        template: "{{ template }}"
        service_offering: "{{ offering }}"
        networks: ["{{ net }}"]
        state: started
    - name: a VM snapshot of it
      ngine_io.cloudstack.cs_vmsnapshot:
        name: "{{ vm }}-snap"
        vm: "{{ vm }}"
        zone: "{{ zone }}"
        description: before the change
      register: snap_made
    - name: the report
      ansible.builtin.copy:
        content: "{{ {'pool_down': pool_down, 'net': net_made, 'snap': snap_made} | to_json }}"
        dest: "{{ report }}"
      changed_when: false
"""


def test_storage_network_and_snapshot_modules_run_twice_the_second_time_unchanged(stage: Stage) -> None:
    """cs_storage_pool (made and put in maintenance), cs_network, cs_instance on that network, cs_vmsnapshot."""
    admin = stage.server.cs(fetch_result=True)
    zone_id, tag = stage.cloud.zone, uuid.uuid4().hex[:6]
    if not admin.listPhysicalNetworks(zoneid=zone_id).get("physicalnetwork"):
        pn = admin.createPhysicalNetwork(zoneid=zone_id, name="guest", isolationmethods="VXLAN", vlan="300-309")
        admin.addTrafficType(physicalnetworkid=pn["physicalnetwork"]["id"], traffictype="Guest")
        admin.updatePhysicalNetwork(id=pn["physicalnetwork"]["id"], state="Enabled")
    pod = admin.listPods(zoneid=zone_id)["pod"][0]
    cluster = admin.listClusters(zoneid=zone_id)["cluster"][0]
    pool_dir = stage.workdir / f"pool-{tag}"
    pool_dir.mkdir()
    keys = stage.server.admin_keys()
    vm, net, pool = f"asn-{tag}", f"net-{tag}", f"pool-{tag}"
    extra = {"vm": vm, "net": net, "pool": pool, "pod": pod["name"], "cluster": cluster["name"],
             "pool_url": f"SharedMountPoint://localhost{pool_dir}", "admin_key": keys.apikey,
             "admin_secret": keys.secretkey}  # fmt: skip
    first, report = _play(stage, vm, STORAGE_PLAYBOOK, extra)
    assert first == {"ok": 5, "changed": 4, "unreachable": 0, "failed": 0}, first
    again, _ = _play(stage, vm, STORAGE_PLAYBOOK, extra)
    assert again == {"ok": 5, "changed": 0, "unreachable": 0, "failed": 0}, again

    # What the API shows: the pool in maintenance, the network with one VM's NIC, one snapshot.
    [api_pool] = admin.listStoragePools(name=pool)["storagepool"]
    assert api_pool["state"] == "Maintenance" and api_pool["scope"] == "CLUSTER", api_pool
    pool_down = report["pool_down"]
    assert isinstance(pool_down, dict) and pool_down["allocation_state"] == "maintenance", pool_down
    [api_net] = stage.api.listNetworks(name=net)["network"]
    assert api_net["displaytext"] == f"{net} by ansible" and api_net["type"] == "Isolated", api_net
    [api_vm] = stage.api.listVirtualMachines(name=vm)["virtualmachine"]
    assert [n["networkid"] for n in api_vm["nic"]] == [api_net["id"]], api_vm["nic"]
    snaps = stage.api.listVMSnapshot(virtualmachineid=api_vm["id"])["vmSnapshot"]
    assert [(s["name"], s["state"], s["description"]) for s in snaps] == [(f"{vm}-snap", "Ready", "before the change")]
    made = report["snap"]
    assert isinstance(made, dict) and made["changed"] and made["name"] == f"{vm}-snap", made


SECURITY_PLAYBOOK = """
- hosts: localhost
  connection: local
  gather_facts: false
  tasks:
    - name: a security group
      ngine_io.cloudstack.cs_securitygroup:
        name: "{{ sg }}"
        description: web servers
    - name: ssh from the office
      ngine_io.cloudstack.cs_securitygroup_rule:
        security_group: "{{ sg }}"
        type: ingress
        protocol: tcp
        start_port: 22
        end_port: 22
        cidr: 10.1.0.0/16
    - name: the web from anywhere
      ngine_io.cloudstack.cs_securitygroup_rule:
        security_group: "{{ sg }}"
        protocol: tcp
        start_port: 80
        end_port: 80
    - name: the app ports from its own members
      ngine_io.cloudstack.cs_securitygroup_rule:
        security_group: "{{ sg }}"
        user_security_group: "{{ sg }}"
        protocol: tcp
        start_port: 8000
        end_port: 8100
    - name: out only to DNS
      ngine_io.cloudstack.cs_securitygroup_rule:
        security_group: "{{ sg }}"
        type: egress
        protocol: udp
        start_port: 53
        end_port: 53
        cidr: 0.0.0.0/0
      register: egress
    - name: the report
      ansible.builtin.copy:
        content: "{{ {'egress': egress} | to_json }}"
        dest: "{{ report }}"
      changed_when: false
"""


def test_security_group_modules_run_twice_the_second_time_unchanged(stage: Stage) -> None:
    """cs_securitygroup and cs_securitygroup_rule (CIDR, own-group and egress rules) as the user."""
    sg = f"web-{uuid.uuid4().hex[:6]}"
    first, _ = _play(stage, sg, SECURITY_PLAYBOOK, {"sg": sg})
    assert first == {"ok": 6, "changed": 5, "unreachable": 0, "failed": 0}, first
    again, report = _play(stage, sg, SECURITY_PLAYBOOK, {"sg": sg})
    assert again == {"ok": 6, "changed": 0, "unreachable": 0, "failed": 0}, again
    egress = report["egress"]
    assert isinstance(egress, dict) and egress["protocol"] == "udp" and egress["start_port"] == 53, egress
    [group] = stage.api.listSecurityGroups(securitygroupname=sg)["securitygroup"]
    assert group["description"] == "web servers"
    ingress = sorted((r["protocol"], r["startport"], r.get("cidr") or r.get("securitygroupname"))
                     for r in group["ingressrule"])  # fmt: skip
    assert ingress == [("tcp", 22, "10.1.0.0/16"), ("tcp", 80, "0.0.0.0/0"), ("tcp", 8000, sg)], group
    assert [(r["protocol"], r["startport"], r["cidr"]) for r in group["egressrule"]] == [("udp", 53, "0.0.0.0/0")]
