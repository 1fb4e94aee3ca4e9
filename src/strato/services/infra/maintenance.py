"""prepareHostForMaintenance / cancelHostMaintenance.

Maintenance refuses new work on the host first (the planner only picks Enabled hosts), then asks the
agent whether VMs still run there. Moving the host's VMs away arrives with storage motion; until then a
host with running VMs ends in ErrorInMaintenance and the job fails, naming the VMs. Both operations are
meant to finish: after a crash they go on from the first step not done (each step is safe to repeat).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

from pydantic import BaseModel
from sqlalchemy.orm import Session

from strato.db.models import Host
from strato.engine.jobkinds import JobResult
from strato.engine.operation import Operation, Step
from strato.errors import InvalidState
from strato.protocol.client import AgentClientError
from strato.protocol.messages import GetState, PowerState
from strato.services.core import jobs
from strato.services.core.agents import describe_failure, host_client
from strato.services.core.context import CallContext
from strato.services.core.lookup import get_live

IN_MAINTENANCE = ("PrepareForMaintenance", "Maintenance", "ErrorInMaintenance")


class HostParams(BaseModel):
    id: str


class PrepareHostForMaintenance(Operation[HostParams]):
    kind: ClassVar[str] = "host.maintenance"
    cmd: ClassVar[str] = "prepareHostForMaintenance"
    event: ClassVar[str | None] = "MAINT.PREPARE"
    params_model = HostParams
    resumable: ClassVar[bool] = True

    @classmethod
    def resources(cls, params: HostParams) -> list[str]:
        return [f"host:{params.id}"]

    @classmethod
    def check(cls, session: Session, params: HostParams) -> None:
        host = get_live(session, Host, params.id, "host")
        if host.resource_state in ("PrepareForMaintenance", "Maintenance"):
            raise InvalidState(f"Host {host.name} is already in {host.resource_state}")

    def steps(self) -> Sequence[Step]:
        return [
            Step("refuse new work", lambda: self._set("PrepareForMaintenance")),
            Step("check running vms", self._check_running),
            Step("set maintenance", lambda: self._set("Maintenance"), commit=True),
        ]

    def _set(self, state: str) -> None:
        with self.db.session() as s:
            host = s.get(Host, self.params.id)
            assert host is not None
            host.resource_state = state

    def _check_running(self) -> None:
        with self.db.session() as s:
            host = s.get(Host, self.params.id)
            assert host is not None
            client, name = host_client(host), host.name
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

    def result(self) -> JobResult:
        return {"type": "host", "id": self.params.id}

    @classmethod
    def failed(cls, session: Session, params: HostParams) -> None:
        host = session.get(Host, params.id)
        if host is not None and host.resource_state == "PrepareForMaintenance":
            host.resource_state = "ErrorInMaintenance"


class CancelHostMaintenance(Operation[HostParams]):
    kind: ClassVar[str] = "host.cancelmaintenance"
    cmd: ClassVar[str] = "cancelHostMaintenance"
    event: ClassVar[str | None] = "MAINT.CANCEL"
    params_model = HostParams
    resumable: ClassVar[bool] = True

    @classmethod
    def resources(cls, params: HostParams) -> list[str]:
        return [f"host:{params.id}"]

    @classmethod
    def check(cls, session: Session, params: HostParams) -> None:
        host = get_live(session, Host, params.id, "host")
        if host.resource_state not in IN_MAINTENANCE:
            raise InvalidState(f"Host {host.name} is not in maintenance (it is {host.resource_state})")

    def steps(self) -> Sequence[Step]:
        return [Step("enable", self._enable, commit=True)]

    def _enable(self) -> None:
        with self.db.session() as s:
            host = s.get(Host, self.params.id)
            assert host is not None
            host.resource_state = "Enabled"

    def result(self) -> JobResult:
        return {"type": "host", "id": self.params.id}


def prepare_maintenance(ctx: CallContext, host_id: str) -> str:
    """Queues the maintenance of a host; the job refuses new work on it as its first step."""
    host = get_live(ctx.session, Host, host_id, "host")
    return jobs.submit_operation(ctx, PrepareHostForMaintenance, HostParams(id=host.id), "Host", host.id)


def cancel_maintenance(ctx: CallContext, host_id: str) -> str:
    """Queues the return of a host in (or failing to enter) maintenance to Enabled."""
    host = get_live(ctx.session, Host, host_id, "host")
    return jobs.submit_operation(ctx, CancelHostMaintenance, HostParams(id=host.id), "Host", host.id)
