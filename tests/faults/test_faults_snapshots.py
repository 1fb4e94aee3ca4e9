"""The volume snapshot operations stopped after each of their steps, then recovered (on the simulator): the
three promises hold (the job ended, nothing transitional, no file on a pool or image store that the
database does not know), and what the user sees matches the job's outcome.

createSnapshot (of a detached volume, offline, and of a running VM's disk, live): BackedUp, or Error with
no file and the volume Ready again. revertSnapshot: done, or the volume as it was. createVolume from a
snapshot: Ready, or gone. createTemplate from a snapshot: Ready, or gone. deleteSnapshot: finished."""

from __future__ import annotations

from typing import Any

from conftest import FaultCloud
from helpers.faultlib import Promises, run_fault_matrix


def _new_volume(cloud: FaultCloud) -> dict[str, Any]:
    started = cloud.api().createVolume(name=cloud.name("sv"), zoneid=cloud.ids["zone"],
                                       diskofferingid=cloud.ids["disk"], storageid=cloud.ids["shared"])  # fmt: skip
    return dict(cloud.ok(started)["volume"])


def _snap(cloud: FaultCloud, snap_id: str) -> dict[str, Any] | None:
    found = cloud.api().listSnapshots(id=snap_id, listall=True).get("snapshot", [])
    return dict(found[0]) if found else None


def _backed_up(cloud: FaultCloud, vol_id: str) -> dict[str, Any]:
    return dict(cloud.ok(cloud.api().createSnapshot(volumeid=vol_id))["snapshot"])


def _matrix(cloud: FaultCloud, kind: str, start: Any, check: Any) -> list[str]:
    return run_fault_matrix(cloud.server, cloud.api(), cloud.fault_file, kind, start, cloud.files, after_each=check)


def _create_matrix(cloud: FaultCloud, vol_id: str) -> list[str]:
    made: list[str] = []

    def start() -> str:
        started = cloud.api().createSnapshot(volumeid=vol_id)
        made.append(started["id"])
        return str(started["jobid"])

    def check(_step: str, found: Promises) -> None:
        snap = _snap(cloud, made[-1])
        assert snap is not None
        assert snap["state"] == ("BackedUp" if found.job["jobstatus"] == 1 else "Error"), snap
        assert cloud.api().listVolumes(id=vol_id)["volume"][0]["state"] == "Ready"
        cloud.ok(cloud.api().deleteSnapshot(id=made[-1]))
        assert _snap(cloud, made[-1]) is None

    return _matrix(cloud, "snapshot.create", start, check)


def test_create_offline_and_delete(simcloud: FaultCloud) -> None:
    vol = _new_volume(simcloud)
    assert _create_matrix(simcloud, vol["id"]) == ["plan", "back up", "backed up"]

    def start() -> str:
        return str(simcloud.api().deleteSnapshot(id=_backed_up(simcloud, vol["id"])["id"])["jobid"])

    def check(_step: str, found: Promises) -> None:
        assert found.job["jobstatus"] == 1, found.job  # every step is safe to repeat: it resumes
        assert simcloud.api().listSnapshots(volumeid=vol["id"]) == {}

    assert _matrix(simcloud, "snapshot.delete", start, check) == ["remove file", "deleted"]


def test_create_live(simcloud: FaultCloud) -> None:
    started = simcloud.api().deployVirtualMachine(zoneid=simcloud.ids["zone"], name=simcloud.name("svm"),
                                                  serviceofferingid=simcloud.ids["offering"],
                                                  templateid=simcloud.ids["template"])  # fmt: skip
    simcloud.ok(started, timeout=300)
    (root,) = simcloud.api().listVolumes(virtualmachineid=started["id"])["volume"]
    assert _create_matrix(simcloud, root["id"]) == ["plan", "back up", "backed up"]
    simcloud.ok(simcloud.api().destroyVirtualMachine(id=started["id"], expunge=True))


def test_revert_volume_and_template_from_a_snapshot(simcloud: FaultCloud) -> None:
    vol = _new_volume(simcloud)
    snap = _backed_up(simcloud, vol["id"])

    def revert() -> str:
        return str(simcloud.api().revertSnapshot(id=snap["id"])["jobid"])

    def reverted(_step: str, found: Promises) -> None:
        now = simcloud.api().listVolumes(id=vol["id"])["volume"][0]
        assert now["state"] == "Ready" and now["chainsize"] == 1, now

    assert _matrix(simcloud, "snapshot.revert", revert, reverted) == ["copy", "switch", "drop old"]

    made: list[str] = []

    def new_volume() -> str:
        started = simcloud.api().createVolume(snapshotid=snap["id"], name=simcloud.name("fs"))
        made.append(started["id"])
        return str(started["jobid"])

    def volume_made(_step: str, found: Promises) -> None:
        listed = simcloud.api().listVolumes(id=made[-1]).get("volume", [])
        if found.job["jobstatus"] == 1:
            assert listed and listed[0]["state"] == "Ready" and listed[0]["size"] == snap["virtualsize"]
            simcloud.api().deleteVolume(id=made[-1])
        else:
            assert not listed, listed

    assert _matrix(simcloud, "volume.create", new_volume, volume_made) == ["place", "create layer", "ready"]

    templates: list[str] = []

    def template() -> str:
        started = simcloud.api().createTemplate(snapshotid=snap["id"], name=simcloud.name("ft"), ostypeid="x")
        templates.append(started["id"])
        return str(started["jobid"])

    def template_made(_step: str, found: Promises) -> None:
        listed = simcloud.api().listTemplates(templatefilter="self", id=templates[-1]).get("template", [])
        if found.job["jobstatus"] == 1:
            assert listed and listed[0]["isready"], listed
        else:
            assert not listed, listed

    assert _matrix(simcloud, "template.create", template, template_made) == ["convert disk 0", "ready"]
