"""Async jobs of hosts: entering and leaving maintenance.

Maintenance refuses new work on the host at once (the planner only picks Enabled hosts). Moving the
host's VMs away arrives with storage motion; until then a host with running VMs stays in
PrepareForMaintenance and the job fails with ErrorInMaintenance, naming the VMs.
"""

from __future__ import annotations

from sqlalchemy.orm import Session

from strato.db.models import Host, Job
from strato.engine.context import JobContext
from strato.engine.jobkinds import JobResult, job_kind
from strato.errors import InvalidState
from strato.protocol.client import AgentClientError
from strato.protocol.messages import GetState, PowerState
from strato.services.core.agents import describe_failure, host_client


def _enter_maintenance(job: JobContext) -> JobResult:
    host_id = job.params["id"]
    with job.db.session() as s:
        host = s.get(Host, host_id)
        if host is None:
            raise InvalidState(f"Host {host_id} no longer exists")
        if host.resource_state == "Maintenance":
            return {"type": "host", "id": host_id}
        client, name = host_client(host), host.name
    with job.step("check-running-vms"):
        try:
            state = client.call(GetState())
        except AgentClientError as exc:
            raise describe_failure(name, exc) from None
        running = [vm.name for vm in state.vms if vm.power_state != PowerState.STOPPED]
        if running:
            raise InvalidState(
                f"Host {name} still runs VMs ({', '.join(sorted(running)[:10])}); "
                "stop or migrate them before maintenance"
            )
    with job.step("set-maintenance"), job.db.session() as s:
        host = s.get(Host, host_id)
        assert host is not None
        host.resource_state = "Maintenance"
    return {"type": "host", "id": host_id}


def _maintenance_failed(session: Session, job: Job) -> None:
    host = session.get(Host, job.params["id"])
    if host is not None and host.resource_state == "PrepareForMaintenance":
        host.resource_state = "ErrorInMaintenance"


def _cancel_maintenance(job: JobContext) -> JobResult:
    with job.db.session() as s:
        host = s.get(Host, job.params["id"])
        if host is not None and host.resource_state != "Enabled":
            host.resource_state = "Enabled"
    return {"type": "host", "id": job.params["id"]}


job_kind("host.maintenance", recover=_enter_maintenance, on_fail=_maintenance_failed, event="MAINT.PREPARE")(
    _enter_maintenance
)
job_kind("host.cancelmaintenance", recover=_cancel_maintenance, event="MAINT.CANCEL")(_cancel_maintenance)
