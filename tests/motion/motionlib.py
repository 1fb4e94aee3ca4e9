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


def watch_job(api: CloudStack, job_id: str, timeout: float = 120) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Samples the job (queryAsyncJobResult) while it runs: (the samples taken while running, the end)."""
    samples: list[dict[str, Any]] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = dict(api.queryAsyncJobResult(jobid=job_id))
        if job.get("jobstatus") != 0:
            return samples, job
        samples.append(job)
        time.sleep(0.05)
    raise AssertionError(f"job {job_id} still running after {timeout} s")


def assert_honest_progress(samples: list[dict[str, Any]]) -> None:
    """What a client sees while a move runs: done and the percentage never go back, the total is the
    same throughout once known, and the per-part figures (jobprogressparts) add up to the job's."""
    shown = [s for s in samples if s.get("jobprogresstotal")]
    assert shown, "the job never showed progress"
    assert len({s["jobprogresstotal"] for s in shown}) == 1, sorted({s["jobprogresstotal"] for s in shown})
    dones = [s["jobprogressdone"] for s in shown]
    percents = [s["jobprogress"] for s in shown]
    assert dones == sorted(dones) and percents == sorted(percents), (dones, percents)
    for s in shown:
        parts = s.get("jobprogressparts") or []
        assert parts, s
        assert sum(p["done"] for p in parts) == s["jobprogressdone"], parts
        assert sum(p["total"] for p in parts) == s["jobprogresstotal"], parts
        assert all(0 <= p["done"] <= p["total"] for p in parts), parts
