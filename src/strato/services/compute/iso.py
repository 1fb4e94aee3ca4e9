"""attachIso and detachIso: the VM's CD drive, changed on its host when it runs and recorded in the
database. Recording is the point of no return; before it, the drive is put back as the database says."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

from pydantic import BaseModel
from sqlalchemy.orm import Session

from strato.db.models import Template, VirtualMachine
from strato.engine.jobkinds import JobResult
from strato.engine.operation import Operation, Step, StepData
from strato.errors import InvalidParameter, ResourceUnavailable
from strato.protocol.messages import ChangeCdrom
from strato.services.compute.vmcommon import host_of, load_vm, vm_result
from strato.services.compute.vmspec import iso_path
from strato.services.core import jobs
from strato.services.core.access import get_vm
from strato.services.core.agents import agent_errors
from strato.services.core.context import CallContext
from strato.services.core.states import require_vm_state
from strato.services.images.templates import get_template


class IsoParams(BaseModel):
    vm_id: str
    iso_id: str | None = None  # attach: the ISO; detach: none


class _ChangeIso(Operation[IsoParams]):
    params_model = IsoParams
    event: ClassVar[str | None] = "VM.ISO"

    @classmethod
    def resources(cls, params: IsoParams) -> list[str]:
        return [f"vm:{params.vm_id}", *([f"template:{params.iso_id}"] if params.iso_id else [])]

    def steps(self) -> Sequence[Step]:
        return [
            Step("cd drive", self._cd_drive, undo=self._put_back),
            Step("record", self._record, commit=True),
        ]

    def _set_drive(self, iso_id: str | None) -> None:
        """Puts `iso_id` (or nothing) in the drive of the running VM; nothing to do on a stopped one."""
        with self.db.session() as s:
            vm = load_vm(s, self.params.vm_id)
            if vm.state != "Running" or vm.host_id is None:
                return
            path = iso_path(s, iso_id) if iso_id else None
            if iso_id and path is None:
                raise ResourceUnavailable("The ISO has no ready copy on an image store")
        client, host_name, name = host_of(self.db, self.params.vm_id)
        with agent_errors(host_name):
            client.call(ChangeCdrom(vm_name=name, path=path))

    def _cd_drive(self) -> StepData:
        self._set_drive(self.params.iso_id)
        return {}

    def _put_back(self) -> None:
        with self.db.session() as s:
            vm = s.get(VirtualMachine, self.params.vm_id)
            recorded = vm.iso_id if vm is not None else None
        self._set_drive(recorded)

    def _record(self) -> StepData:
        with self.db.session() as s:
            load_vm(s, self.params.vm_id).iso_id = self.params.iso_id
        return {}

    def result(self) -> JobResult:
        return vm_result(self.params.vm_id)


class AttachIso(_ChangeIso):
    kind: ClassVar[str] = "vm.iso.attach"
    cmd: ClassVar[str] = "attachIso"

    @classmethod
    def check(cls, session: Session, params: IsoParams) -> None:
        vm = load_vm(session, params.vm_id)
        iso = session.get(Template, params.iso_id) if params.iso_id else None
        if iso is None or iso.removed is not None:
            raise InvalidParameter(f"ISO {params.iso_id} has been deleted")
        if iso.state != "Ready":
            raise InvalidParameter(f"ISO {iso.name} is not ready ({iso.state})")
        require_vm_state(vm, "Running", "Stopped", action="attach an ISO to")
        if vm.iso_id:
            raise InvalidParameter(f"VM {vm.name} already has an ISO attached; detach it first")


class DetachIso(_ChangeIso):
    kind: ClassVar[str] = "vm.iso.detach"
    cmd: ClassVar[str] = "detachIso"

    @classmethod
    def check(cls, session: Session, params: IsoParams) -> None:
        vm = load_vm(session, params.vm_id)
        require_vm_state(vm, "Running", "Stopped", action="detach an ISO from")
        if not vm.iso_id:
            raise InvalidParameter(f"VM {vm.name} has no ISO attached")


def attach_iso(ctx: CallContext, args: dict[str, Any]) -> str:
    vm = get_vm(ctx, args["virtualmachineid"], "virtualmachineid")
    iso = get_template(ctx, args["id"], iso=True)
    return jobs.submit_operation(ctx, AttachIso, IsoParams(vm_id=vm.id, iso_id=iso.id), "VirtualMachine", vm.id)


def detach_iso(ctx: CallContext, args: dict[str, Any]) -> str:
    vm = get_vm(ctx, args["virtualmachineid"], "virtualmachineid")
    return jobs.submit_operation(ctx, DetachIso, IsoParams(vm_id=vm.id), "VirtualMachine", vm.id)
