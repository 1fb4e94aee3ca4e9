"""createVolume: a data disk from a disk offering.

As in CloudStack, a volume given neither a pool (storageid) nor a VM is only Allocated: a row, no file,
no space taken on any pool; it is created on a pool when it is attached (attach_volume). With a pool it
is created there now; with a VM it is created on a pool the VM's host reaches and attached.

"ready" is the commit point: from there on the volume exists, and a failed attach leaves it Ready and
detached (as CloudStack does) instead of undoing it."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

from pydantic import BaseModel
from sqlalchemy.orm import Session

from strato.db.base import utcnow
from strato.db.models import DiskOffering, Snapshot, StoragePool, Volume, Zone
from strato.engine.jobkinds import JobResult
from strato.engine.operation import Operation, Step
from strato.errors import InvalidParameter, InvalidState, PermissionDenied
from strato.services.core import jobs, limits
from strato.services.core.access import get_vm
from strato.services.core.context import CallContext
from strato.services.core.lookup import get_live
from strato.services.core.states import volume_to
from strato.services.identity.identity import find_account
from strato.services.storage.attach_volume import AttachSteps
from strato.services.storage.placement import PlaceSteps
from strato.services.storage.rules import check_attach
from strato.services.storage.snapshots import backed_up, get_snapshot
from strato.services.storage.volume_from_snapshot import SnapshotPlaceSteps
from strato.services.storage.volumes import VOLUME_RESULT, live_vm, live_volume
from strato.units import GIB


class CreateVolumeParams(BaseModel):
    volume_id: str
    vm_id: str | None = None
    pool_id: str | None = None
    """The pool asked for (storageid); with neither it nor a VM the volume stays Allocated."""
    snapshot_id: str | None = None
    """The volume snapshot the volume is made from (it is then created at once, on a pool placed)."""


class CreateVolume(Operation[CreateVolumeParams]):
    """createVolume: place, make the layer, Ready (commit); then attach when a VM is given. Without a pool
    or a VM there is no step: the volume stays Allocated until an attach creates it."""

    kind: ClassVar[str] = "volume.create"
    cmd: ClassVar[str] = "createVolume"
    event: ClassVar[str | None] = "VOLUME.CREATE"
    params_model = CreateVolumeParams

    @classmethod
    def resources(cls, params: CreateVolumeParams) -> list[str]:
        locks = [f"volume:{params.volume_id}"] + ([f"vm:{params.vm_id}"] if params.vm_id else [])
        return locks + ([f"snapshot:{params.snapshot_id}"] if params.snapshot_id else [])

    @classmethod
    def check(cls, session: Session, params: CreateVolumeParams) -> None:
        vol = live_volume(session, params.volume_id)
        if vol.state != "Allocated":
            raise InvalidState(f"Volume {vol.name} is {vol.state}; it has been created already")
        if params.snapshot_id:
            backed_up(session, params.snapshot_id)
        if params.vm_id:
            pool = session.get(StoragePool, params.pool_id) if params.pool_id else None
            check_attach(session, live_vm(session, params.vm_id), None, pool)

    def steps(self) -> Sequence[Step]:
        if not self.params.vm_id and not self.params.pool_id and not self.params.snapshot_id:
            return []
        if self.params.snapshot_id:
            out = SnapshotPlaceSteps(self, self.params.volume_id, self.params.vm_id, self.params.snapshot_id).steps()
        else:
            out = PlaceSteps(self, self.params.volume_id, self.params.vm_id).steps()
        out.append(Step("ready", self._ready, commit=True))
        if self.params.vm_id:
            out.extend(AttachSteps(self, self.params.volume_id, self.params.vm_id, None).steps())
        return out

    def _ready(self) -> None:
        with self.db.session() as s:
            vol = live_volume(s, self.params.volume_id)
            if vol.state != "Ready":
                volume_to(vol, "Ready")

    def result(self) -> JobResult:
        return {"type": VOLUME_RESULT, "id": self.params.volume_id}

    @classmethod
    def failed(cls, session: Session, params: CreateVolumeParams) -> None:
        vol = session.get(Volume, params.volume_id)
        if vol is not None and vol.state in ("Allocated", "Creating"):
            volume_to(vol, "Expunged")
            vol.removed = utcnow()


def _snapshot_offering(session: Session, snap: Snapshot) -> str | None:
    """The disk offering of the snapshot's volume (CloudStack's default for a volume from a snapshot)."""
    vol = session.get(Volume, snap.volume_id)
    offering = session.get(DiskOffering, vol.disk_offering_id) if vol is not None and vol.disk_offering_id else None
    return offering.id if offering is not None and offering.removed is None else None


def _offering_size(offering: DiskOffering, args: dict[str, Any]) -> int:
    if offering.customized:
        if not args.get("size"):
            raise InvalidParameter(f"Disk offering {offering.name} has a custom size: give size in GiB")
        return int(args["size"]) * GIB
    if args.get("size"):
        raise InvalidParameter(f"Disk offering {offering.name} has a fixed size; size may not be given")
    return offering.disk_size_bytes


def create(ctx: CallContext, args: dict[str, Any]) -> tuple[Volume, str]:
    """createVolume at the request: parameters, permissions and limits; the volume row (Allocated), then
    the operation's own rules and its job."""
    owner = find_account(ctx, args["account"], args.get("domainid")) if args.get("account") else ctx.account
    vm = get_vm(ctx, args["virtualmachineid"], "virtualmachineid") if args.get("virtualmachineid") else None
    snap = get_snapshot(ctx, args["snapshotid"], "snapshotid") if args.get("snapshotid") else None
    if snap is not None:
        backed_up(ctx.session, snap.id)
        if args.get("zoneid") and args["zoneid"] != snap.zone_id:
            raise InvalidParameter(f"Snapshot {snap.name} (snapshotid) is not in zone {args['zoneid']} (zoneid)")
    zone_id = args.get("zoneid") or (snap.zone_id if snap else None) or (vm.zone_id if vm else None)
    if not zone_id:
        raise InvalidParameter("Parameter zoneid is required (or virtualmachineid)")
    zone = get_live(ctx.session, Zone, zone_id, "zone", "zoneid")
    offering_id = args.get("diskofferingid") or (_snapshot_offering(ctx.session, snap) if snap else None)
    if not offering_id and snap is None:
        raise InvalidParameter("Parameter diskofferingid is required (a custom-size offering takes size in GiB)")
    offering = (
        get_live(ctx.session, DiskOffering, offering_id, "disk offering", "diskofferingid") if offering_id else None
    )
    if snap is not None:
        size = snap.virtual_size  # the snapshot's disk, whatever the offering's size
        if args.get("size"):
            raise InvalidParameter("Parameter size may not be given with snapshotid: the volume is the snapshot's size")
    else:
        assert offering is not None
        size = _offering_size(offering, args)
    pool_id = args.get("storageid")
    if vm is not None and vm.zone_id != zone.id:
        raise InvalidParameter(f"Zone {zone.name} (zoneid) is not the zone of VM {vm.name} (virtualmachineid)")
    if pool_id:
        if not ctx.is_root_admin:
            raise PermissionDenied("Only admins may choose a storage pool (storageid)")
        pool = get_live(ctx.session, StoragePool, pool_id, "storage pool", "storageid")
        if pool.zone_id != zone.id:
            raise InvalidParameter(f"Storage pool {pool.name} is not in zone {zone.name}")
        if pool.state != "Up":
            raise InvalidParameter(f"Parameter storageid: pool {pool.name} is {pool.state}, it takes no new disks")
    limits.check(ctx.session, owner, volumes=1, storage_bytes=size)
    vol = Volume(
        name=args.get("name") or "",
        account_id=owner.id,
        domain_id=owner.domain_id,
        zone_id=zone.id,
        volume_type="DATADISK",
        size=size,
        disk_offering_id=offering.id if offering else None,
        state="Allocated",
        provisioning_type=offering.provisioning_type if offering else "thin",
        requested_pool_id=pool_id,
    )
    ctx.session.add(vol)
    ctx.session.flush()
    vol.name = vol.name or f"DATA-{vol.id[:8]}"
    params = CreateVolumeParams(
        volume_id=vol.id,
        vm_id=vm.id if vm else None,
        pool_id=pool_id,
        snapshot_id=snap.id if snap else None,
    )
    return vol, jobs.submit_operation(ctx, CreateVolume, params, "Volume", vol.id)
