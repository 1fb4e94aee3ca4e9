"""Infrastructure inventory through the API: zones, pods, clusters, storage pools of cluster and zone
scope, image stores, service and disk offerings. (Host-scope pools need a host: the agent issue.)"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from cs import CloudStack, CloudStackApiException

from helpers.serverproc import Keys, ServerProcess


def _fails(fn: Callable[..., Any], **params: Any) -> dict[str, Any]:
    with pytest.raises(CloudStackApiException) as err:
        fn(**params)
    error: dict[str, Any] = err.value.error
    return error


@pytest.fixture
def topo(admin: CloudStack, unique: Callable[[str], str]) -> dict[str, Any]:
    zone = admin.createZone(name=unique("zone"), networktype="Advanced", localstorageenabled=True)["zone"]
    pod = admin.createPod(
        name=unique("pod"),
        zoneid=zone["id"],
        gateway="10.0.0.1",
        netmask="255.255.255.0",
        startip="10.0.0.10",
        endip="10.0.0.50",
    )["pod"]
    cluster = admin.addCluster(
        clustername=unique("cluster"),
        zoneid=zone["id"],
        podid=pod["id"],
        hypervisor="KVM",
        clustertype="CloudManaged",
    )["cluster"][0]
    return {"zone": zone, "pod": pod, "cluster": cluster}


def test_zone_pod_cluster_crud(admin: CloudStack, topo: dict[str, Any], unique: Callable[[str], str]) -> None:
    zone, pod, cluster = topo["zone"], topo["pod"], topo["cluster"]
    assert zone["networktype"] == "Advanced" and zone["localstorageenabled"] is True
    assert zone["allocationstate"] == "Enabled"
    assert pod["zoneid"] == zone["id"] and pod["zonename"] == zone["name"] and pod["gateway"] == "10.0.0.1"
    assert cluster["podid"] == pod["id"] and cluster["zoneid"] == zone["id"]
    assert cluster["hypervisortype"] == "KVM"

    assert admin.listZones(id=zone["id"])["zone"][0]["name"] == zone["name"]
    assert [p["id"] for p in admin.listPods(zoneid=zone["id"])["pod"]] == [pod["id"]]
    assert [c["id"] for c in admin.listClusters(podid=pod["id"])["cluster"]] == [cluster["id"]]

    renamed = admin.updateZone(id=zone["id"], name=unique("renamed"), allocationstate="Disabled")["zone"]
    assert renamed["allocationstate"] == "Disabled"
    assert admin.listZones(id=zone["id"])["zone"][0]["name"] == renamed["name"]

    # Names are unique; children must be in their parent; a zone with pods cannot go.
    assert "already exists" in _fails(admin.createZone, name=renamed["name"])["errortext"]
    other = admin.createZone(name=unique("other"))["zone"]
    err = _fails(admin.addCluster, clustername=unique("c"), zoneid=other["id"], podid=pod["id"], hypervisor="KVM")
    assert err["errorcode"] == 431 and "does not belong" in err["errortext"]
    err = _fails(admin.addCluster, clustername=unique("c"), zoneid=zone["id"], podid=pod["id"], hypervisor="Hyper-Q")
    assert err["errorcode"] == 431 and "hypervisor" in err["errortext"]
    err = _fails(admin.deleteZone, id=zone["id"])
    assert err["errorcode"] == 536 and "still has" in err["errortext"]
    assert _fails(admin.deletePod, id=pod["id"])["errorcode"] == 536

    admin.deleteCluster(id=cluster["id"])
    admin.deletePod(id=pod["id"])
    admin.deleteZone(id=zone["id"])
    assert admin.listZones(id=zone["id"]) == {}
    assert admin.listPods(id=pod["id"]) == {}
    assert _fails(admin.deleteZone, id=zone["id"])["errorcode"] == 431


def test_storage_pools_of_cluster_and_zone_scope(
    admin: CloudStack, topo: dict[str, Any], unique: Callable[[str], str]
) -> None:
    zone, cluster = topo["zone"], topo["cluster"]
    cpool = admin.createStoragePool(
        name=unique("cpool"),
        zoneid=zone["id"],
        clusterid=cluster["id"],
        scope="cluster",
        url="SharedMountPoint://localhost/mnt/shared-c",
        tags="fast,ssd",
        capacitybytes=10 * 2**30,
    )["storagepool"]
    assert cpool["scope"] == "CLUSTER" and cpool["type"] == "SharedMountPoint"
    assert cpool["clusterid"] == cluster["id"] and cpool["podid"] == topo["pod"]["id"]
    assert cpool["path"] == "/mnt/shared-c" and cpool["state"] == "Up" and cpool["tags"] == "fast,ssd"
    assert cpool["disksizetotal"] == 10 * 2**30

    zpool = admin.createStoragePool(
        name=unique("zpool"),
        zoneid=zone["id"],
        scope="zone",
        hypervisor="KVM",
        url="SharedMountPoint://localhost/mnt/shared-z",
    )["storagepool"]
    assert zpool["scope"] == "ZONE" and "clusterid" not in zpool

    listed = {p["id"] for p in admin.listStoragePools(zoneid=zone["id"])["storagepool"]}
    assert listed == {cpool["id"], zpool["id"]}
    assert [p["id"] for p in admin.listStoragePools(zoneid=zone["id"], scope="zone")["storagepool"]] == [zpool["id"]]

    updated = admin.updateStoragePool(id=cpool["id"], tags="slow", enabled=False)["storagepool"]
    assert updated["tags"] == "slow" and updated["state"] == "Disabled"
    assert admin.updateStoragePool(id=cpool["id"], enabled=True)["storagepool"]["state"] == "Up"

    # A cluster with a pool cannot be deleted; after the pool is gone it can.
    assert _fails(admin.deleteCluster, id=cluster["id"])["errorcode"] == 536
    admin.deleteStoragePool(id=cpool["id"])
    admin.deleteStoragePool(id=zpool["id"])
    assert admin.listStoragePools(zoneid=zone["id"]) == {}
    admin.deleteCluster(id=cluster["id"])


@pytest.mark.parametrize(
    ("params", "fragment"),
    [
        ({"scope": "zone", "url": "file://localhost/var/pool"}, "local to one host"),
        ({"scope": "cluster", "url": "file://localhost/var/pool"}, "local to one host"),
        ({"scope": "host", "url": "file://localhost/var/pool"}, "hostid is required"),
        ({"scope": "zone", "url": "nfs://filer/export"}, "not mounted by Strato"),
        ({"scope": "zone", "url": "iscsi://target/lun"}, "unsupported scheme"),
        ({"scope": "zone", "url": "SharedMountPoint://otherhost/mnt/x"}, "localhost"),
        ({"scope": "zone", "url": "SharedMountPoint://localhost/../etc"}, "absolute path"),
        ({"scope": "cluster", "url": "SharedMountPoint://localhost/mnt/x"}, "clusterid is required"),
        ({"scope": "galaxy", "url": "SharedMountPoint://localhost/mnt/x"}, "scope"),
    ],
)
def test_bad_storage_pools_are_refused(
    admin: CloudStack,
    topo: dict[str, Any],
    params: dict[str, str],
    fragment: str,
    unique: Callable[[str], str],
) -> None:
    err = _fails(admin.createStoragePool, name=unique("bad"), zoneid=topo["zone"]["id"], **params)
    assert err["errorcode"] == 431 and fragment in err["errortext"], err
    assert admin.listStoragePools(zoneid=topo["zone"]["id"]) == {}


def test_same_path_twice_is_refused(admin: CloudStack, topo: dict[str, Any], unique: Callable[[str], str]) -> None:
    url = "SharedMountPoint://localhost/mnt/dup"
    pool = admin.createStoragePool(name=unique("p"), zoneid=topo["zone"]["id"], scope="zone", url=url)
    err = _fails(admin.createStoragePool, name=unique("p"), zoneid=topo["zone"]["id"], scope="zone", url=url)
    assert err["errorcode"] == 431 and "already uses the path" in err["errortext"]
    admin.deleteStoragePool(id=pool["storagepool"]["id"])


def test_image_stores(admin: CloudStack, topo: dict[str, Any], unique: Callable[[str], str]) -> None:
    name = unique("images")
    store = admin.addImageStore(
        name=name, provider="NFS", url="file://localhost/srv/images", zoneid=topo["zone"]["id"]
    )["imagestore"]
    assert store["name"] == name and store["zoneid"] == topo["zone"]["id"]
    assert store["url"] == "file://localhost/srv/images" and store["providername"] == "NFS"
    assert [s["id"] for s in admin.listImageStores(name=name)["imagestore"]] == [store["id"]]
    err = _fails(admin.addImageStore, provider="NFS", url="s3://bucket/x", zoneid=topo["zone"]["id"])
    assert err["errorcode"] == 431 and "unsupported scheme" in err["errortext"]
    err = _fails(admin.addImageStore, provider="Swift", url="file://localhost/srv/x")
    assert err["errorcode"] == 431 and "provider" in err["errortext"]
    admin.deleteImageStore(id=store["id"])
    assert admin.listImageStores(name=name) == {}


def test_service_offerings(
    server: ServerProcess, admin: CloudStack, make_user: Callable[..., Keys], unique: Callable[[str], str]
) -> None:
    name = unique("small")
    so = admin.createServiceOffering(
        name=name,
        displaytext="Small",
        cpunumber=2,
        cpuspeed=1000,
        memory=2048,
        tags="ssd",
        hosttags="gpu",
        rootdisksize=20,
    )["serviceoffering"]
    assert (so["cpunumber"], so["cpuspeed"], so["memory"]) == (2, 1000, 2048)
    assert so["storagetags"] == "ssd" and so["hosttags"] == "gpu" and so["rootdisksize"] == 20
    assert so["iscustomized"] is False
    custom = admin.createServiceOffering(name=unique("custom"), customized=True)["serviceoffering"]
    assert custom["iscustomized"] is True
    # Users see public offerings.
    user = server.cs(make_user())
    assert user.listServiceOfferings(id=so["id"])["serviceoffering"][0]["name"] == name
    assert _fails(user.createServiceOffering, name="mine", cpunumber=1, memory=512)["errorcode"] == 432
    err = _fails(admin.createServiceOffering, name=unique("nomem"), cpunumber=2)
    assert err["errorcode"] == 431 and "memory" in err["errortext"]
    admin.deleteServiceOffering(id=so["id"])
    admin.deleteServiceOffering(id=custom["id"])
    assert admin.listServiceOfferings(id=so["id"]) == {}


def test_disk_offerings_with_tags_and_custom_size(admin: CloudStack, unique: Callable[[str], str]) -> None:
    fixed = admin.createDiskOffering(
        name=unique("d10"), disksize=10, tags="fast, ssd ,fast", provisioningtype="sparse"
    )["diskoffering"]
    assert fixed["disksize"] == 10 and fixed["iscustomized"] is False
    assert fixed["tags"] == "fast,ssd" and fixed["provisioningtype"] == "sparse"
    custom = admin.createDiskOffering(
        name=unique("dcustom"), customized=True, customizedminsize=1, customizedmaxsize=100
    )["diskoffering"]
    assert custom["iscustomized"] is True
    assert (custom["customizedminsize"], custom["customizedmaxsize"]) == (1, 100)
    listed = {o["id"] for o in admin.listDiskOfferings(pagesize=-1)["diskoffering"]}
    assert {fixed["id"], custom["id"]} <= listed
    err = _fails(admin.createDiskOffering, name=unique("nosize"))
    assert err["errorcode"] == 431 and "disksize" in err["errortext"]
    err = _fails(admin.createDiskOffering, name=unique("neg"), disksize=-5)
    assert err["errorcode"] == 431
    err = _fails(admin.createDiskOffering, name=unique("thick"), disksize=1, provisioningtype="thick")
    assert err["errorcode"] == 431
    err = _fails(
        admin.createDiskOffering,
        name=unique("inverted"),
        customized=True,
        customizedminsize=50,
        customizedmaxsize=10,
    )
    assert err["errorcode"] == 431 and "customizedminsize" in err["errortext"]
    admin.deleteDiskOffering(id=fixed["id"])
    admin.deleteDiskOffering(id=custom["id"])
    assert admin.listDiskOfferings(id=fixed["id"]) == {}
