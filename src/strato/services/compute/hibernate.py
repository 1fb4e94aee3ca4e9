"""hibernateVirtualMachine: the running VM's memory goes to a file on its root disk's pool (a layer of kind
memory, as VM snapshots keep theirs), then the VM stops: state Hibernated, no host, no memory or CPU used.
startVirtualMachine resumes it from that file (power.py) and removes the file.

The VM having stopped with its memory saved is the point of no return. The VM's device set must stay as
it was while hibernated (the saved memory belongs to it): every rule that lists the states it accepts
refuses Hibernated, so attach/detach/resize/scale/migrate/snapshot need nothing more."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

from pydantic import BaseModel
from sqlalchemy import select
from sqlalchemy.orm import Session

from strato.db.engine import Database
from strato.db.models import Host, Layer, VirtualMachine, VMSnapshot
from strato.db.models.vmsnapshots import LAYER_MEMORY
from strato.engine.jobkinds import JobResult
from strato.engine.operation import FinishForward, Operation, Step, StepData
from strato.errors import InvalidState
from strato.protocol.client import AgentClientError
from strato.protocol.messages import GetLayerInfo, SaveVm
from strato.services.compute.vmcommon import load_vm, vm_result
from strato.services.compute.vmsnap_tree import layer_ref, new_layer_row, refuse_on_layerless
from strato.services.core import jobs
from strato.services.core.access import get_vm
from strato.services.core.agents import agent_errors, host_client
from strato.services.core.context import CallContext
from strato.services.core.states import require_vm_state, vm_to
from strato.services.storage.layers import remove_layer_file, remove_unfinished_layer

HIBERNATED = "Hibernated"


def _saved(vm_id: str) -> Any:
    held = select(VMSnapshot.memory_layer_id).where(VMSnapshot.memory_layer_id.is_not(None))
    return select(Layer).where(
        Layer.vm_id == vm_id,
        Layer.kind == LAYER_MEMORY,
        Layer.removed.is_(None),
        Layer.state == "Ready",
        Layer.id.not_in(held),
    )


def hibernation_layer(session: Session, vm_id: str) -> Layer | None:
    """The VM's saved memory, if it is hibernated: a live memory layer of the VM no VM snapshot holds
    (the newest, should an earlier removal have failed)."""
    return session.scalars(_saved(vm_id).order_by(Layer.created.desc())).first()


def forget_hibernation(db: Database, vm_id: str) -> None:
    """Removes the saved memory files of a VM (after a resume, or when it is destroyed); again is harmless."""
    with db.session() as s:
        ids = [layer.id for layer in s.scalars(_saved(vm_id))]
    for layer_id in ids:
        remove_layer_file(db, layer_id)


class HibernateParams(BaseModel):
    vm_id: str


class HibernateVirtualMachine(Operation[HibernateParams]):
    kind: ClassVar[str] = "vm.hibernate"
    cmd: ClassVar[str] = "hibernateVirtualMachine"
    event: ClassVar[str | None] = "VM.HIBERNATE"
    params_model = HibernateParams

    @classmethod
    def resources(cls, params: HibernateParams) -> list[str]:
        return [f"vm:{params.vm_id}"]

    @classmethod
    def check(cls, session: Session, params: HibernateParams) -> None:
        vm = load_vm(session, params.vm_id)
        require_vm_state(vm, "Running", action="hibernate")
        if not vm.host_id:
            raise InvalidState(f"VM {vm.name} has no host")
        refuse_on_layerless(session, vm)

    def steps(self) -> Sequence[Step]:
        return [
            Step("plan", self._plan, undo=self._unplan),
            Step("save", self._save, undo=self._unsave, commit=True),
            Step("hibernated", self._hibernated),
        ]

    def _plan(self) -> StepData:
        """Stopping; a Creating memory layer row on the root disk's pool, marked with this job."""
        with self.db.session() as s:
            vm = load_vm(s, self.params.vm_id)
            disks = refuse_on_layerless(s, vm)
            root = next((v for v in disks if v.volume_type == "ROOT"), disks[0])
            assert root.pool_id
            mem = new_layer_row(s, root, root.pool_id, None, self.job.job_id, kind=LAYER_MEMORY,
                                size=vm.memory_mib << 20)  # fmt: skip
            mem.path = f"hibernate/{vm.id}/{mem.id}.mem"
            mem.volume_id, mem.vm_id = None, vm.id
            host_id = vm.host_id
            if vm.state == "Running":
                vm_to(vm, "Stopping")
            return {"memory": mem.id, "host_id": host_id}

    def _unplan(self) -> None:
        plan = self.output("plan")
        if plan.get("memory"):
            remove_unfinished_layer(self.db, plan["memory"])
        with self.db.session() as s:
            vm = s.get(VirtualMachine, self.params.vm_id)
            if vm is not None and vm.state == "Stopping":
                vm_to(vm, "Running")

    def _save(self) -> StepData:
        plan = self.output("plan")
        with self.db.session() as s:
            vm = load_vm(s, self.params.vm_id)
            host = s.get(Host, plan["host_id"])
            assert host is not None
            client, host_name, name = host_client(host), host.name, vm.instance_name
            memory = layer_ref(s, plan["memory"])
        with agent_errors(host_name):
            info = client.run_long(SaveVm(vm_name=name, memory=memory), on_progress=self.job.progress)
        return {"physical": info.physical_size}

    def _unsave(self) -> None:
        """SaveVm that failed removed its file and left the VM running: undo. A file still there (the
        server stopped while the agent finished the save) means the VM is down with its memory saved:
        finish forward."""
        plan = self.output("plan")
        with self.db.session() as s:
            host = s.get(Host, plan["host_id"])
            if host is None:
                return
            client, memory = host_client(host), layer_ref(s, plan["memory"])
        try:
            info = client.call(GetLayerInfo(layer=memory))
        except AgentClientError:
            return
        raise FinishForward("the VM's memory is saved and the VM is down", {"physical": info.physical_size})

    def _hibernated(self) -> StepData:
        plan, physical = self.output("plan"), self.output("save").get("physical")
        with self.db.session() as s:
            vm = load_vm(s, self.params.vm_id)
            mem = s.get(Layer, plan["memory"])
            assert mem is not None
            if mem.state != "Ready":
                mem.state, mem.creating_job, mem.frozen = "Ready", None, True
                mem.physical_size = int(physical or mem.virtual_size)
            if vm.state != HIBERNATED:
                vm_to(vm, HIBERNATED)
            vm.host_id = None
        return {}

    def result(self) -> JobResult:
        return vm_result(self.params.vm_id)

    @classmethod
    def failed(cls, session: Session, params: HibernateParams) -> None:
        vm = session.get(VirtualMachine, params.vm_id)
        if vm is not None and vm.state == "Stopping":
            vm_to(vm, "Running")


def hibernate(ctx: CallContext, args: dict[str, Any]) -> str:
    vm = get_vm(ctx, args["id"])
    return jobs.submit_operation(ctx, HibernateVirtualMachine, HibernateParams(vm_id=vm.id), "VirtualMachine", vm.id)
