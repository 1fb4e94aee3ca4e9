"""Helpers of the storage-motion tests: make volumes and VMs, read what the user sees, expect refusals."""

from __future__ import annotations

import time
from typing import Any

from cs import CloudStack, CloudStackApiException

GIB = 1024**3


def vol_of(cloud: Any, vol_id: str) -> dict[str, Any]:
    found = cloud.api().listVolumes(id=vol_id, listall=True).get("volume", [])
    assert found, f"volume {vol_id} not listed"
    return dict(found[0])


def vm_of(cloud: Any, vm_id: str) -> dict[str, Any]:
    return dict(cloud.api().listVirtualMachines(id=vm_id, listall=True)["virtualmachine"][0])


def new_volume(cloud: Any, pool: str | None = None, **params: Any) -> dict[str, Any]:
    if pool is not None:
        params["storageid"] = pool
    params.setdefault("diskofferingid", cloud.ids["disk"])
    started = cloud.api().createVolume(name=cloud.name("mv"), zoneid=cloud.ids["zone"], **params)
    cloud.ok(started)
    return vol_of(cloud, started["id"])


def deploy(cloud: Any, start: bool = True, **params: Any) -> dict[str, Any]:
    started = cloud.api().deployVirtualMachine(
        zoneid=cloud.ids["zone"],
        serviceofferingid=cloud.ids["offering"],
        templateid=cloud.ids["template"],
        name=cloud.name("mvm"),
        startvm=start,
        **params,
    )
    cloud.ok(started, timeout=300)
    return vm_of(cloud, started["id"])


def root_of(cloud: Any, vm_id: str) -> dict[str, Any]:
    vols = cloud.api().listVolumes(virtualmachineid=vm_id, type="ROOT", listall=True)["volume"]
    return dict(vols[0])


def other_pool(cloud: Any, vol: dict[str, Any]) -> str:
    """The host's other pool (local <-> cluster)."""
    return str(cloud.ids["shared"] if vol["storageid"] == cloud.ids["local"] else cloud.ids["local"])


def refused(call: Any, **params: Any) -> tuple[int, str]:
    """(HTTP code, error text) of a call that must be refused at once."""
    try:
        call(**params)
    except CloudStackApiException as exc:
        err = exc.error if isinstance(exc.error, dict) else {}
        return int(err.get("errorcode", 0)), str(err.get("errortext", exc))
    raise AssertionError(f"{params} was not refused")


def jobs_of(cloud: Any, vol_id: str) -> int:
    rows = cloud.server.sql("SELECT count(*) FROM jobs WHERE kind = 'volume.migrate' AND instance_id = ?", vol_id)
    return int(rows[0][0])


def wait_progress(api: CloudStack, job_id: str, timeout: float = 30) -> dict[str, Any]:
    """Waits until the running job reports some progress; the job as queryAsyncJobResult answers."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = api.queryAsyncJobResult(jobid=job_id)
        if job.get("jobstatus") != 0 or job.get("jobprogressdone"):
            return dict(job)
        time.sleep(0.1)
    raise AssertionError(f"job {job_id} reported no progress")
