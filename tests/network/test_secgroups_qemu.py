"""Security groups on real hosts with real QEMU guests (TCG, the tiny image): the server and two agents
each in a network namespace of the test (tests/helpers/netns.py), a zone with security groups and a
shared network (DHCP from its router namespace), nftables applied by the agents.

Three guests boot at once on the shared network: a (host-1) and b (host-2) of the admin account in its
default group; c (host-1) of another account, in that account's group `other`. The guests' own probes,
read on their consoles, show:
- b reaches a (ping, TCP) across hosts: the default group lets in its own members;
- c cannot reach a's port; authorizeSecurityGroupIngress (from group other) lets it in, on the running
  VMs, within seconds; revokeSecurityGroupIngress cuts it again;
- an egress rule on group other (TCP to b only) lets c reach b's port but no longer a's, although a's
  ingress allows c then.
Then: an agent restart keeps the filter; a stopped VM's chains leave its host; after the VMs are
expunged and the network deleted, nothing of the filter is left on the hosts.
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cs import CloudStack
from test_network_qemu import NetCloud, _relay, _wait_console, lab_cloud

from helpers.agentproc import AgentProcess, start_agent
from helpers.serverproc import ServerProcess, create_user_keys, wait_job

pytestmark = pytest.mark.qemu
PORT = 7000
A, B, C = "10.40.0.11", "10.40.0.12", "10.40.0.13"
TENANT = "tenant2"


@pytest.fixture(scope="module")
def sgcloud(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NetCloud]:
    with lab_cloud(tmp_path_factory.mktemp("sgq"), "s", _make) as cloud:
        yield cloud


def _make(server: ServerProcess, agents: dict[str, AgentProcess], base: Path, image: Path) -> dict[str, str]:
    api = server.cs(timeout=120)
    api.updateConfiguration(name="ping.interval", value="2")  # the monitor's reconcile rounds
    zone = api.createZone(name="sgq", networktype="Advanced", securitygroupenabled=True)["zone"]
    pod = api.createPod(name="p", zoneid=zone["id"])["pod"]
    cluster = api.addCluster(clustername="c", zoneid=zone["id"], podid=pod["id"], hypervisor="KVM")["cluster"][0]
    ids = {"zone": zone["id"], "domain": zone.get("domainid") or ""}
    for host, agent in agents.items():
        ids[host] = api.addHost(zoneid=zone["id"], podid=pod["id"], clusterid=cluster["id"], url=agent.url,
                                username="x", password=agent.token, hypervisor="KVM")["host"][0]["id"]  # fmt: skip
    store = base / "store"
    store.mkdir()
    api.addImageStore(name="s", provider="NFS", url=f"file://localhost{store}", zoneid=zone["id"])
    tmpl = api.registerTemplate(name="t", displaytext="t", url=f"file://{image}", format="QCOW2", hypervisor="KVM",
                                zoneid=zone["id"], ostypeid="Other Linux (64-bit)", ispublic=True)  # fmt: skip
    assert wait_job(api, tmpl["template"][0]["jobid"], 120)["jobstatus"] == 1
    ids["template"] = tmpl["template"][0]["id"]
    ids["offering"] = api.createServiceOffering(name="s", displaytext="s", cpunumber=1, cpuspeed=1000,
                                                memory=128, storagetype="local")["serviceoffering"]["id"]  # fmt: skip
    pn = api.createPhysicalNetwork(zoneid=zone["id"], name="guest", vlan="5000-5009")
    assert wait_job(api, pn["jobid"])["jobstatus"] == 1
    offering = api.listNetworkOfferings(name="DefaultSharedNetworkOfferingWithSGService")["networkoffering"][0]
    net = api.createNetwork(name="shared", displaytext="shared", zoneid=zone["id"], networkofferingid=offering["id"],
                            gateway="10.40.0.1", netmask="255.255.255.0", startip="10.40.0.10", endip="10.40.0.99",
                            vlan="5001")  # fmt: skip
    ids["network"] = net["network"]["id"]
    keys = create_user_keys(api, server.endpoint, username=TENANT)
    ids["tenant_domain"] = str(keys.domainid)
    tenant = server.cs(keys, timeout=60)
    ids["other"] = tenant.createSecurityGroup(name="other", description="c's group")["securitygroup"]["id"]
    return ids


def _deploy(cloud: NetCloud, name: str, host: str, ip: str, commands: str, **owner: Any) -> str:
    started = cloud.api().deployVirtualMachine(
        zoneid=cloud.ids["zone"], serviceofferingid=cloud.ids["offering"], templateid=cloud.ids["template"],
        name=name, hostid=cloud.ids[host], networkids=cloud.ids["network"], ipaddress=ip,
        **{"details[0].guestcommands": commands}, **owner,
    )  # fmt: skip
    return str(started["jobid"])


def _end(item: str, rc: int) -> str:
    return f"STRATO-RUN-END {item} rc={rc}"


def _sg_table(cloud: NetCloud, host: str) -> dict[str, Any] | None:
    done = subprocess.run(["ip", "netns", "exec", cloud.lab.ns[host], "nft", "-j", "list", "table", "inet",
                           "strato_sg"], capture_output=True, text=True, timeout=30, check=False)  # fmt: skip
    return json.loads(done.stdout) if done.returncode == 0 else None


def _ingress_chains(cloud: NetCloud, host: str) -> int:
    table = _sg_table(cloud, host)
    if table is None:
        return 0
    return sum(1 for item in table["nftables"] if "chain" in item and item["chain"]["name"].startswith("in-"))


def _until(what: str, check: Any, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"{what}: not within {timeout} s"
        time.sleep(0.5)


def _authorize_from_other(api: CloudStack, default_id: str) -> str:
    done = api.authorizeSecurityGroupIngress(securitygroupid=default_id, protocol="tcp", startport=PORT, endport=PORT,
                                             usersecuritygrouplist=[{"account": TENANT, "group": "other"}])  # fmt: skip
    job = wait_job(api, done["jobid"])
    assert job["jobstatus"] == 1, job
    return str(job["jobresult"]["securitygroup"]["ingressrule"][0]["ruleid"])


def test_groups_filter_running_guests(sgcloud: NetCloud) -> None:
    cloud, api = sgcloud, sgcloud.api()
    probe_a1, probe_a2, probe_a3, probe_a4 = (f"tcp-probe:{A}:{PORT}:{s}" for s in (8, 150, 9, 10))
    probe_b = f"tcp-probe:{B}:{PORT}:60"
    jobs = {
        "a": _deploy(cloud, "a", "host-1", A, f"net-up;tcp-serve:{PORT}"),
        "b": _deploy(cloud, "b", "host-2", B, f"net-up;ping:{A}:90;tcp-probe:{A}:{PORT}:60;tcp-serve:{PORT}"),
        "c": _deploy(cloud, "c", "host-1", C, f"net-up;{probe_a1};{probe_a2};sleep:10;{probe_a3};sleep:10;"
                     f"{probe_b};{probe_a4}", account=TENANT, domainid=cloud.ids["tenant_domain"],
                     securitygroupids=cloud.ids["other"]),
    }  # fmt: skip
    vms = {}
    for key, job in jobs.items():
        done = wait_job(api, job, 180)
        assert done["jobstatus"] == 1, done
        vms[key] = done["jobresult"]["virtualmachine"]
    assert [g["name"] for g in vms["a"]["securitygroup"]] == ["default"]
    assert [(g["name"], g["account"]) for g in vms["c"]["securitygroup"]] == [("other", TENANT)]
    hosts = {"a": "host-1", "b": "host-2", "c": "host-1"}
    for key, vm in vms.items():  # DHCP from the shared network's router namespace, through the filter
        log = _wait_console(cloud, hosts[key], vm, r"STRATO-NET: eth0 \S+")
        assert f"STRATO-NET: eth0 {vm['nic'][0]['ipaddress']}/24" in log, log[-2000:]

    log_b = _wait_console(cloud, "host-2", vms["b"], rf"STRATO-RUN-END tcp-probe:{A}:\S+ rc=\d")
    assert _end(f"ping:{A}:90", 0) in log_b and _end(f"tcp-probe:{A}:{PORT}:60", 0) in log_b, log_b[-2000:]

    # c is kept out of a's port; an ingress rule from its group lets it in on the running VMs.
    log_c = _wait_console(cloud, "host-1", vms["c"], rf"STRATO-RUN-END {probe_a1} rc=\d")
    assert _end(probe_a1, 1) in log_c, log_c[-2000:]
    default = api.listSecurityGroups(securitygroupname="default")["securitygroup"][0]
    allowed_at = time.monotonic()
    rule_id = _authorize_from_other(api, default["id"])
    log_c = _wait_console(cloud, "host-1", vms["c"], rf"STRATO-RUN-END {probe_a2} rc=\d", timeout=60)
    took = time.monotonic() - allowed_at
    assert _end(probe_a2, 0) in log_c, log_c[-2000:]
    print(f"authorizeSecurityGroupIngress reached the running guests in {took:.1f} s")  # shown with -s
    assert took < 30, f"the rule reached the running guests after {took:.1f} s"

    # Revoked: c's next probe (after a 10 s pause: time for the test to revoke) is refused again.
    assert wait_job(api, api.revokeSecurityGroupIngress(id=rule_id)["jobid"])["jobstatus"] == 1
    log_c = _wait_console(cloud, "host-1", vms["c"], rf"STRATO-RUN-END {probe_a3} rc=\d", timeout=90)
    assert _end(probe_a3, 1) in log_c, log_c[-2000:]

    # Egress: group other may send TCP to b only; a's ingress lets c in again, yet c no longer gets there.
    _authorize_from_other(api, default["id"])
    tenant_other = {"securitygroupid": cloud.ids["other"], "protocol": "tcp", "startport": PORT, "endport": PORT}
    out = api.authorizeSecurityGroupEgress(**tenant_other, cidrlist=f"{B}/32")
    assert wait_job(api, out["jobid"])["jobstatus"] == 1
    log_c = _wait_console(cloud, "host-1", vms["c"], rf"STRATO-RUN-END {probe_a4} rc=\d", timeout=150)
    assert _end(probe_b, 0) in log_c and _end(probe_a4, 1) in log_c, log_c[-2000:]

    _filter_survives_agent_restart(cloud)
    assert _ingress_chains(cloud, "host-1") == 2  # a and c
    assert wait_job(api, api.stopVirtualMachine(id=vms["c"]["id"], forced=True)["jobid"], 120)["jobstatus"] == 1
    _until("c's chains leave host-1 after it stopped", lambda: _ingress_chains(cloud, "host-1") == 1)

    for vm in vms.values():
        done = wait_job(api, api.destroyVirtualMachine(id=vm["id"], expunge=True)["jobid"], 120)
        assert done["jobstatus"] == 1, done
    _until("the filter leaves the hosts", lambda: _sg_table(cloud, "host-1") is None and
           _sg_table(cloud, "host-2") is None)  # fmt: skip
    assert wait_job(api, api.deleteNetwork(id=cloud.ids["network"])["jobid"])["jobstatus"] == 1


def _filter_survives_agent_restart(cloud: NetCloud) -> None:
    """host-1's agent crashes and comes back: the kernel's tables stay as they were, and the monitor
    finds nothing to re-send (the agent reports the digest of what it applied)."""
    before = _sg_table(cloud, "host-1")
    assert before is not None
    old = cloud.agents["host-1"]
    old.kill()
    cloud.agents["host-1"] = start_agent(
        old.data_dir, token=old.token, driver="qemu", accel="tcg", port=old.port,
        command_prefix=cloud.lab.run("host-1", []), listen_host=cloud.lab.addr["host-1"],
        test_url_for=_relay(cloud.lab, "host-1"),
    )  # fmt: skip
    time.sleep(5)  # two monitor rounds
    after = _sg_table(cloud, "host-1")
    assert after is not None
    strip = lambda t: [{k: {f: v for f, v in i[k].items() if f != "handle"} for k in i} for i in t["nftables"]]  # noqa: E731
    assert strip(after) == strip(before)
