"""scaleVirtualMachine: a stopped VM takes another service offering (or custom CPU and memory)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

from pydantic import BaseModel
from sqlalchemy.orm import Session

from strato.db.models import ServiceOffering
from strato.engine.jobkinds import JobResult
from strato.engine.operation import Operation, Step, StepData
from strato.errors import InvalidParameter
from strato.services.compute.vmcommon import load_vm, vm_result
from strato.services.compute.vms import details_of
from strato.services.core import jobs
from strato.services.core.access import get_vm
from strato.services.core.context import CallContext
from strato.services.core.lookup import get_live
from strato.services.core.states import require_vm_state
from strato.services.offerings.offerings import compute_shape
from strato.services.storage.rules import refuse_with_vm_snapshots


class ScaleParams(BaseModel):
    vm_id: str
    offering_id: str
    cpus: int
    speed: int
    memory: int


class ScaleVirtualMachine(Operation[ScaleParams]):
    kind: ClassVar[str] = "vm.scale"
    cmd: ClassVar[str] = "scaleVirtualMachine"
    event: ClassVar[str | None] = "VM.UPGRADE"
    params_model = ScaleParams

    @classmethod
    def resources(cls, params: ScaleParams) -> list[str]:
        return [f"vm:{params.vm_id}"]

    @classmethod
    def check(cls, session: Session, params: ScaleParams) -> None:
        require_vm_state(load_vm(session, params.vm_id), "Stopped", action="scale (only stopped VMs can be scaled)")
        refuse_with_vm_snapshots(session, params.vm_id, "scale VM")
        offering = session.get(ServiceOffering, params.offering_id)
        if offering is None or offering.removed is not None:
            raise InvalidParameter(f"Service offering {params.offering_id} (serviceofferingid) has been deleted")

    def steps(self) -> Sequence[Step]:
        return [Step("scale", self._scale, commit=True)]

    def _scale(self) -> StepData:
        p = self.params
        with self.db.session() as s:
            vm = load_vm(s, p.vm_id)
            vm.service_offering_id = p.offering_id
            vm.cpu_number, vm.cpu_speed, vm.memory_mib = p.cpus, p.speed, p.memory
        return {}

    def result(self) -> JobResult:
        return vm_result(self.params.vm_id)


def scale(ctx: CallContext, args: dict[str, Any]) -> str:
    vm = get_vm(ctx, args["id"])
    offering = get_live(
        ctx.session, ServiceOffering, args["serviceofferingid"], "service offering", "serviceofferingid"
    )
    cpus, speed, memory = compute_shape(ctx, offering, details_of(args))
    params = ScaleParams(vm_id=vm.id, offering_id=offering.id, cpus=cpus, speed=speed, memory=memory)
    return jobs.submit_operation(ctx, ScaleVirtualMachine, params, "VirtualMachine", vm.id)
