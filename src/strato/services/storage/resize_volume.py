"""resizeVolume: a volume grows (never shrinks), offline with qemu-img or live through its running VM.
An Allocated volume (no disk yet: it is made where it is first attached) only records its new size.

Resumable: growing a disk to the size it already has is no error, so a job left by a dead server is
finished rather than undone; a failed grow leaves the volume Ready at its old size."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

from pydantic import BaseModel
from sqlalchemy.orm import Session

from strato.db.models import Account, DiskOffering, Layer, StoragePool, Volume
from strato.engine.allocator import Allocator, DiskRequest
from strato.engine.jobkinds import JobResult
from strato.engine.operation import Operation, Step, StepData
from strato.errors import InsufficientCapacity, InvalidParameter
from strato.protocol.messages import ResizeLayer
from strato.services.core import jobs, limits, settings
from strato.services.core.access import get_vm
from strato.services.core.agents import agent_errors, host_client
from strato.services.core.context import CallContext
from strato.services.core.lookup import get_live
from strato.services.core.reach import host_for
from strato.services.core.states import require_vm_state, volume_to
from strato.services.storage.layers import ref
from strato.services.storage.rules import refuse_with_vm_snapshots
from strato.services.storage.volumes import VOLUME_RESULT, get_volume, live_vm, live_volume, running_host
from strato.units import GIB


class ResizeParams(BaseModel):
    volume_id: str
    vm_id: str | None = None
    """The VM the volume was attached to at the request (locked with it)."""
    size: int
    offering_id: str | None = None
    """The new disk offering, recorded once the disk has grown."""


class ResizeVolume(Operation[ResizeParams]):
    """resizeVolume: mark Resizing, grow the layer (live when the VM runs), record the new size."""

    kind: ClassVar[str] = "volume.resize"
    cmd: ClassVar[str] = "resizeVolume"
    event: ClassVar[str | None] = "VOLUME.RESIZE"
    params_model = ResizeParams
    resumable: ClassVar[bool] = True

    @classmethod
    def resources(cls, params: ResizeParams) -> list[str]:
        return [f"volume:{params.volume_id}"] + ([f"vm:{params.vm_id}"] if params.vm_id else [])

    @classmethod
    def check(cls, session: Session, params: ResizeParams) -> None:
        vol = live_volume(session, params.volume_id)
        if vol.state not in ("Ready", "Allocated"):
            raise InvalidParameter(f"Volume {vol.name} is {vol.state}; only Ready and Allocated volumes can be resized")
        if params.size < vol.size:
            raise InvalidParameter(
                f"Volume {vol.name} is {vol.size / GIB:.1f} GiB; shrinking to {params.size / GIB:.1f} GiB "
                "is not supported (data would be lost)"
            )
        refuse_with_vm_snapshots(session, vol.vm_id, "resize volume")
        owner = session.get(Account, vol.account_id)
        assert owner is not None
        limits.check(session, owner, storage_bytes=params.size - vol.size)
        if vol.vm_id:
            require_vm_state(live_vm(session, vol.vm_id), "Running", "Stopped", action="resize a volume of")
        pool = session.get(StoragePool, vol.pool_id) if vol.pool_id else None
        if pool is not None and params.size > vol.size:  # the pool must have room for the growth
            growth = DiskRequest(label=f"the growth of volume {vol.name}", size=params.size - vol.size, pool_id=pool.id)
            why = Allocator(session, settings.allocation_limits(session)).why_not(pool, growth, None)
            if why is not None:
                raise InsufficientCapacity(f"Cannot resize volume {vol.name}: {why}")

    def steps(self) -> Sequence[Step]:
        return [
            Step("mark resizing", self._mark, undo=self._unmark),
            Step("grow", self._grow),
            Step("record size", self._record),
        ]

    def _mark(self) -> StepData:
        with self.db.session() as s:
            vol = live_volume(s, self.params.volume_id)
            if vol.state == "Allocated":  # no disk to grow: nothing transitional
                return {"allocated": True}
            if vol.state != "Resizing":
                volume_to(vol, "Resizing")
            return {"allocated": False}

    def _unmark(self) -> None:
        with self.db.session() as s:
            vol = s.get(Volume, self.params.volume_id)
            if vol is not None and vol.state == "Resizing":
                volume_to(vol, "Ready")

    def _grow(self) -> StepData:
        if self.output("mark resizing").get("allocated"):
            return {"virtual_size": self.params.size, "physical_size": 0, "live": False}
        with self.db.session() as s:
            vol = live_volume(s, self.params.volume_id)
            assert vol.pool_id and vol.top_layer_id
            pool, top = s.get(StoragePool, vol.pool_id), s.get(Layer, vol.top_layer_id)
            assert pool is not None and top is not None
            vm = live_vm(s, vol.vm_id) if vol.vm_id else None
            live_host = running_host(s, vm) if vm is not None else None
            host = live_host or host_for(s, [pool])
            cmd = ResizeLayer(
                layer=ref(pool, top.path),
                size_bytes=self.params.size,
                vm_name=vm.instance_name if live_host is not None and vm is not None else None,
                device_id=vol.device_id if live_host is not None else None,
            )
            client, host_name = host_client(host), host.name
        with agent_errors(host_name):
            info = client.call(cmd)
        return {"virtual_size": info.virtual_size, "physical_size": info.physical_size, "live": live_host is not None}

    def _record(self) -> None:
        grown = self.output("grow")
        with self.db.session() as s:
            vol = live_volume(s, self.params.volume_id)
            layer = s.get(Layer, vol.top_layer_id) if vol.top_layer_id else None
            vol.size = int(grown["virtual_size"])
            if self.params.offering_id:
                vol.disk_offering_id = self.params.offering_id
            if vol.state == "Resizing":
                volume_to(vol, "Ready")
            if layer is not None:
                layer.virtual_size, layer.physical_size = int(grown["virtual_size"]), int(grown["physical_size"])

    def result(self) -> JobResult:
        return {"type": VOLUME_RESULT, "id": self.params.volume_id}

    @classmethod
    def failed(cls, session: Session, params: ResizeParams) -> None:
        vol = session.get(Volume, params.volume_id)
        if vol is not None and vol.state == "Resizing":
            volume_to(vol, "Ready")


def resize(ctx: CallContext, args: dict[str, Any]) -> str:
    """resizeVolume at the request: the new size from size (GiB) or a disk offering; then the rules."""
    vol = get_volume(ctx, args["id"])
    size, offering_id = vol.size, None
    if args.get("diskofferingid"):
        offering = get_live(ctx.session, DiskOffering, args["diskofferingid"], "disk offering", "diskofferingid")
        size = offering.disk_size_bytes if not offering.customized else size
        if offering.customized:
            if not args.get("size"):
                raise InvalidParameter("A custom-size disk offering needs size (GiB)")
            size = args["size"] * GIB
        offering_id = offering.id
    elif args.get("size"):
        size = args["size"] * GIB
    else:
        raise InvalidParameter("Give size (GiB) or diskofferingid")
    if vol.vm_id:
        get_vm(ctx, vol.vm_id)  # the caller may act on that VM
    params = ResizeParams(volume_id=vol.id, vm_id=vol.vm_id, size=size, offering_id=offering_id)
    return jobs.submit_operation(ctx, ResizeVolume, params, "Volume", vol.id)
