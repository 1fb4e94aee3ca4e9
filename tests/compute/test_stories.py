"""Issue 4's stories end to end with the `cs` client and the real QEMU driver: each disk's file is where
listVolumes says (`path` under the directory of the pool `storageid` names) and the guest boots with all
its disks (its STRATO-DISKS line).

Boots are the expensive part under TCG (~10 s each), so one VM serves several stories where the issue
allows it: the 3-disk VM of "Add VM" takes the hot-plugged disk of "Add disk to VM", and the imported VM
of "Import VM" is the source of "Create template from VM".
"""

from __future__ import annotations

import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from computelib import GIB, MIB, Env, qemu_img, qemu_img_info, qemu_io_write

pytestmark = pytest.mark.qemu


def _tag() -> str:
    return uuid.uuid4().hex[:6]


# --- Add VM, Add disk to VM --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def three_disk_vm(env: Env) -> Iterator[dict[str, Any]]:
    vm = env.deploy(
        f"add-vm-{_tag()}",
        hostid=env.hosts["host1"]["id"],
        rootdiskstorageid=env.pools["local1"]["id"],
        datadisksdetails=[
            {"diskofferingid": env.disk_offering["id"], "storageid": env.pools["shared1"]["id"]},
            {"diskofferingid": env.disk_offering["id"], "storageid": env.pools["shared2"]["id"]},
        ],
    )
    try:
        yield vm
    finally:
        env.destroy(vm["id"])


def test_add_vm_three_disks_on_three_pools(env: Env, three_disk_vm: dict[str, Any]) -> None:
    vm = three_disk_vm
    assert vm["state"] == "Running" and vm["hostid"] == env.hosts["host1"]["id"]
    vols = env.volumes(vm["id"])
    assert [v["type"] for v in vols] == ["ROOT", "DATADISK", "DATADISK"]
    for vol, pool in zip(vols, ("local1", "shared1", "shared2"), strict=True):
        env.assert_on_pool(vol, pool)
        assert vol["state"] == "Ready"
    # The root disk is a linked clone of the template's copy cached on local1.
    root_info = qemu_img_info(vols[0]["path"])
    cached = Path(env.pools["local1"]["path"]) / "templates" / f"{env.template['id']}.qcow2"
    assert Path(root_info["full-backing-filename"]).resolve() == cached.resolve()
    assert env.boot_disks(vm) == {"vda": env.template["size"], "vdb": GIB, "vdc": GIB}


def test_add_disk_to_running_vm_on_another_pool(env: Env, three_disk_vm: dict[str, Any]) -> None:
    vm = three_disk_vm
    env.boot_disks(vm)  # the guest is up (hot-plug needs its PCI hot-plug support loaded)
    # A pool that none of the VM's disks uses, reachable from its host: a second host-local pool on host1.
    path = env.base / "local1b"
    path.mkdir(exist_ok=True)
    if "local1b" not in env.pools:
        env.pools["local1b"] = env.api.createStoragePool(
            name=f"local1b-{_tag()}",
            zoneid=env.zoneid,
            podid=env.podid,
            clusterid=env.clusterid,
            hostid=env.hosts["host1"]["id"],
            scope="host",
            url=f"file://localhost{path}",
        )["storagepool"]
    used = {v["storageid"] for v in env.volumes(vm["id"])}
    assert env.pools["local1b"]["id"] not in used
    vol = env.api.createVolume(
        name=f"hot-{_tag()}",
        zoneid=env.zoneid,
        diskofferingid=env.disk_offering["id"],
        storageid=env.pools["local1b"]["id"],
    )["volume"]
    assert vol["state"] == "Ready" and not vol.get("virtualmachineid")
    env.assert_on_pool(env.volume(vol["id"]), "local1b")
    attached = env.api.attachVolume(id=vol["id"], virtualmachineid=vm["id"])["volume"]
    assert attached["virtualmachineid"] == vm["id"] and attached["deviceid"] == 3
    assert env.block_devices(vm) == {0, 1, 2, 3}  # QEMU has it (query-blockstats through the agent)
    # A reboot shows it in the guest's own list of disks.
    env.api.rebootVirtualMachine(id=vm["id"])
    assert env.wait_boots(vm, 2) == {"vda": env.template["size"], "vdb": GIB, "vdc": GIB, "vdd": GIB}
    # Forced stop of a running VM.
    stopped = env.api.stopVirtualMachine(id=vm["id"], forced=True)["virtualmachine"]
    assert stopped["state"] == "Stopped" and not stopped.get("hostid")


# --- Import VM, Create template from VM ----------------------------------------------------------------


@pytest.fixture(scope="module")
def imported_vm(env: Env) -> Iterator[dict[str, Any]]:
    """importVm from a qcow2 root, a raw and a qcow2 data disk in a directory on host1."""
    src = env.base / f"import-{_tag()}"
    src.mkdir()
    root = src / "root.qcow2"
    shutil.copyfile(env.tiny_image, root)
    data1, data2 = src / "data1.raw", src / "data2.qcow2"
    qemu_img("create", "-f", "raw", str(data1), str(32 * MIB))
    qemu_img("create", "-f", "qcow2", str(data2), str(48 * MIB))
    qemu_io_write(data1, "raw", 0, MIB)
    vm = env.api.importVm(
        name=f"imported-{_tag()}",
        hostid=env.hosts["host1"]["id"],
        importsource="local",
        diskpath=str(root),
        storageid=env.pools["local1"]["id"],
        datadisks=[
            {"diskpath": str(data1), "storageid": env.pools["shared1"]["id"]},
            {"diskpath": str(data2), "storageid": env.pools["shared2"]["id"]},
        ],
        serviceofferingid=env.offering["id"],
    )["virtualmachine"]
    try:
        yield {**vm, "sources": [root, data1, data2]}
    finally:
        env.destroy(vm["id"])
        shutil.rmtree(src, ignore_errors=True)


def test_import_vm_each_disk_onto_a_chosen_pool(env: Env, imported_vm: dict[str, Any]) -> None:
    vm = imported_vm
    assert vm["state"] == "Stopped"
    vols = env.volumes(vm["id"])
    assert [v["type"] for v in vols] == ["ROOT", "DATADISK", "DATADISK"]
    for vol, pool in zip(vols, ("local1", "shared1", "shared2"), strict=True):
        path = env.assert_on_pool(vol, pool)
        assert qemu_img_info(path)["format"] == "qcow2"  # a raw source is converted
        assert vol["state"] == "Ready"
    assert [v["size"] for v in vols] == [env.template["size"], 32 * MIB, 48 * MIB]
    assert all(p.is_file() for p in vm["sources"])  # the sources are left alone
    started = env.api.startVirtualMachine(id=vm["id"])["virtualmachine"]
    assert started["state"] == "Running"
    assert env.boot_disks(started) == {"vda": env.template["size"], "vdb": 32 * MIB, "vdc": 48 * MIB}
    stopped = env.api.stopVirtualMachine(id=vm["id"], forced=True)["virtualmachine"]
    assert stopped["state"] == "Stopped"


def test_create_template_from_vm_then_deploy_it(env: Env, imported_vm: dict[str, Any]) -> None:
    vm = imported_vm
    if env.vm(vm["id"])["state"] != "Stopped":
        env.api.stopVirtualMachine(id=vm["id"], forced=True)
    vols = env.volumes(vm["id"])
    # Every disk on an image store or pool that the VM's disks are not on: store2, and local2 for disk 2.
    tmpl = env.api.createTemplate(
        name=f"from-vm-{_tag()}",
        displaytext="from a VM",
        virtualmachineid=vm["id"],
        imagestoreid=env.stores["store2"]["id"],
        datadisks=[{"volumeid": vols[2]["id"], "storageid": env.pools["local2"]["id"]}],
    )["template"]
    info = env.template_info(tmpl["id"])
    assert info["isready"] and len(info["childtemplates"]) == 2
    children = sorted(info["childtemplates"], key=lambda c: c["diskindex"])
    store2 = Path(env.stores["store2"]["path"])
    assert (store2 / "template" / tmpl["id"] / f"{tmpl['id']}.qcow2").is_file()
    assert (store2 / "template" / children[0]["id"] / f"{children[0]['id']}.qcow2").is_file()
    assert (Path(env.pools["local2"]["path"]) / "templates" / f"{children[1]['id']}.qcow2").is_file()
    locations = env.template_info(children[1]["id"])["locations"]
    assert [(loc["type"], loc["id"]) for loc in locations] == [("storagepool", env.pools["local2"]["id"])]
    assert [c["size"] for c in children] == [32 * MIB, 48 * MIB]

    new = env.deploy(
        f"from-vm-tmpl-{_tag()}",
        templateid=tmpl["id"],
        hostid=env.hosts["host2"]["id"],
        rootdiskstorageid=env.pools["shared1"]["id"],
        datadiskofferinglist=[
            {"datadisktemplateid": children[0]["id"], "storageid": env.pools["local2"]["id"]},
            {"datadisktemplateid": children[1]["id"], "storageid": env.pools["shared2"]["id"]},
        ],
    )
    try:
        new_vols = env.volumes(new["id"])
        for vol, pool in zip(new_vols, ("shared1", "local2", "shared2"), strict=True):
            env.assert_on_pool(vol, pool)
        assert env.boot_disks(new) == {"vda": env.template["size"], "vdb": 32 * MIB, "vdc": 48 * MIB}
    finally:
        env.destroy(new["id"])


# --- Import template (3 disks), Create VM from template ---------------------------------------------


@pytest.fixture(scope="module")
def three_disk_template(env: Env) -> Iterator[dict[str, Any]]:
    src = env.base / f"tmpl-src-{_tag()}"
    src.mkdir()
    data1, data2 = src / "data1.qcow2", src / "data2.raw"
    qemu_img("create", "-f", "qcow2", str(data1), str(40 * MIB))
    qemu_io_write(data1, "qcow2", 0, 2 * MIB)
    qemu_img("create", "-f", "raw", str(data2), str(24 * MIB))
    qemu_io_write(data2, "raw", MIB, MIB)
    registered = env.api.registerTemplate(
        name=f"three-disks-{_tag()}",
        displaytext="root + 2 data disks",
        url=f"file://{env.tiny_image}",
        format="QCOW2",
        hypervisor="KVM",
        zoneid=env.zoneid,
        imagestoreid=env.stores["store1"]["id"],
        datadisks=[
            {"url": f"file://{data1}", "format": "QCOW2", "imagestoreid": env.stores["store2"]["id"]},
            {"url": f"file://{data2}", "format": "RAW", "storageid": env.pools["shared2"]["id"]},
        ],
    )["template"][0]
    job = env.job(registered["jobid"])
    assert job["jobstatus"] == 1, job
    try:
        yield env.template_info(registered["id"])
    finally:
        shutil.rmtree(src, ignore_errors=True)


def test_import_template_with_three_disks(env: Env, three_disk_template: dict[str, Any]) -> None:
    tmpl = three_disk_template
    assert tmpl["isready"] and tmpl["status"] == "Download Complete"
    children = sorted(tmpl["childtemplates"], key=lambda c: c["diskindex"])
    shape = [(c["diskindex"], c["size"], c["state"]) for c in children]
    assert shape == [(1, 40 * MIB, "Ready"), (2, 24 * MIB, "Ready")]
    # The children are not listed as templates of their own, but by parenttemplateid.
    listed = env.api.listTemplates(templatefilter="self", name=children[0]["name"]).get("template", [])
    assert listed == []
    by_parent = env.api.listTemplates(templatefilter="self", parenttemplateid=tmpl["id"])["template"]
    assert sorted(t["id"] for t in by_parent) == sorted(c["id"] for c in children)
    store1, store2 = Path(env.stores["store1"]["path"]), Path(env.stores["store2"]["path"])
    assert (store1 / "template" / tmpl["id"] / f"{tmpl['id']}.qcow2").is_file()
    assert (store2 / "template" / children[0]["id"] / f"{children[0]['id']}.qcow2").is_file()
    on_pool = Path(env.pools["shared2"]["path"]) / "templates" / f"{children[1]['id']}.qcow2"
    assert on_pool.is_file()
    assert qemu_img_info(on_pool)["virtual-size"] == 24 * MIB
    assert [(loc["type"], loc["id"]) for loc in env.template_info(children[1]["id"])["locations"]] == [
        ("storagepool", env.pools["shared2"]["id"])
    ]


def test_create_vm_from_three_disk_template(env: Env, three_disk_template: dict[str, Any]) -> None:
    tmpl = three_disk_template
    children = sorted(tmpl["childtemplates"], key=lambda c: c["diskindex"])
    vm = env.deploy(
        f"from-3disk-{_tag()}",
        templateid=tmpl["id"],
        hostid=env.hosts["host2"]["id"],
        rootdiskstorageid=env.pools["local2"]["id"],
        datadiskofferinglist=[
            {
                "datadisktemplateid": children[0]["id"],
                "diskofferingid": env.disk_offering["id"],
                "storageid": env.pools["shared1"]["id"],
            },
            {"datadisktemplateid": children[1]["id"], "storageid": env.pools["shared2"]["id"]},
        ],
    )
    try:
        vols = env.volumes(vm["id"])
        paths = [env.assert_on_pool(v, p) for v, p in zip(vols, ("local2", "shared1", "shared2"), strict=True)]
        # Each data disk is a linked clone of its template disk's copy on its own pool.
        for path, child, pool in zip(paths[1:], children, ("shared1", "shared2"), strict=True):
            backing = Path(qemu_img_info(path)["full-backing-filename"]).resolve()
            assert backing == (Path(env.pools[pool]["path"]) / "templates" / f"{child['id']}.qcow2").resolve()
        # Disk 1 grew to its offering's 1 GiB; disk 2 kept the template disk's size.
        assert env.boot_disks(vm) == {"vda": env.template["size"], "vdb": GIB, "vdc": 24 * MIB}
    finally:
        env.destroy(vm["id"])


# --- Clone template ------------------------------------------------------------------------------------


def test_clone_template_to_store_and_pools(env: Env) -> None:
    registered = env.api.registerTemplate(
        name=f"clone-src-{_tag()}",
        displaytext="to be copied",
        url=f"file://{env.tiny_image}",
        format="QCOW2",
        hypervisor="KVM",
        zoneid=env.zoneid,
        imagestoreid=env.stores["store1"]["id"],
    )["template"][0]
    assert env.job(registered["jobid"])["jobstatus"] == 1
    tid = registered["id"]
    env.api.copyTemplate(id=tid, destimagestoreid=env.stores["store2"]["id"])
    copied = Path(env.stores["store2"]["path"]) / "template" / tid / f"{tid}.qcow2"
    assert copied.is_file()
    assert qemu_img_info(copied)["virtual-size"] == env.template["size"]
    env.api.copyTemplate(id=tid, deststorageid=env.pools["shared2"]["id"])
    on_shared2 = Path(env.pools["shared2"]["path"]) / "templates" / f"{tid}.qcow2"
    assert on_shared2.is_file()
    prepared = env.api.prepareTemplate(templateid=tid, zoneid=env.zoneid, storageid=env.pools["local2"]["id"])
    job = env.job(prepared["template"][0]["jobid"])
    assert job["jobstatus"] == 1, job
    on_local2 = Path(env.pools["local2"]["path"]) / "templates" / f"{tid}.qcow2"
    assert on_local2.is_file()
    locations = {(loc["type"], loc["id"], loc["state"]) for loc in env.template_info(tid)["locations"]}
    assert locations == {
        ("imagestore", env.stores["store1"]["id"], "Ready"),
        ("imagestore", env.stores["store2"]["id"], "Ready"),
        ("storagepool", env.pools["shared2"]["id"], "Ready"),
        ("storagepool", env.pools["local2"]["id"], "Ready"),
    }
    # Deleting it removes every copy.
    env.api.deleteTemplate(id=tid)
    assert not copied.exists() and not on_shared2.exists() and not on_local2.exists()
    assert not (Path(env.stores["store1"]["path"]) / "template" / tid / f"{tid}.qcow2").exists()
