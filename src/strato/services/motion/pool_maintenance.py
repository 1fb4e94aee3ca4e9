"""enableStorageMaintenance / cancelStorageMaintenance: a pool is emptied by storage motion.

CloudStack stops the VMs whose disks are on a pool going into maintenance; Strato moves the disks
instead: live for running VMs, offline for stopped VMs and detached volumes, each move a migrateVolume
job of its own (with its locks, step log and recovery) that this job queues and waits for. Every disk's
target is planned before the first one moves, so a disk with nowhere to go fails the maintenance at once
with the reason and nothing is touched. Config drives (read by the guest at boot) are copied to the
pool of their VM's root disk. Template copies cached on the pool stay: they are only a cache, made again
where needed. Meant to finish: after a crash the job goes on from the first step not done, finding the
moves it queued by the volumes they lock.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

from pydantic import BaseModel, Field
from sqlalchemy import select
from sqlalchemy.orm import Session

from strato.db.models import Layer, StoragePool, Volume
from strato.db.models.storage import LAYER_CONFIG_DRIVE
from strato.engine.allocator import Allocator, reaches
from strato.engine.jobkinds import JobResult
from strato.engine.operation import Operation, Step, StepData
from strato.errors import InvalidState, ResourceUnavailable
from strato.protocol.messages import CopyLayer
from strato.services.core import jobs
from strato.services.core.agents import agent_errors, host_client
from strato.services.core.childjobs import ChildFailed, active_job_on, submit_child, wait_child
from strato.services.core.context import CallContext
from strato.services.core.lookup import get_live
from strato.services.core.reach import up_hosts
from strato.services.core.settings import allocation_limits
from strato.services.motion.migrate_volume import MigrateVolume, MigrateVolumeParams
from strato.services.motion.progress import MoveProgress, child_report, disk_part
from strato.services.motion.rules import bytes_needed, unsuitable, vm_of, wants_live
from strato.services.storage.layers import ref, remove_layer_file
from strato.units import MIB

IN_MAINTENANCE = ("PrepareForMaintenance", "Maintenance", "ErrorInMaintenance")


class PoolParams(BaseModel):
    id: str


class PoolMaintenanceParams(PoolParams):
    bandwidth_mib: int | None = Field(default=None, ge=1)
    """The `bandwidth` parameter: each disk's move (and config drive copy) limited to it, in MiB/s."""


def volumes_on(session: Session, pool_id: str) -> list[Volume]:
    """The volumes whose disk lives on the pool (Allocated volumes have no file yet and stay)."""
    return list(
        session.scalars(
            select(Volume)
            .where(Volume.pool_id == pool_id, Volume.removed.is_(None), Volume.top_layer_id.is_not(None),
                   Volume.state.not_in(("Destroy", "Expunged")))
            .order_by(Volume.created, Volume.id)
        )
    )  # fmt: skip


def plan_targets(session: Session, pool: StoragePool) -> dict[str, str]:
    """Volume id -> the pool it goes to: the suitable pool with the most room left, counting the disks
    planned before it. Raises ResourceUnavailable naming every disk that has nowhere to go."""
    allocator = Allocator(session, allocation_limits(session))
    candidates = list(
        session.scalars(
            select(StoragePool).where(StoragePool.removed.is_(None), StoragePool.zone_id == pool.zone_id,
                                      StoragePool.id != pool.id, StoragePool.state == "Up")
        )
    )  # fmt: skip
    planned: dict[str, int] = {}
    plan: dict[str, str] = {}
    stuck: list[str] = []
    for vol in volumes_on(session, pool.id):
        vm = vm_of(session, vol)
        live = wants_live(vm)
        reasons: list[str] = []
        best: tuple[int, StoragePool] | None = None
        for target in candidates:
            why = unsuitable(session, vol, vm, target, live)
            room = allocator.free(target) - planned.get(target.id, 0)
            need = bytes_needed(session, vol, target)
            if why is None and room < need:
                why_text: str | None = f"pool {target.name} has no room left for it after the disks planned before"
            else:
                why_text = why.text if why is not None else None
            if why_text is not None:
                reasons.append(why_text)
                continue
            if best is None or room > best[0]:
                best = (room, target)
        if best is None:
            stuck.append(f"volume {vol.name}: " + ("; ".join(reasons) or "no other Up pool in the zone"))
            continue
        planned[best[1].id] = planned.get(best[1].id, 0) + bytes_needed(session, vol, best[1])
        plan[vol.id] = best[1].id
    if stuck:
        raise ResourceUnavailable(
            f"Storage pool {pool.name} cannot enter maintenance, disks have nowhere to go: " + " | ".join(stuck)
        )
    return plan


class EnableStorageMaintenance(Operation[PoolMaintenanceParams]):
    kind: ClassVar[str] = "pool.maintenance"
    cmd: ClassVar[str] = "enableStorageMaintenance"
    event: ClassVar[str | None] = "MAINT.PREPARE.PS"
    params_model = PoolMaintenanceParams
    resumable: ClassVar[bool] = True

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._progress: MoveProgress | None = None

    @classmethod
    def resources(cls, params: PoolParams) -> list[str]:
        # Not pool:<id>: the moves this job queues must be able to run while it waits for them.
        return [f"poolmaintenance:{params.id}"]

    @classmethod
    def check(cls, session: Session, params: PoolParams) -> None:
        pool = get_live(session, StoragePool, params.id, "storage pool")
        if pool.state in ("PrepareForMaintenance", "Maintenance"):
            raise InvalidState(f"Storage pool {pool.name} is already in {pool.state}")
        if pool.state not in ("Up", "Disabled", "ErrorInMaintenance"):
            raise InvalidState(f"Storage pool {pool.name} is {pool.state}; it cannot enter maintenance")

    def steps(self) -> Sequence[Step]:
        return [
            Step("plan moves", self._plan),
            Step("refuse new disks", lambda: self._set("PrepareForMaintenance")),
            Step("move disks", self._move_disks),
            Step("move config drives", self._move_config_drives),
            Step("set maintenance", lambda: self._set("Maintenance"), commit=True),
        ]

    def _set(self, state: str) -> StepData:
        with self.db.session() as s:
            pool = s.get(StoragePool, self.params.id)
            assert pool is not None
            pool.state = state
        return {}

    def _plan(self) -> StepData:
        with self.db.session() as s:
            pool = s.get(StoragePool, self.params.id)
            assert pool is not None
            plan = plan_targets(s, pool)
            parts = [disk_part(s, vol, plan[vol.id]) for vol in volumes_on(s, pool.id) if vol.id in plan]
            return {"plan": plan, "parts": parts}

    def tracker(self) -> MoveProgress:
        """A part per disk planned to move (the child move's progress as a fraction of it)."""
        if self._progress is None:
            self._progress = MoveProgress(self.job, list(self.output("plan moves").get("parts") or []))
        return self._progress

    def _move_disks(self) -> StepData:
        plan: dict[str, str] = dict(self.output("plan moves").get("plan") or {})
        with self.db.session() as s:
            left = [v.id for v in volumes_on(s, self.params.id)]
        total = max(len(plan), 1)
        tracker = self.tracker()
        for volume_id in plan:
            if volume_id not in left:
                tracker.complete(volume_id)  # moved by an earlier run of this step
        for index, volume_id in enumerate(left):
            target = plan.get(volume_id)
            if target is None:
                continue  # a disk that came after the plan (none can: the pool refuses new disks)
            child = active_job_on(self.job, f"volume:{volume_id}", MigrateVolume.kind)
            if child is None:
                child = self._submit_move(volume_id, target)
            report = child_report(tracker, volume_id, f"volume {index + 1} of {len(left)}")
            try:
                wait_child(self.job, child, index, total, report=report)
            except ChildFailed as exc:
                raise ResourceUnavailable(f"Moving a disk off the pool failed: {exc.text}") from None
            tracker.complete(volume_id)
        with self.db.session() as s:
            still = [v.name for v in volumes_on(s, self.params.id)]
        if still:
            raise ResourceUnavailable(f"Disks still on the pool after the moves: {', '.join(still)}")
        return {}

    def _submit_move(self, volume_id: str, target: str) -> str:
        with self.db.session() as s:
            vol = s.get(Volume, volume_id)
            assert vol is not None
            vm = vm_of(s, vol)
            params = MigrateVolumeParams(volume_id=vol.id, pool_id=target, live=wants_live(vm),
                                         vm_id=vm.id if vm else None,
                                         bandwidth_mib=self.params.bandwidth_mib)  # fmt: skip
        return submit_child(self.job, MigrateVolume, params, "Volume", volume_id)

    def _move_config_drives(self) -> StepData:
        """Each config drive on the pool is copied next to its VM's root disk; a running guest keeps the
        old file open until it stops (it read it at boot), its next start opens the copy."""
        with self.db.session() as s:
            drives = list(s.scalars(select(Layer).where(Layer.pool_id == self.params.id, Layer.removed.is_(None),
                                                        Layer.kind == LAYER_CONFIG_DRIVE)))  # fmt: skip
            work = [(d.id, d.vm_id) for d in drives]
        for layer_id, vm_id in work:
            self._move_config_drive(layer_id, vm_id)
        return {}

    def _move_config_drive(self, layer_id: str, vm_id: str | None) -> None:
        with self.db.session() as s:
            old = s.get(Layer, layer_id)
            root = s.scalar(select(Volume).where(Volume.vm_id == vm_id, Volume.volume_type == "ROOT",
                                                 Volume.removed.is_(None))) if vm_id else None  # fmt: skip
            target = s.get(StoragePool, root.pool_id) if root is not None and root.pool_id else None
            source = s.get(StoragePool, self.params.id)
            assert old is not None and source is not None
            if target is None or target.id == source.id:
                raise ResourceUnavailable(f"The config drive of VM {vm_id} has no pool to go to")
            host = next((h for h in up_hosts(s) if reaches(h, source) and reaches(h, target)), None)
            if host is None:
                raise ResourceUnavailable(f"No Up host reaches both pool {source.name} and pool {target.name}")
            client, host_name = host_client(host), host.name
            new = Layer(pool_id=target.id, path=old.path, kind=LAYER_CONFIG_DRIVE, vm_id=old.vm_id,
                        virtual_size=old.virtual_size, physical_size=old.physical_size, state="Creating",
                        creating_job=self.job.job_id)  # fmt: skip
            s.add(new)
            s.flush()
            new_id, src_ref, dst_ref = new.id, ref(source, old.path), ref(target, new.path)
        with agent_errors(host_name):
            bandwidth = self.params.bandwidth_mib * MIB if self.params.bandwidth_mib else None
            client.run_long(CopyLayer(source=src_ref, target=dst_ref, bandwidth_bytes_per_s=bandwidth))
        with self.db.session() as s:
            row = s.get(Layer, new_id)
            assert row is not None
            row.state = "Ready"
        remove_layer_file(self.db, layer_id)

    def result(self) -> JobResult:
        return {"type": "storagepool", "id": self.params.id}

    @classmethod
    def failed(cls, session: Session, params: PoolParams) -> None:
        pool = session.get(StoragePool, params.id)
        if pool is not None and pool.state == "PrepareForMaintenance":
            pool.state = "ErrorInMaintenance"


class CancelStorageMaintenance(Operation[PoolParams]):
    kind: ClassVar[str] = "pool.cancelmaintenance"
    cmd: ClassVar[str] = "cancelStorageMaintenance"
    event: ClassVar[str | None] = "MAINT.CANCEL.PS"
    params_model = PoolParams
    resumable: ClassVar[bool] = True

    @classmethod
    def resources(cls, params: PoolParams) -> list[str]:
        return [f"poolmaintenance:{params.id}"]

    @classmethod
    def check(cls, session: Session, params: PoolParams) -> None:
        pool = get_live(session, StoragePool, params.id, "storage pool")
        if pool.state not in IN_MAINTENANCE:
            raise InvalidState(f"Storage pool {pool.name} is not in maintenance (it is {pool.state})")

    def steps(self) -> Sequence[Step]:
        return [Step("bring up", self._up, commit=True)]

    def _up(self) -> StepData:
        with self.db.session() as s:
            pool = s.get(StoragePool, self.params.id)
            assert pool is not None
            pool.state = "Up"
        return {}

    def result(self) -> JobResult:
        return {"type": "storagepool", "id": self.params.id}


def enable_maintenance(ctx: CallContext, args: dict[str, Any]) -> str:
    """Queues the maintenance; its first step plans every disk's move and refuses if one cannot go."""
    pool = get_live(ctx.session, StoragePool, args["id"], "storage pool")
    if jobs.active_on(ctx.session, f"poolmaintenance:{pool.id}"):
        raise InvalidState(f"Parameter id: storage pool {pool.name} is already entering or leaving maintenance")
    plan_targets(ctx.session, pool)  # refuse at once what the job would refuse
    params = PoolMaintenanceParams(id=pool.id, bandwidth_mib=args.get("bandwidth"))
    return jobs.submit_operation(ctx, EnableStorageMaintenance, params, "StoragePool", pool.id)


def cancel_maintenance(ctx: CallContext, args: dict[str, Any]) -> str:
    pool = get_live(ctx.session, StoragePool, args["id"], "storage pool")
    return jobs.submit_operation(ctx, CancelStorageMaintenance, PoolParams(id=pool.id), "StoragePool", pool.id)
