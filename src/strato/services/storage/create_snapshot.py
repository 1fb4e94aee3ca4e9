"""createSnapshot: a flat copy of one volume's chain, at this instant, onto its zone's image store.

A disk of a running VM is copied live by its agent (`blockdev-backup sync=full`, BackupDisk): the copy
holds the instant the job started while the guest runs on, and the VM's chain stays exactly as the
database records it. A disk no VM runs (stopped VM, detached volume) is flattened offline
(`qemu-img convert`, ConvertLayer) by a host reaching its pool and the store.

States as CloudStack's: Allocated (the request) -> Creating -> BackingUp -> BackedUp; a failure or a
crash before BackedUp removes the file and leaves the snapshot in Error (nothing stays Creating)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any, ClassVar

from pydantic import BaseModel
from sqlalchemy import select
from sqlalchemy.orm import Session

from strato.db.models import Host, Layer, Snapshot, SnapshotPolicy, StoragePool, VirtualMachine, Volume
from strato.engine import queue
from strato.engine.jobkinds import JobResult
from strato.engine.operation import Operation, Step, StepData
from strato.errors import InvalidParameter, InvalidState
from strato.protocol.messages import BackupDisk, ConvertLayer, LayerInfo
from strato.services.core import jobs, tags, usage
from strato.services.core.agents import agent_errors, host_client
from strato.services.core.context import CallContext
from strato.services.core.reach import host_for
from strato.services.core.states import volume_to
from strato.services.storage.delete_snapshot import DeleteSnapshot, DeleteSnapshotParams
from strato.services.storage.layers import ref
from strato.services.storage.snapshots import (
    SNAPSHOT_RESULT,
    check_limit,
    live_snapshot,
    remove_file,
    snapshot_file,
    snapshot_path,
    zone_store,
)
from strato.services.storage.volumes import get_volume, live_volume

# A VM in these states has no QEMU holding the disk: the copy is made offline.
_OFFLINE_VM_STATES = ("Stopped", "Hibernated")


class CreateSnapshotParams(BaseModel):
    snapshot_id: str
    volume_id: str
    vm_id: str | None = None
    """The volume's VM at the request (locked with it)."""


def check_volume(session: Session, vol: Volume) -> None:
    """A snapshot is taken of a Ready volume with a disk, whose VM (if any) runs or is down for good."""
    if vol.state != "Ready" or not vol.top_layer_id or not vol.pool_id:
        raise InvalidState(f"Volume {vol.name} is {vol.state}; a snapshot needs a Ready volume with a disk")
    if vol.vm_id:
        vm = session.get(VirtualMachine, vol.vm_id)
        if vm is not None and vm.state not in ("Running", *_OFFLINE_VM_STATES):
            raise InvalidState(f"VM {vm.name} of volume {vol.name} is {vm.state}; it must be Running or Stopped")


class CreateSnapshot(Operation[CreateSnapshotParams]):
    kind: ClassVar[str] = "snapshot.create"
    cmd: ClassVar[str] = "createSnapshot"
    event: ClassVar[str | None] = "SNAPSHOT.CREATE"
    params_model = CreateSnapshotParams

    @classmethod
    def resources(cls, params: CreateSnapshotParams) -> list[str]:
        return [f"volume:{params.volume_id}"] + ([f"vm:{params.vm_id}"] if params.vm_id else [])

    @classmethod
    def check(cls, session: Session, params: CreateSnapshotParams) -> None:
        vol = live_volume(session, params.volume_id)
        check_volume(session, vol)
        snap = live_snapshot(session, params.snapshot_id)
        if snap.state not in ("Allocated", "Creating", "BackingUp"):
            raise InvalidState(f"Snapshot {snap.name} is {snap.state}")
        zone_store(session, vol.zone_id)
        check_limit(session, snap)

    def steps(self) -> Sequence[Step]:
        return [
            Step("plan", self._plan, undo=self._unplan),
            Step("back up", self._back_up, undo=self._remove),
            Step("backed up", self._done, commit=True),
        ]

    def _plan(self) -> StepData:
        """Creating; the store and the file's name; the volume Snapshotting while its copy is made."""
        with self.db.session() as s:
            vol = live_volume(s, self.params.volume_id)
            snap = live_snapshot(s, self.params.snapshot_id)
            store = zone_store(s, vol.zone_id)
            snap.state, snap.store_id, snap.path = "Creating", store.id, snapshot_path(snap)
            snap.virtual_size = vol.size
            if vol.state == "Ready":
                volume_to(vol, "Snapshotting")
            return {"store_id": store.id}

    def _unplan(self) -> None:
        with self.db.session() as s:
            vol = s.get(Volume, self.params.volume_id)
            if vol is not None and vol.state == "Snapshotting":
                volume_to(vol, "Ready")

    def _back_up(self) -> StepData:
        with self.db.session() as s:
            vol = live_volume(s, self.params.volume_id)
            snap = live_snapshot(s, self.params.snapshot_id)
            snap.state = "BackingUp"
            target, store = snapshot_file(s, snap)
            vm = s.get(VirtualMachine, vol.vm_id) if vol.vm_id else None
            live = vm is not None and vm.state == "Running"
            if live:
                assert vm is not None
                host = s.get(Host, vm.host_id)
                if host is None:
                    raise InvalidState(f"VM {vm.name} runs on no known host")
                if store.zone_id and host.zone_id != store.zone_id:
                    raise InvalidParameter(f"Host {host.name} does not mount image store {store.name}")
                command: BackupDisk | ConvertLayer = BackupDisk(
                    vm_name=vm.instance_name, device_id=vol.device_id or 0, target=target
                )
            else:
                top = s.get(Layer, vol.top_layer_id)
                pool = s.get(StoragePool, vol.pool_id)
                assert top is not None and pool is not None
                host = host_for(s, [pool], [store])
                command = ConvertLayer(source=ref(pool, top.path), target=target)
            client, host_name = host_client(host), host.name
        with agent_errors(host_name):
            info: LayerInfo = client.run_long(command, on_progress=self.job.part_progress(0, 1))
        return {"virtual_size": info.virtual_size, "physical_size": info.physical_size, "live": live}

    def _remove(self) -> None:
        remove_file(self.db, self.params.snapshot_id)

    def _done(self) -> None:
        out = self.output("back up")
        with self.db.session() as s:
            snap = live_snapshot(s, self.params.snapshot_id)
            snap.state = "BackedUp"
            snap.virtual_size = int(out.get("virtual_size") or snap.virtual_size)
            snap.physical_size = int(out.get("physical_size") or 0)
            usage.record(
                s, usage.SNAPSHOT.start_event, account_id=snap.account_id, domain_id=snap.domain_id,
                resource_id=snap.id, name=snap.name, zone_id=snap.zone_id, size=snap.physical_size,
                virtual_size=snap.virtual_size,
            )  # fmt: skip
            vol = s.get(Volume, self.params.volume_id)
            if vol is not None and vol.state == "Snapshotting":
                volume_to(vol, "Ready")
            if snap.policy_id:
                _keep_max(s, snap)

    def result(self) -> JobResult:
        return {"type": SNAPSHOT_RESULT, "id": self.params.snapshot_id}

    @classmethod
    def failed(cls, session: Session, params: CreateSnapshotParams) -> None:
        snap = session.get(Snapshot, params.snapshot_id)
        if snap is not None and snap.state in ("Allocated", "Creating", "BackingUp"):
            snap.state = "Error"
        vol = session.get(Volume, params.volume_id)
        if vol is not None and vol.state == "Snapshotting":
            volume_to(vol, "Ready")


def _keep_max(s: Session, snap: Snapshot) -> None:
    """A policy keeps at most maxsnaps snapshots: the oldest beyond are deleted (a job each)."""
    policy = s.get(SnapshotPolicy, snap.policy_id)
    if policy is None:
        return
    kept = list(s.scalars(select(Snapshot).where(Snapshot.policy_id == policy.id, Snapshot.removed.is_(None),
                                                 Snapshot.state == "BackedUp")
                          .order_by(Snapshot.created.desc(), Snapshot.id)))  # fmt: skip
    for old in kept[policy.max_snaps :]:
        params = DeleteSnapshotParams(snapshot_id=old.id)
        if jobs.active_on(s, f"snapshot:{old.id}"):
            continue
        queue.submit(s, kind=DeleteSnapshot.kind, cmd=DeleteSnapshot.cmd, params=params.model_dump(mode="json"),
                     resources=DeleteSnapshot.resources(params), account_id=old.account_id, user_id=None,
                     instance_type="Snapshot", instance_id=old.id)  # fmt: skip


def new_snapshot(session: Session, vol: Volume, name: str | None, interval: str = "MANUAL",
                 policy_id: str | None = None) -> Snapshot:  # fmt: skip
    """The Allocated row, named as CloudStack names snapshots (<vm>_<volume>_<timestamp>)."""
    vm = session.get(VirtualMachine, vol.vm_id) if vol.vm_id else None
    stamp = datetime.now(UTC).strftime("%Y%m%d%H%M%S")
    default = f"{vm.name}_{vol.name}_{stamp}" if vm is not None else f"{vol.name}_{stamp}"
    snap = Snapshot(volume_id=vol.id, account_id=vol.account_id, domain_id=vol.domain_id, zone_id=vol.zone_id,
                    name=name or default, snapshot_type="MANUAL" if interval == "MANUAL" else "RECURRING",
                    interval_type=interval, state="Allocated", virtual_size=vol.size, policy_id=policy_id)  # fmt: skip
    session.add(snap)
    session.flush()
    return snap


def create(ctx: CallContext, args: dict[str, Any]) -> tuple[Snapshot, str]:
    """createSnapshot at the request: the volume's rules, the row (Allocated), then the job."""
    vol = get_volume(ctx, args["volumeid"], "volumeid")
    if args.get("quiescevm"):
        raise InvalidParameter("quiescevm=true is not supported: there is no guest agent to quiesce the VM through")
    check_volume(ctx.session, vol)
    if args.get("tags") is not None:
        tags.check_tags(args["tags"])
    interval, policy_id = "MANUAL", None
    if args.get("policyid"):
        policy = ctx.session.get(SnapshotPolicy, args["policyid"])
        if policy is None or policy.removed is not None or policy.volume_id != vol.id:
            raise InvalidParameter(
                f"Parameter policyid: {args['policyid']} is not a snapshot policy of volume {vol.name}"
            )
        interval, policy_id = policy.interval_type, policy.id
    snap = new_snapshot(ctx.session, vol, args.get("name"), interval, policy_id)
    if args.get("tags"):
        tags.create_tags(ctx, "Snapshot", [snap.id], args["tags"])
    params = CreateSnapshotParams(snapshot_id=snap.id, volume_id=vol.id, vm_id=vol.vm_id)
    return snap, jobs.submit_operation(ctx, CreateSnapshot, params, "Snapshot", snap.id)


def submit_recurring(ctx: CallContext, vol: Volume, interval: str, policy_id: str) -> tuple[Snapshot, str]:
    """A policy's snapshot (snapshottype RECURRING), submitted as its owner."""
    snap = new_snapshot(ctx.session, vol, None, interval, policy_id)
    params = CreateSnapshotParams(snapshot_id=snap.id, volume_id=vol.id, vm_id=vol.vm_id)
    return snap, jobs.submit_operation(ctx, CreateSnapshot, params, "Snapshot", snap.id)
