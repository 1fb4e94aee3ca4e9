"""Linked clones: ten VMs deployed at once from one template onto one pool make exactly one cached copy
of the template there, and ten small top layers whose backing file is that copy."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest
from computelib import MIB, Env, qemu_img_info, states_settled

pytestmark = pytest.mark.qemu

COUNT = 10


def test_ten_linked_clones_share_one_cached_template_layer(env: Env) -> None:
    tag = uuid.uuid4().hex[:6]
    registered = env.api.registerTemplate(
        name=f"linked-{tag}",
        displaytext="for linked clones",
        url=f"file://{env.tiny_image}",
        format="QCOW2",
        hypervisor="KVM",
        zoneid=env.zoneid,
        imagestoreid=env.stores["store1"]["id"],
    )["template"][0]
    assert env.job(registered["jobid"])["jobstatus"] == 1
    tid = registered["id"]
    pool = env.pools["shared1"]
    pool_dir = Path(pool["path"])
    cached = pool_dir / "templates" / f"{tid}.qcow2"
    assert not cached.exists()
    # All ten at once: concurrent deploys must copy the template to the pool only once.
    jobs = [
        env.raw.deployVirtualMachine(
            name=f"linked-{tag}-{n}",
            zoneid=env.zoneid,
            serviceofferingid=env.offering["id"],
            templateid=tid,
            rootdiskstorageid=pool["id"],
            startvm=False,
        )
        for n in range(COUNT)
    ]
    vm_ids = [j["id"] for j in jobs]
    try:
        for j in jobs:
            done = env.job(j["jobid"])
            assert done["jobstatus"] == 1, done
        tmpl = env.template_info(tid)
        on_pools = [loc for loc in tmpl["locations"] if loc["type"] == "storagepool"]
        assert [(loc["id"], loc["path"]) for loc in on_pools] == [(pool["id"], f"templates/{tid}.qcow2")]
        assert sorted(p.name for p in (pool_dir / "templates").glob(f"{tid}*")) == [f"{tid}.qcow2"]
        template_bytes = qemu_img_info(cached)["actual-size"]
        assert template_bytes > 5 * MIB  # the tiny image holds a kernel and an initramfs
        for vm_id in vm_ids:
            [root] = env.volumes(vm_id)
            path = env.assert_on_pool(root, "shared1")
            info = qemu_img_info(path)
            assert Path(info["full-backing-filename"]).resolve() == cached.resolve()
            assert info["actual-size"] < template_bytes / 20, info
            assert root["physicalsize"] < template_bytes / 20
            assert root["size"] == env.template["size"]
    finally:
        expunges = [env.raw.destroyVirtualMachine(id=vm_id, expunge=True)["jobid"] for vm_id in vm_ids]
        for jobid in expunges:
            env.job(jobid)
    # The cached copy stays for the next deploy; deleting the template removes it.
    assert cached.is_file()
    env.api.deleteTemplate(id=tid)
    assert not cached.exists()
    assert list(states_settled(env)) == []


def test_full_clone_has_no_backing_file_and_grows_to_rootdisksize(env: Env) -> None:
    """fullclone=true copies the template into the root disk: no backing chain, all the template's data."""
    pool = env.pools["shared2"]
    vm = env.api.deployVirtualMachine(
        name=f"full-{uuid.uuid4().hex[:6]}",
        zoneid=env.zoneid,
        serviceofferingid=env.offering["id"],
        templateid=env.template["id"],
        rootdiskstorageid=pool["id"],
        rootdisksize=1,
        fullclone=True,
        startvm=False,
    )["virtualmachine"]
    try:
        [root] = env.volumes(vm["id"])
        path = env.assert_on_pool(root, "shared2")
        info = qemu_img_info(path)
        assert "backing-filename" not in info, info
        assert info["virtual-size"] == root["size"] == 1024 * MIB
        assert info["actual-size"] > 5 * MIB  # the kernel and initramfs were copied in
    finally:
        env.api.destroyVirtualMachine(id=vm["id"], expunge=True)
    assert list(states_settled(env)) == []
