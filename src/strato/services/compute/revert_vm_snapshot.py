"""revertToVMSnapshot: a new empty top on each of the snapshot's frozen layers; the old tops go unless a
snapshot holds them (the other branches stay). A Disk snapshot needs a stopped VM, which stays stopped; a
DiskAndMemory snapshot stops a running VM first and resumes it from the memory file, Running.

The database switching the volumes onto the new tops is the point of no return."""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from typing import Any, ClassVar

from pydantic import BaseModel
from sqlalchemy import select
from sqlalchemy.orm import Session

from strato.db.models import Host, Layer, StoragePool, VirtualMachine, VMSnapshot, Volume
from strato.engine.jobkinds import JobResult
from strato.engine.operation import Operation, Step, StepData
from strato.errors import InvalidParameter, InvalidState
from strato.protocol.client import AgentClientError
from strato.protocol.messages import CreateLayer, RestoreVm, StartVm, StopVm
from strato.services.compute.vmcommon import GRACEFUL_STOP_S, load_vm
from strato.services.compute.vmsnap_tree import (
    VM_SNAPSHOT_RESULT,
    held_by_snapshot,
    layer_ref,
    load_snapshot,
    new_layer_row,
    pools_client,
    require_enabled,
    snapshot_disks,
)
from strato.services.compute.vmspec import vm_spec
from strato.services.core import jobs
from strato.services.core.access import get_owned
from strato.services.core.agents import agent_errors, host_client
from strato.services.core.context import CallContext
from strato.services.core.reach import host_for
from strato.services.core.states import vm_to
from strato.services.network.nics import prepare_for_vm
from strato.services.storage.layers import remove_layer_file, remove_unfinished_layer


class RevertParams(BaseModel):
    snapshot_id: str
    vm_id: str


class RevertToVMSnapshot(Operation[RevertParams]):
    kind: ClassVar[str] = "vmsnapshot.revert"
    cmd: ClassVar[str] = "revertToVMSnapshot"
    event: ClassVar[str | None] = "VMSNAPSHOT.REVERTTO"
    params_model = RevertParams

    @classmethod
    def resources(cls, params: RevertParams) -> list[str]:
        return [f"vm:{params.vm_id}"]

    @classmethod
    def check(cls, session: Session, params: RevertParams) -> None:
        snap = load_snapshot(session, params.snapshot_id)
        vm = load_vm(session, params.vm_id)
        require_enabled(session, vm)
        if snap.hidden or snap.state not in ("Ready", "Reverting"):
            raise InvalidState(f"VM snapshot {snap.name} is {'deleted' if snap.hidden else snap.state}; "
                               "only a Ready snapshot can be reverted to")  # fmt: skip
        if vm.state not in ("Running", "Stopped"):
            raise InvalidState(f"Cannot revert VM {vm.name}: it is {vm.state}; it must be Running or Stopped")
        if vm.state == "Running" and snap.snapshot_type == "Disk":
            raise InvalidParameter(
                f"VM Snapshot reverting failed due to vm {vm.name} is running and the snapshot {snap.name} has no "
                "memory: please stop the VM first and then revert"
            )

    def steps(self) -> Sequence[Step]:
        return [
            Step("reverting", self._reverting, undo=self._unrevert),
            Step("new tops", self._new_tops, undo=self._drop_tops),
            Step("stop vm", self._stop, undo=self._restart),
            Step("switch", self._switch, commit=True),
            Step("remove old tops", self._remove_old),
            Step("restore", self._restore),
            Step("done", self._done),
        ]

    def _reverting(self) -> StepData:
        with self.db.session() as s:
            snap = load_snapshot(s, self.params.snapshot_id)
            vm = load_vm(s, self.params.vm_id)
            snap.state = "Reverting"
            return {"host_id": vm.host_id if vm.state == "Running" else None}

    def _unrevert(self) -> None:
        with self.db.session() as s:
            snap = s.get(VMSnapshot, self.params.snapshot_id)
            if snap is not None and snap.state == "Reverting":
                snap.state = "Ready"

    def _stop(self) -> StepData:
        """A running VM (DiskAndMemory) stops first; stopping twice is harmless."""
        with self.db.session() as s:
            vm = load_vm(s, self.params.vm_id)
            if vm.state != "Running" or not vm.host_id:
                return {}
            host = s.get(Host, vm.host_id)
            assert host is not None
            client, name, host_name = host_client(host), vm.instance_name, host.name
        with agent_errors(host_name):
            client.call(StopVm(name=name, force=True, timeout_s=GRACEFUL_STOP_S))
        with self.db.session() as s:
            vm = load_vm(s, self.params.vm_id)
            if vm.state == "Running":
                vm_to(vm, "Stopped")
            vm.host_id = None
        return {}

    def _restart(self) -> None:
        """Undone before the switch: the VM stopped for the revert starts again on its old disks (a cold
        boot: its memory was not saved)."""
        host_id = self.output("reverting").get("host_id")
        with self.db.session() as s:
            vm = load_vm(s, self.params.vm_id)
            host = s.get(Host, host_id) if host_id else None
            if host is None or vm.state != "Stopped":
                return
            spec, client, host_name = vm_spec(s, vm), host_client(host), host.name
            network_calls = prepare_for_vm(s, vm, host)  # its networks and security-group filter first
        for call in network_calls:
            call.run()
        with agent_errors(host_name):
            client.call(StartVm(spec=spec))
        with self.db.session() as s:
            vm = load_vm(s, self.params.vm_id)
            vm_to(vm, "Running")
            vm.host_id = vm.last_host_id = host_id

    def _new_tops(self) -> StepData:
        tops: list[dict[str, Any]] = []
        with self.db.session() as s:
            for d in snapshot_disks(s, self.params.snapshot_id):
                vol, frozen = s.get(Volume, d.volume_id), s.get(Layer, d.layer_id)
                assert vol is not None and frozen is not None
                row = new_layer_row(s, vol, frozen.pool_id, frozen.id, self.job.job_id)
                tops.append({"volume_id": vol.id, "new_top": row.id, "frozen": frozen.id, "old_top": vol.top_layer_id})
        for t in tops:
            with self.db.session() as s:
                new_ref, backing = layer_ref(s, t["new_top"]), layer_ref(s, t["frozen"])
                client, host_name = pools_client(s, [t["new_top"]])
            with agent_errors(host_name):
                info = client.call(CreateLayer(layer=new_ref, size_bytes=None, backing=backing))
            t["physical"] = info.physical_size
        return {"tops": tops}

    def _drop_tops(self) -> None:
        with self.db.session() as s:
            mine = select(Layer.id).where(
                Layer.creating_job == self.job.job_id, Layer.state == "Creating", Layer.removed.is_(None)
            )
            ids = list(s.scalars(mine))
        for lid in ids:
            remove_unfinished_layer(self.db, lid)

    def _switch(self) -> StepData:
        tops = self.output("new tops")["tops"]
        old: list[str] = []
        with self.db.session() as s:
            vm = load_vm(s, self.params.vm_id)
            for t in tops:
                vol, new = s.get(Volume, t["volume_id"]), s.get(Layer, t["new_top"])
                assert vol is not None and new is not None
                if vol.top_layer_id != new.id:
                    new.state, new.creating_job, new.physical_size = "Ready", None, int(t.get("physical", 196_608))
                    vol.top_layer_id = new.id
                if t["old_top"] and t["old_top"] != new.id:
                    old.append(t["old_top"])
            vm.current_snapshot_id = self.params.snapshot_id
        return {"old": old}

    def _remove_old(self) -> StepData:
        for lid in self.output("switch").get("old", []):
            with self.db.session() as s:
                row = s.get(Layer, lid)
                if row is None or row.removed is not None or held_by_snapshot(s, lid):
                    continue
                child = s.scalar(select(Layer.id).where(Layer.parent_id == lid, Layer.removed.is_(None)))
                if child is not None:
                    continue
            remove_layer_file(self.db, lid)
        return {}

    def _restore(self) -> StepData:
        with self.db.session() as s:
            snap, vm = load_snapshot(s, self.params.snapshot_id), load_vm(s, self.params.vm_id)
            if snap.snapshot_type != "DiskAndMemory" or snap.memory_layer_id is None or vm.state == "Running":
                return {}
            mem = s.get(Layer, snap.memory_layer_id)
            assert mem is not None
            pool = s.get(StoragePool, mem.pool_id)
            assert pool is not None
            host = host_for(s, [pool], prefer=self.output("reverting").get("host_id"))
            spec, memory = vm_spec(s, vm), layer_ref(s, mem.id)
            client, host_name, host_id = host_client(host), host.name, host.id
            vm_to(vm, "Starting")
            vm.host_id = vm.last_host_id = host_id
            network_calls = prepare_for_vm(s, vm, host)  # its networks and security-group filter first
        try:
            for call in network_calls:
                call.run()
            with agent_errors(host_name):
                client.run_long(RestoreVm(spec=spec, memory=memory), on_progress=self.job.progress)
        except BaseException:
            with contextlib.suppress(AgentClientError):
                client.call(StopVm(name=spec.name, force=True))
            with self.db.session() as s:
                vm = load_vm(s, self.params.vm_id)
                vm_to(vm, "Stopped")
                vm.host_id = None
            raise
        with self.db.session() as s:
            vm_to(load_vm(s, self.params.vm_id), "Running")
        return {}

    def _done(self) -> StepData:
        with self.db.session() as s:
            snap = load_snapshot(s, self.params.snapshot_id)
            if snap.state == "Reverting":
                snap.state = "Ready"
        return {}

    def result(self) -> JobResult:
        return {"type": VM_SNAPSHOT_RESULT, "id": self.params.snapshot_id}

    @classmethod
    def failed(cls, session: Session, params: RevertParams) -> None:
        snap = session.get(VMSnapshot, params.snapshot_id)
        if snap is not None and snap.state == "Reverting":
            snap.state = "Ready"
        vm = session.get(VirtualMachine, params.vm_id)
        if vm is not None and vm.state == "Starting":
            vm_to(vm, "Stopped")
            vm.host_id = None


def revert(ctx: CallContext, args: dict[str, Any]) -> tuple[VMSnapshot, str]:
    snap: VMSnapshot = get_owned(ctx, VMSnapshot, args["vmsnapshotid"], "VM snapshot", "vmsnapshotid")
    if snap.hidden:
        raise InvalidParameter(f"Unable to find VM snapshot with vmsnapshotid={snap.id}")
    params = RevertParams(snapshot_id=snap.id, vm_id=snap.vm_id)
    return snap, jobs.submit_operation(ctx, RevertToVMSnapshot, params, "VMSnapshot", snap.id)
