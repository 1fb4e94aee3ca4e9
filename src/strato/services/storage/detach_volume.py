"""detachVolume: a data disk leaves its VM, hot-unplugged first when the VM runs.

Resumable: its purpose is to finish, and both steps are safe to repeat (unplugging a disk the guest no
longer has is no error). A guest that does not release the disk fails the unplug: the disk stays
attached, in the guest and in the database."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

from pydantic import BaseModel
from sqlalchemy import select
from sqlalchemy.orm import Session

from strato.db.models import Volume
from strato.engine.jobkinds import JobResult
from strato.engine.operation import Operation, Step, StepData
from strato.errors import InvalidParameter, NotFound
from strato.protocol.client import AgentCallError
from strato.protocol.messages import DetachDisk, ErrorCode
from strato.services.core import jobs
from strato.services.core.access import get_vm
from strato.services.core.agents import agent_errors, host_client
from strato.services.core.context import CallContext
from strato.services.core.states import require_vm_state
from strato.services.storage.rules import refuse_with_vm_snapshots
from strato.services.storage.volumes import VOLUME_RESULT, get_volume, live_vm, live_volume, running_host


class DetachParams(BaseModel):
    volume_id: str
    vm_id: str


class DetachVolume(Operation[DetachParams]):
    """detachVolume: hot-unplug when the VM runs, then forget the attachment."""

    kind: ClassVar[str] = "volume.detach"
    cmd: ClassVar[str] = "detachVolume"
    event: ClassVar[str | None] = "VOLUME.DETACH"
    params_model = DetachParams
    resumable: ClassVar[bool] = True

    @classmethod
    def resources(cls, params: DetachParams) -> list[str]:
        return [f"volume:{params.volume_id}", f"vm:{params.vm_id}"]

    @classmethod
    def check(cls, session: Session, params: DetachParams) -> None:
        vol = live_volume(session, params.volume_id)
        if vol.volume_type == "ROOT":
            raise InvalidParameter(f"Volume {vol.name} is the root disk of its VM; a root disk cannot be detached")
        if vol.vm_id != params.vm_id:
            raise InvalidParameter(f"Volume {vol.name} is not attached to any VM" if not vol.vm_id
                                   else f"Volume {vol.name} is attached to another VM")  # fmt: skip
        require_vm_state(live_vm(session, params.vm_id), "Running", "Stopped", action="detach a volume from")
        refuse_with_vm_snapshots(session, params.vm_id, "detach volume")

    def steps(self) -> Sequence[Step]:
        return [Step("hot-unplug", self._unplug), Step("record detachment", self._forget)]

    def _unplug(self) -> StepData:
        with self.db.session() as s:
            vol, vm = live_volume(s, self.params.volume_id), live_vm(s, self.params.vm_id)
            host = running_host(s, vm)
            if host is None or vol.vm_id != vm.id or vol.device_id is None:
                return {"hotunplugged": False}
            client, host_name, vm_name, device = host_client(host), host.name, vm.instance_name, vol.device_id
        with agent_errors(host_name):
            try:
                client.call(DetachDisk(vm_name=vm_name, device_id=device))
            except AgentCallError as exc:
                if exc.code != ErrorCode.NOT_FOUND:  # unplugged before a restart: done
                    raise
        return {"hotunplugged": True}

    def _forget(self) -> None:
        with self.db.session() as s:
            vol = live_volume(s, self.params.volume_id)
            if vol.vm_id == self.params.vm_id:
                vol.vm_id, vol.device_id, vol.attached = None, None, None

    def result(self) -> JobResult:
        return {"type": VOLUME_RESULT, "id": self.params.volume_id}


def detach(ctx: CallContext, args: dict[str, Any]) -> str:
    """detachVolume at the request: the volume by id, or by VM and device id; then the operation's rules."""
    if args.get("id"):
        vol = get_volume(ctx, args["id"])
    elif args.get("virtualmachineid") and args.get("deviceid") is not None:
        vm = get_vm(ctx, args["virtualmachineid"], "virtualmachineid")
        found = ctx.session.scalar(
            select(Volume).where(Volume.vm_id == vm.id, Volume.device_id == args["deviceid"], Volume.removed.is_(None))
        )
        if found is None:
            raise NotFound(f"VM {vm.name} has no volume at device id {args['deviceid']}")
        vol = found
    else:
        raise InvalidParameter("Give id, or virtualmachineid with deviceid")
    if vol.vm_id:
        get_vm(ctx, vol.vm_id)  # the caller may act on that VM
    params = DetachParams(volume_id=vol.id, vm_id=vol.vm_id or "")
    return jobs.submit_operation(ctx, DetachVolume, params, "Volume", vol.id)
