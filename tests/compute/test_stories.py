"""Issue 4's stories end to end with the `cs` client and the real QEMU driver: where each disk's files are
(listVolumes' path under its pool's directory) and that the guest boots with all its disks."""

from __future__ import annotations

import pytest
from computelib import GIB, Env

pytestmark = pytest.mark.qemu


def test_add_vm_three_disks_on_three_pools(env: Env) -> None:
    vm = env.deploy(
        "add-vm",
        hostid=env.hosts["host1"]["id"],
        rootdiskstorageid=env.pools["local1"]["id"],
        datadisksdetails=[
            {"diskofferingid": env.disk_offering["id"], "storageid": env.pools["shared1"]["id"]},
            {"diskofferingid": env.disk_offering["id"], "storageid": env.pools["shared2"]["id"]},
        ],
    )
    assert vm["state"] == "Running"
    vols = env.volumes(vm["id"])
    assert [v["type"] for v in vols] == ["ROOT", "DATADISK", "DATADISK"]
    for vol, pool in zip(vols, ("local1", "shared1", "shared2"), strict=True):
        env.assert_on_pool(vol, pool)
    disks = env.boot_disks(vm)
    assert disks == {"vda": env.template["size"], "vdb": GIB, "vdc": GIB}
    env.destroy(vm["id"])
