"""Template operations stopped after each of their steps, then recovered: the three promises hold, and the
user sees a consistent template: registered and Ready with its file, or in Error with no copy left;
created from a VM's volume, or gone; copied (the copy Ready with its file, or absent) with the source
still usable; deleted, or still there and usable."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from conftest import FaultCloud
from helpers.faultlib import Promises, run_fault_matrix


def _template(cloud: FaultCloud, template_id: str) -> dict[str, Any] | None:
    found = cloud.api().listTemplates(templatefilter="all", id=template_id, listall=True).get("template", [])
    return found[0] if found else None


def _locations(tmpl: dict[str, Any]) -> set[tuple[str, str, str]]:
    return {(loc["type"], loc["id"], loc["state"]) for loc in tmpl.get("locations", [])}


def _deploys(cloud: FaultCloud, template_id: str, pool: str = "local") -> None:
    """The template is usable: a VM deploys from it (then it is expunged, to keep the pools tidy)."""
    api = cloud.api()
    started = api.deployVirtualMachine(zoneid=cloud.ids["zone"], serviceofferingid=cloud.ids["offering"],
                                       templateid=template_id, name=cloud.name("ft"),
                                       rootdiskstorageid=cloud.ids[pool])  # fmt: skip
    cloud.ok(started, timeout=180)
    cloud.ok(api.destroyVirtualMachine(id=started["id"], expunge=True))


def _delete(cloud: FaultCloud, template_id: str) -> None:
    cloud.ok(cloud.api().deleteTemplate(id=template_id))


# --- register ------------------------------------------------------------------------------------------


def _registerer(cloud: FaultCloud) -> tuple[Callable[[], str], list[str]]:
    made: list[str] = []

    def start() -> str:
        tmpl = cloud.api().registerTemplate(name=cloud.name("fr"), displaytext="r", format="QCOW2",
                                            url="http://images.invalid/r.qcow2", hypervisor="Simulator",
                                            zoneid=cloud.ids["zone"], ostypeid="Other Linux (64-bit)",
                                            imagestoreid=cloud.ids["store"])["template"][0]  # fmt: skip
        made.append(tmpl["id"])
        return str(tmpl["jobid"])

    return start, made


def _check_registered(cloud: FaultCloud, template_id: str, found: Promises) -> None:
    tmpl = _template(cloud, template_id)
    assert tmpl is not None
    if found.job["jobstatus"] == 1:
        assert tmpl["state"] == "Ready" and tmpl["isready"], tmpl
        assert _locations(tmpl) == {("imagestore", cloud.ids["store"], "Ready")}, tmpl
    else:
        assert tmpl["state"] == "Error" and not tmpl["isready"], tmpl
        assert tmpl["status"] == found.job["jobresult"]["errortext"], tmpl
        assert _locations(tmpl) == set(), tmpl
    _delete(cloud, template_id)


def test_register_on_the_simulator(simcloud: FaultCloud) -> None:
    start, made = _registerer(simcloud)
    names = run_fault_matrix(
        simcloud.server, simcloud.api(), simcloud.fault_file, "template.download", start, simcloud.files,
        after_each=lambda _step, found: _check_registered(simcloud, made[-1], found),
    )  # fmt: skip
    assert names[-1] == "ready", names


# --- create from a VM's volume -------------------------------------------------------------------------


def _stopped_vm(cloud: FaultCloud) -> tuple[str, str]:
    """A stopped VM's id and its root volume's id."""
    api = cloud.api()
    started = api.deployVirtualMachine(zoneid=cloud.ids["zone"], serviceofferingid=cloud.ids["offering"],
                                       templateid=cloud.ids["template"], name=cloud.name("src"),
                                       rootdiskstorageid=cloud.ids["local"], startvm=False)  # fmt: skip
    cloud.ok(started)
    [root] = api.listVolumes(virtualmachineid=started["id"], listall=True)["volume"]
    return str(started["id"]), str(root["id"])


def _check_created(cloud: FaultCloud, template_id: str, volume_id: str, found: Promises) -> None:
    tmpl = _template(cloud, template_id)
    if found.job["jobstatus"] == 1:
        assert tmpl is not None and tmpl["state"] == "Ready", tmpl
        assert _locations(tmpl) == {("imagestore", cloud.ids["store"], "Ready")}, tmpl
        _delete(cloud, template_id)
    else:
        assert tmpl is None, tmpl  # a template that could not be made is not listed
    [vol] = cloud.api().listVolumes(id=volume_id, listall=True)["volume"]
    assert vol["state"] == "Ready", vol  # the source is untouched


def test_create_from_a_volume_on_the_simulator(simcloud: FaultCloud) -> None:
    vm_id, volume_id = _stopped_vm(simcloud)
    made: list[str] = []

    def start() -> str:
        started = simcloud.api().createTemplate(name=simcloud.name("fc"), ostypeid="Other Linux (64-bit)",
                                                volumeid=volume_id, imagestoreid=simcloud.ids["store"])  # fmt: skip
        made.append(started["id"])
        return str(started["jobid"])

    names = run_fault_matrix(
        simcloud.server, simcloud.api(), simcloud.fault_file, "template.create", start, simcloud.files,
        after_each=lambda _step, found: _check_created(simcloud, made[-1], volume_id, found),
    )  # fmt: skip
    assert names == ["convert disk 0", "ready"], names
    simcloud.ok(simcloud.api().destroyVirtualMachine(id=vm_id, expunge=True))


# --- copy to a store, copy to a pool, delete ------------------------------------------------------------


def _fresh_template(cloud: FaultCloud) -> str:
    """A newly registered Ready template on the cloud's image store (the same image as the cloud's)."""
    if cloud.driver == "qemu":
        url, hv = f"file://{cloud.base / 'tiny.qcow2'}", "KVM"
    else:
        url, hv = "http://images.invalid/c.qcow2", "Simulator"
    tmpl = cloud.api().registerTemplate(name=cloud.name("fs"), displaytext="s", format="QCOW2", url=url,
                                        hypervisor=hv, zoneid=cloud.ids["zone"], ostypeid="Other Linux (64-bit)",
                                        imagestoreid=cloud.ids["store"])["template"][0]  # fmt: skip
    cloud.ok(tmpl, timeout=180)
    return str(tmpl["id"])


def _second_store(cloud: FaultCloud) -> str:
    if "store2" not in cloud.ids:
        path = cloud.base / "store2"
        path.mkdir(exist_ok=True)
        added = cloud.api().addImageStore(name="s2", provider="NFS", url=f"file://localhost{path}",
                                          zoneid=cloud.ids["zone"])  # fmt: skip
        cloud.ids["store2"] = added["imagestore"]["id"]
        if cloud.store_dir is not None:
            cloud.pool_dirs[cloud.ids["store2"]] = path
    return cloud.ids["store2"]


def _copier(cloud: FaultCloud, **dest: str) -> tuple[Callable[[], str], list[str]]:
    made: list[str] = []

    def start() -> str:
        made.append(_fresh_template(cloud))
        return str(cloud.api().copyTemplate(id=made[-1], **dest)["jobid"])

    return start, made


def _check_copied(cloud: FaultCloud, template_id: str, where: tuple[str, str], found: Promises) -> None:
    tmpl = _template(cloud, template_id)
    assert tmpl is not None and tmpl["state"] == "Ready", tmpl
    locations = _locations(tmpl)
    source = ("imagestore", cloud.ids["store"], "Ready")
    if found.job["jobstatus"] == 1:
        assert locations == {source, (*where, "Ready")}, tmpl
    else:
        assert locations == {source}, tmpl  # absent, and the source still there
    if where[0] == "storagepool":
        _deploys(cloud, template_id, "shared")  # still usable, from the pool's copy when it was made
    _delete(cloud, template_id)


def test_copy_to_a_store_on_the_simulator(simcloud: FaultCloud) -> None:
    store2 = _second_store(simcloud)
    start, made = _copier(simcloud, destimagestoreid=store2)
    names = run_fault_matrix(
        simcloud.server, simcloud.api(), simcloud.fault_file, "template.copy", start, simcloud.files,
        after_each=lambda _step, found: _check_copied(simcloud, made[-1], ("imagestore", store2), found),
    )  # fmt: skip
    assert names == ["place disk 0", "copy disk 0"], names


def test_copy_to_a_pool_on_the_simulator(simcloud: FaultCloud) -> None:
    start, made = _copier(simcloud, deststorageid=simcloud.ids["shared"])
    names = run_fault_matrix(
        simcloud.server, simcloud.api(), simcloud.fault_file, "template.copy", start, simcloud.files,
        after_each=lambda _step, found: _check_copied(simcloud, made[-1], ("storagepool", simcloud.ids["shared"]),
                                                      found),
    )  # fmt: skip
    assert names == ["copy disk 0"], names


def test_delete_on_the_simulator(simcloud: FaultCloud) -> None:
    made: list[str] = []

    def start() -> str:
        made.append(_fresh_template(simcloud))
        # A cached copy on a pool too, so that the deletion has files in two places to remove.
        simcloud.ok(simcloud.api().copyTemplate(id=made[-1], deststorageid=simcloud.ids["shared"]))
        return str(simcloud.api().deleteTemplate(id=made[-1])["jobid"])

    def check(_step: str, found: Promises) -> None:
        tmpl = _template(simcloud, made[-1])
        if found.job["jobstatus"] == 1:
            assert tmpl is None, tmpl
        else:
            assert tmpl is not None and tmpl["state"] == "Ready", tmpl
            _deploys(simcloud, made[-1])
            _delete(simcloud, made[-1])

    names = run_fault_matrix(simcloud.server, simcloud.api(), simcloud.fault_file, "template.delete", start,
                             simcloud.files, after_each=check)  # fmt: skip
    assert names == ["mark deleting", "remove disk 0"], names


def test_copy_to_a_pool_with_qemu(qemucloud: FaultCloud) -> None:
    """After each fault the copy is Ready on the pool with its file, or absent with no file (the file
    check of the harness), and the template still deploys."""
    start, made = _copier(qemucloud, deststorageid=qemucloud.ids["shared"])

    def check(_step: str, found: Promises) -> None:
        on_pool = qemucloud.pool_dirs[qemucloud.ids["shared"]] / "templates" / f"{made[-1]}.qcow2"
        assert on_pool.is_file() == (found.job["jobstatus"] == 1), (on_pool, found.job)
        _check_copied(qemucloud, made[-1], ("storagepool", qemucloud.ids["shared"]), found)

    names = run_fault_matrix(qemucloud.server, qemucloud.api(), qemucloud.fault_file, "template.copy", start,
                             qemucloud.files, after_each=check)  # fmt: skip
    assert names == ["copy disk 0"], names
