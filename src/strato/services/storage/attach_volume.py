"""attachVolume: a data disk joins a VM, hot-plugged when the VM runs.

The attachment is recorded first, then plugged: a crash in between leaves the database knowing the disk
may be in the guest, and the undo (unplug, then forget) takes both back. The same two steps end
createVolume with a VM (`AttachSteps`).

An Allocated volume (createVolume gave it no pool) is created in between, as CloudStack does at attach:
on a pool the VM's host reaches (`rules.pool_for_new_disk`), then plugged; "ready" follows the commit.
A failed or interrupted attach of such a volume removes its file again and leaves it Allocated."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

from pydantic import BaseModel
from sqlalchemy import select
from sqlalchemy.orm import Session

from strato.db.base import utcnow
from strato.db.models import Volume
from strato.engine.jobkinds import JobResult
from strato.engine.operation import Operation, Step, StepData
from strato.errors import InvalidParameter
from strato.protocol.client import AgentCallError
from strato.protocol.messages import AttachDisk, DetachDisk, ErrorCode
from strato.services.core import jobs
from strato.services.core.access import get_vm
from strato.services.core.agents import agent_errors, host_client
from strato.services.core.context import CallContext
from strato.services.core.states import volume_to
from strato.services.storage.disks import disk_spec
from strato.services.storage.placement import PlaceSteps
from strato.services.storage.rules import check_attach, pool_for_new_disk, refuse_with_vm_snapshots
from strato.services.storage.volumes import VOLUME_RESULT, get_volume, live_vm, live_volume, running_host


class AttachParams(BaseModel):
    volume_id: str
    vm_id: str
    device_id: int | None = None
    """The device id asked for; None: the first free one from 1."""


def _device_taken(session: Session, vm_id: str, device_id: int, volume_id: str) -> Volume | None:
    return session.scalar(
        select(Volume).where(Volume.vm_id == vm_id, Volume.device_id == device_id, Volume.removed.is_(None),
                             Volume.id != volume_id)
    )  # fmt: skip


class AttachSteps:
    """The two steps of attaching a volume: record the attachment, then hot-plug it into a running VM
    (the commit point: the disk is attached). A tasklet of attachVolume and of createVolume with a VM."""

    def __init__(self, op: Operation[Any], volume_id: str, vm_id: str, device_id: int | None) -> None:
        self.op, self.volume_id, self.vm_id, self.device_id = op, volume_id, vm_id, device_id

    def steps(self, place: bool = False) -> list[Step]:
        """With `place`, an Allocated volume is created on a pool between the record and the plug."""
        record = Step("record attachment", self._record, undo=self._forget)
        plug = Step("hot-plug", self._plug, undo=self._unplug, commit=True)
        if not place:
            return [record, plug]
        return [record, *PlaceSteps(self.op, self.volume_id, self.vm_id).steps(), plug, Step("ready", self._ready)]

    def _ready(self) -> None:
        with self.op.db.session() as s:
            vol = live_volume(s, self.volume_id)
            if vol.state == "Creating":
                volume_to(vol, "Ready")

    def _record(self) -> StepData:
        with self.op.db.session() as s:
            vol, vm = live_volume(s, self.volume_id), live_vm(s, self.vm_id)
            if vol.vm_id == vm.id and vol.device_id is not None:  # done before a restart
                return {"device_id": vol.device_id}
            check_attach(s, vm, vol)  # again here: createVolume reaches it only once its volume exists
            device = self.device_id or 1
            while device == 0 or _device_taken(s, vm.id, device, vol.id) is not None:
                device += 1
            vol.vm_id, vol.device_id, vol.attached = vm.id, device, utcnow()
            return {"device_id": device}

    def _forget(self) -> None:
        with self.op.db.session() as s:
            vol = s.get(Volume, self.volume_id)
            if vol is not None and vol.vm_id == self.vm_id:
                vol.vm_id, vol.device_id, vol.attached = None, None, None

    def _plug(self) -> StepData:
        with self.op.db.session() as s:
            vol, vm = live_volume(s, self.volume_id), live_vm(s, self.vm_id)
            host = running_host(s, vm)
            if host is None:
                return {"hotplugged": False}
            spec = disk_spec(s, vol)
            client, host_name, vm_name = host_client(host), host.name, vm.instance_name
        with agent_errors(host_name):
            try:
                client.call(AttachDisk(vm_name=vm_name, disk=spec))
            except AgentCallError as exc:
                if exc.code != ErrorCode.ALREADY_EXISTS:  # plugged before a restart: done
                    raise
        return {"hotplugged": True}

    def _unplug(self) -> None:
        with self.op.db.session() as s:
            vol, vm = live_volume(s, self.volume_id), live_vm(s, self.vm_id)
            host = running_host(s, vm)
            if host is None or vol.vm_id != vm.id or vol.device_id is None:
                return
            client, host_name, vm_name, device = host_client(host), host.name, vm.instance_name, vol.device_id
        with agent_errors(host_name):
            try:
                client.call(DetachDisk(vm_name=vm_name, device_id=device))
            except AgentCallError as exc:
                if exc.code != ErrorCode.NOT_FOUND:  # never plugged: nothing to take back
                    raise


class AttachVolume(Operation[AttachParams]):
    """attachVolume: check, record the attachment, create an Allocated volume on a pool, hot-plug when the
    VM runs (commit), Ready."""

    kind: ClassVar[str] = "volume.attach"
    cmd: ClassVar[str] = "attachVolume"
    event: ClassVar[str | None] = "VOLUME.ATTACH"
    params_model = AttachParams

    @classmethod
    def resources(cls, params: AttachParams) -> list[str]:
        return [f"volume:{params.volume_id}", f"vm:{params.vm_id}"]

    @classmethod
    def check(cls, session: Session, params: AttachParams) -> None:
        vol, vm = live_volume(session, params.volume_id), live_vm(session, params.vm_id)
        refuse_with_vm_snapshots(session, vm.id, "attach volume")
        check_attach(session, vm, vol)
        if params.device_id is not None:
            taken = _device_taken(session, vm.id, params.device_id, vol.id)
            if taken is not None:
                raise InvalidParameter(f"Device id {params.device_id} is in use by volume {taken.name} (deviceid)")
        if vol.state == "Allocated":  # refused at once when no pool can take it
            pool_for_new_disk(session, vol, vm)

    def steps(self) -> Sequence[Step]:
        return AttachSteps(self, self.params.volume_id, self.params.vm_id, self.params.device_id).steps(place=True)

    @classmethod
    def failed(cls, session: Session, params: AttachParams) -> None:
        """A volume left Creating by an undo that could not finish: Ready when its file was made (it is
        usable where it is), else Allocated again."""
        vol = session.get(Volume, params.volume_id)
        if vol is not None and vol.removed is None and vol.state == "Creating":
            if vol.top_layer_id:
                volume_to(vol, "Ready")
            else:
                vol.pool_id = None
                volume_to(vol, "Allocated")

    def result(self) -> JobResult:
        return {"type": VOLUME_RESULT, "id": self.params.volume_id}


def attach(ctx: CallContext, args: dict[str, Any]) -> str:
    """attachVolume at the request: lookups and permissions, then the operation's own rules."""
    vol = get_volume(ctx, args["id"])
    vm = get_vm(ctx, args["virtualmachineid"], "virtualmachineid")
    device_id = args.get("deviceid")
    if device_id is not None and device_id < 1:
        raise InvalidParameter("Parameter deviceid must be 1 or more (0 is the root disk)")
    params = AttachParams(volume_id=vol.id, vm_id=vm.id, device_id=device_id)
    return jobs.submit_operation(ctx, AttachVolume, params, "Volume", vol.id)
