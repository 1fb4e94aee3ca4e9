"""VM snapshots on a simulated cloud, through `cs`: the tree (parent, current) after create, revert and
create again (siblings), delete with no, one and two children, the database's layer chains matching the
tree and the simulator's records, and each rule and limit refused with its code."""

from __future__ import annotations

import json
import shutil
import sys
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from cs import CloudStack, CloudStackApiException

_TESTS = Path(__file__).resolve().parents[1]
for extra in (str(_TESTS), str(_TESTS / "engine")):
    if extra not in sys.path:
        sys.path.insert(0, extra)

from simcloud import simulated_cloud  # noqa: E402

from helpers.agentproc import AgentProcess, start_agent  # noqa: E402
from helpers.serverproc import ServerProcess, start_server, wait_job  # noqa: E402


class Cloud:
    def __init__(self, server: ServerProcess, agent: AgentProcess, ids: dict[str, str]) -> None:
        self.server, self.agent, self.ids = server, agent, ids
        self.api: CloudStack = server.cs(timeout=60)

    def ok(self, started: dict[str, Any], timeout: float = 60) -> dict[str, Any]:
        job = wait_job(self.api, started["jobid"], timeout)
        assert job["jobstatus"] == 1, job
        return dict(job.get("jobresult") or {})

    def fails(self, started: dict[str, Any]) -> tuple[int, str]:
        job = wait_job(self.api, started["jobid"], 60)
        assert job["jobstatus"] == 2, job
        return int(job["jobresult"]["errorcode"]), str(job["jobresult"]["errortext"])

    def deploy(self, start: bool = True) -> dict[str, Any]:
        started = self.api.deployVirtualMachine(zoneid=self.ids["zone"], serviceofferingid=self.ids["offering"],
                                                templateid=self.ids["template"], name=f"vs-{uuid.uuid4().hex[:6]}",
                                                startvm=start)  # fmt: skip
        self.ok(started, 120)
        return self.vm(started["id"])

    def vm(self, vm_id: str) -> dict[str, Any]:
        return dict(self.api.listVirtualMachines(id=vm_id, listall=True)["virtualmachine"][0])

    def snap(self, vm_id: str, name: str, memory: bool = False) -> dict[str, Any]:
        started = self.api.createVMSnapshot(virtualmachineid=vm_id, name=name, snapshotmemory=memory)
        return dict(self.ok(started)["vmsnapshot"])

    def snaps(self, vm_id: str) -> dict[str, dict[str, Any]]:
        return {s["name"]: s for s in self.api.listVMSnapshot(virtualmachineid=vm_id).get("vmSnapshot", [])}

    def tree(self, vm_id: str) -> dict[str, tuple[str | None, bool]]:
        """name -> (parent name, current)."""
        return {n: (s.get("parentName"), bool(s["current"])) for n, s in self.snaps(vm_id).items()}

    def revert(self, snap_id: str) -> None:
        self.ok(self.api.revertToVMSnapshot(vmsnapshotid=snap_id))

    def delete(self, snap_id: str) -> None:
        self.ok(self.api.deleteVMSnapshot(vmsnapshotid=snap_id))

    def stop(self, vm_id: str) -> None:
        self.ok(self.api.stopVirtualMachine(id=vm_id))

    def records(self) -> dict[str, dict[str, Any]]:
        """The simulator's layer records by name (all pools)."""
        data = json.loads((self.agent.data_dir / "simulator-state.json").read_text())
        out: dict[str, dict[str, Any]] = {}
        for layers in data["storage"]["layers"].values():
            out.update(layers)
        return out

    def check_chains(self, vm_id: str) -> None:
        """Every live layer of the VM's volumes has its record, with the backing the database says; no
        record of those volumes is unknown to the database; every snapshot disk holds a live layer."""
        rows = self.server.sql(
            "SELECT l.id, l.path, l.parent_id FROM layers l JOIN volumes v ON l.volume_id = v.id "
            "WHERE v.vm_id = ? AND l.removed IS NULL", vm_id
        )  # fmt: skip
        paths = {str(i): str(p) for i, p, _ in rows}
        records = self.records()
        for _lid, path, parent in rows:
            assert path in records, f"layer {path} has no file"
            backing = records[path].get("backing")
            if parent in paths:
                assert backing is not None and backing["name"] == paths[parent], (path, backing, paths[parent])
        vols = {str(v) for (v,) in self.server.sql("SELECT id FROM volumes WHERE vm_id = ?", vm_id)}
        mine = {n for n in records if n.startswith("volumes/") and n.split("/")[1] in vols}
        assert mine == set(paths.values()), (
            f"orphans {mine - set(paths.values())}, missing {set(paths.values()) - mine}"
        )
        held = self.server.sql(
            "SELECT l.removed FROM vm_snapshot_disks d JOIN layers l ON l.id = d.layer_id "
            "JOIN vm_snapshots s ON s.id = d.snapshot_id WHERE s.vm_id = ? AND d.removed IS NULL", vm_id
        )  # fmt: skip
        assert all(r is None for (r,) in held), "a snapshot holds a removed layer"


@pytest.fixture(scope="module")
def cloud(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cloud]:
    base = tmp_path_factory.mktemp("vmsnap")
    server = start_server(base / "server")
    agent: AgentProcess | None = None
    try:
        agent = start_agent(base / "agent", token=f"t-{uuid.uuid4().hex[:8]}", driver="simulator")
        ids = simulated_cloud(server.cs(timeout=60), agent, base / "store")
        yield Cloud(server, agent, ids)
    finally:
        server.stop()
        if agent is not None:
            agent.stop()
        shutil.rmtree(base, ignore_errors=True)


def _error(fn: Any) -> tuple[int, str]:
    try:
        fn()
    except CloudStackApiException as exc:
        err = exc.error if isinstance(exc.error, dict) else {}
        return int(err.get("errorcode", 0)), str(err.get("errortext", err))
    raise AssertionError("the call succeeded; an error was expected")


def test_tree_create_revert_siblings_and_deletes(cloud: Cloud) -> None:
    vm = cloud.deploy()
    a = cloud.snap(vm["id"], "a")
    assert a["type"] == "Disk" and a["state"] == "Ready" and a["current"] is True and "parent" not in a
    assert a["virtualmachineid"] == vm["id"] and a["account"] == "admin"
    b = cloud.snap(vm["id"], "b", memory=True)
    assert b["type"] == "DiskAndMemory" and b["parentName"] == "a"
    assert cloud.tree(vm["id"]) == {"a": (None, False), "b": ("a", True)}
    # A Disk snapshot is refused on the running VM, with the reason; memory is refused on a stopped one.
    code, text = _error(lambda: cloud.api.revertToVMSnapshot(vmsnapshotid=a["id"]))
    assert code == 431 and "stop the VM" in text, text
    # DiskAndMemory: the running VM is reverted and runs on.
    cloud.revert(b["id"])
    assert cloud.vm(vm["id"])["state"] == "Running"
    cloud.stop(vm["id"])
    assert _error(lambda: cloud.api.createVMSnapshot(virtualmachineid=vm["id"], snapshotmemory=True))[0] == 431
    cloud.revert(a["id"])
    assert cloud.vm(vm["id"])["state"] == "Stopped"
    c = cloud.snap(vm["id"], "c")  # a sibling of b
    assert cloud.tree(vm["id"]) == {"a": (None, False), "b": ("a", False), "c": ("a", True)}
    cloud.check_chains(vm["id"])
    # a has two children: it disappears from the API, its layers stay.
    cloud.delete(a["id"])
    assert cloud.tree(vm["id"]) == {"b": (None, False), "c": (None, True)}
    cloud.check_chains(vm["id"])
    hidden = cloud.server.sql("SELECT hidden FROM vm_snapshots WHERE id = ? AND removed IS NULL", a["id"])
    assert hidden == [(1,)], hidden
    # b has no child: its layers go, and the hidden a, left with one child, merges into c.
    cloud.delete(b["id"])
    assert cloud.tree(vm["id"]) == {"c": (None, True)}
    assert cloud.server.sql("SELECT removed IS NOT NULL FROM vm_snapshots WHERE id = ?", a["id"]) == [(1,)]
    cloud.check_chains(vm["id"])
    # The revert still works on the merged chain; then c (one child: the VM's present state) merges.
    cloud.revert(c["id"])
    cloud.delete(c["id"])
    assert cloud.tree(vm["id"]) == {}
    cloud.check_chains(vm["id"])
    chain = cloud.server.sql(
        "SELECT count(*) FROM layers l JOIN volumes v ON l.volume_id = v.id WHERE v.vm_id = ? AND l.removed IS NULL",
        vm["id"],
    )
    assert chain == [(1,)], chain  # the root disk is one layer again (on its template)


def _allocated(cloud: Cloud) -> int:
    return sum(int(p["disksizeallocated"]) for p in cloud.api.listStoragePools(zoneid=cloud.ids["zone"])["storagepool"])


def test_live_delete_merges_through_the_running_vm(cloud: Cloud) -> None:
    vm = cloud.deploy()
    a = cloud.snap(vm["id"], "a")
    before = _allocated(cloud)
    b = cloud.snap(vm["id"], "b", memory=True)
    assert _allocated(cloud) - before >= 128 << 20  # the pool counts the memory file (and frozen layers)
    cloud.delete(a["id"])  # one child (b): merged while the VM runs
    assert cloud.tree(vm["id"]) == {"b": (None, True)}
    cloud.delete(b["id"])  # its child is the running top
    assert cloud.tree(vm["id"]) == {}
    assert _allocated(cloud) <= before  # space comes back
    assert cloud.vm(vm["id"])["state"] == "Running"
    cloud.check_chains(vm["id"])


def test_rules_and_limits(cloud: Cloud) -> None:
    vm = cloud.deploy(start=False)
    s = cloud.snap(vm["id"], "r")
    vol = cloud.api.createVolume(name=f"d-{uuid.uuid4().hex[:4]}", zoneid=cloud.ids["zone"],
                                 diskofferingid=cloud.ids["disk_offering"])  # fmt: skip
    cloud.ok(vol)
    code, text = _error(lambda: cloud.api.attachVolume(id=vol["id"], virtualmachineid=vm["id"]))
    assert code == 431 and "VM snapshots" in text, text
    root = cloud.api.listVolumes(virtualmachineid=vm["id"], listall=True)["volume"][0]
    code, text = _error(lambda: cloud.api.resizeVolume(id=root["id"], size=4))
    assert code == 431 and "delete" in text.lower(), text
    # vmsnapshot.max, per VM (CloudStack answers 530)
    cloud.api.updateConfiguration(name="vmsnapshot.max", value="1")
    try:
        code, text = _error(lambda: cloud.api.createVMSnapshot(virtualmachineid=vm["id"]))
        assert code == 530 and "Please delete old ones" in text, text
    finally:
        cloud.api.updateConfiguration(name="vmsnapshot.max", value="10")
    # The account limit (Strato's resource type 14)
    user = cloud.api.createAccount(accounttype=0, email="u@x.invalid", firstname="u", lastname="u",
                                   password="pw-12345", username=f"u{uuid.uuid4().hex[:6]}")["account"]  # fmt: skip
    cloud.api.updateResourceLimit(resourcetype=14, max=0, account=user["name"], domainid=user["domainid"])
    limits = cloud.api.listResourceLimits(account=user["name"], domainid=user["domainid"], resourcetype=14)
    assert limits["resourcelimit"][0]["max"] == 0 and limits["resourcelimit"][0]["resourcetypename"] == "vm_snapshot"
    started = cloud.api.deployVirtualMachine(zoneid=cloud.ids["zone"], serviceofferingid=cloud.ids["offering"],
                                             templateid=cloud.ids["template"], startvm=False,
                                             account=user["name"], domainid=user["domainid"])  # fmt: skip
    cloud.ok(started, 120)
    code, text = _error(lambda: cloud.api.createVMSnapshot(virtualmachineid=started["id"]))
    assert code == 532 and "vm_snapshot" in text, text
    assert "r" in cloud.snaps(vm["id"]) and len(cloud.snaps(vm["id"])) == 1  # nothing made by the refusals
    cloud.delete(s["id"])
    cloud.ok(cloud.api.attachVolume(id=vol["id"], virtualmachineid=vm["id"]))  # allowed again


def test_usage_records_bill_each_snapshot_for_its_life(cloud: Cloud) -> None:
    """generateUsageRecords makes one record per snapshot per period with the hours it existed (a deleted
    one stops counting; a live one counts on when generated again, without a second record), and
    listUsageRecords finds them by type, account and resource."""
    vm = cloud.deploy(start=False)
    a = cloud.snap(vm["id"], "bill-a")
    born = time.monotonic()
    b = cloud.snap(vm["id"], "bill-b", memory=False)
    time.sleep(2)
    cloud.delete(a["id"])
    lived = time.monotonic() - born
    today = datetime.now(UTC)
    span = {"startdate": (today - timedelta(days=1)).strftime("%Y-%m-%d"), "enddate": today.strftime("%Y-%m-%d")}

    def hours() -> dict[str, float]:
        assert cloud.api.generateUsageRecords(**span)["success"] in (True, "true")
        rows = cloud.api.listUsageRecords(type=25, **span).get("usagerecord", [])
        mine = [r for r in rows if r["usageid"] in (a["id"], b["id"])]
        for r in mine:
            assert r["usagetype"] == 25 and r["virtualmachineid"] == vm["id"] and int(r["size"]) > 0, r
            assert r["account"] == "admin" and r["usage"].endswith(" Hrs"), r
        # one record per snapshot per period: a day boundary may split one life in two
        per: dict[str, float] = {}
        for r in mine:
            per[r["usageid"]] = per.get(r["usageid"], 0.0) + float(r["rawusage"])
        counts = [r["usageid"] for r in mine]
        assert all(counts.count(i) <= 2 for i in counts), counts
        return per

    first = hours()
    assert 1.5 / 3600 <= first[a["id"]] <= (lived + 1) / 3600, (first, lived)
    time.sleep(1.5)
    again = hours()
    assert again[a["id"]] == pytest.approx(first[a["id"]])  # deleted: no more hours
    assert again[b["id"]] > first[b["id"]] + 1 / 3600  # still there: counting on
    only_b = cloud.api.listUsageRecords(usageid=b["id"], **span)["usagerecord"]
    assert {r["usageid"] for r in only_b} == {b["id"]}
    types = cloud.api.listUsageTypes()["usagetype"]
    assert [t["usagetypeid"] for t in types] == [3, 9, 25]  # public IPs, volume and VM snapshots
    code, text = _error(lambda: cloud.api.listUsageRecords(startdate="yesterday", enddate=span["enddate"]))
    assert code == 431 and "startdate" in text, text
    code, text = _error(lambda: cloud.api.listUsageRecords(type=999, **span))
    assert code == 431 and "type" in text, text
    cloud.delete(b["id"])


def test_domain_limit_caps_the_subtree_and_lists_count_it(cloud: Cloud) -> None:
    """updateResourceLimit with a domain (no account) caps all its accounts, those of subdomains too;
    listDomains and listAccounts show limit, total and available; ROOT's limits cannot be changed."""
    api, tag = cloud.api, uuid.uuid4().hex[:6]
    parent = api.createDomain(name=f"lim-{tag}")["domain"]
    child = api.createDomain(name=f"sub-{tag}", parentdomainid=parent["id"])["domain"]
    owners = []
    for dom in (parent, child):
        acct = api.createAccount(accounttype=0, email="u@x.invalid", firstname="u", lastname="u", password="pw-12345",
                                 username=f"u{uuid.uuid4().hex[:6]}", domainid=dom["id"])["account"]  # fmt: skip
        owners.append(acct)
    api.updateResourceLimit(resourcetype=14, max=1, domainid=parent["id"])
    shown = api.listResourceLimits(domainid=parent["id"], resourcetype=14)["resourcelimit"]
    assert [(r["max"], r["domainid"]) for r in shown] == [(1, parent["id"])] and "account" not in shown[0]
    vms = []
    for acct in owners:
        started = api.deployVirtualMachine(zoneid=cloud.ids["zone"], serviceofferingid=cloud.ids["offering"],
                                           templateid=cloud.ids["template"], startvm=False,
                                           account=acct["name"], domainid=acct["domainid"])  # fmt: skip
        cloud.ok(started, 120)
        vms.append(started["id"])
    first = cloud.snap(vms[1], "in-child")  # the child domain's account uses the parent's one
    code, text = _error(lambda: api.createVMSnapshot(virtualmachineid=vms[0]))
    assert code == 532 and f"domain {parent['name']}" in text and "vm_snapshot" in text, text
    dom = api.listDomains(id=parent["id"])["domain"][0]
    assert (dom["vmsnapshotlimit"], dom["vmsnapshottotal"], dom["vmsnapshotavailable"]) == ("1", 1, "0"), dom
    assert dom["vmtotal"] == 2 and dom["vmlimit"] == "Unlimited", dom
    sub = api.listDomains(id=child["id"])["domain"][0]
    assert sub["vmsnapshottotal"] == 1 and sub["vmsnapshotlimit"] == "Unlimited", sub
    acct = api.listAccounts(id=owners[1]["id"])["account"][0]
    assert (acct["vmsnapshottotal"], acct["vmtotal"], acct["volumetotal"]) == (1, 1, 1), acct
    root = api.listDomains(name="ROOT")["domain"][0]
    code, text = _error(lambda: api.updateResourceLimit(resourcetype=14, max=5, domainid=root["id"]))
    assert code == 431 and "ROOT" in text, text
    api.updateResourceLimit(resourcetype=14, max=-1, domainid=parent["id"])
    cloud.delete(cloud.snap(vms[0], "now-allowed")["id"])
    cloud.delete(first["id"])
