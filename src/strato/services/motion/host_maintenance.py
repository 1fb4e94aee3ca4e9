"""prepareHostForMaintenance / cancelHostMaintenance: a host is emptied by live migration.

Maintenance refuses new work on the host first (the planner only picks Enabled hosts), then moves every
running VM to another host, live: a migrateVirtualMachine job each, or migrateVirtualMachineWithVolume
when the VM has disks on pools the target cannot reach (the host's local pool): those go to a pool the
target reaches (its own local pool included). Every VM's target is planned before the first one moves,
so a VM with nowhere to go refuses the maintenance at once, moving nothing. Last, the agent is asked
whether VMs still run there (one the database does not know cannot be moved): then the host ends in
ErrorInMaintenance and the job fails, naming them. Stopped VMs stay, as in CloudStack. Both operations
are meant to finish: after a crash they go on from the first step not done, finding the moves they
queued by the VMs they lock.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

from pydantic import BaseModel, Field
from sqlalchemy import select
from sqlalchemy.orm import Session

from strato.db.models import Host, StoragePool, VirtualMachine
from strato.engine.allocator import Allocator, host_memory_used, reaches
from strato.engine.jobkinds import JobResult
from strato.engine.operation import Operation, Step, StepData
from strato.errors import InvalidState, ResourceUnavailable
from strato.protocol.client import AgentClientError
from strato.protocol.messages import GetState, PowerState
from strato.services.core import jobs
from strato.services.core.agents import describe_failure, host_client
from strato.services.core.childjobs import ChildFailed, active_job_on, submit_child, wait_child
from strato.services.core.context import CallContext
from strato.services.core.lookup import get_live
from strato.services.core.settings import allocation_limits
from strato.services.motion.migrate_vm import (
    DiskMove,
    MigrateVirtualMachine,
    MigrateVirtualMachineWithVolume,
    MigrateVmParams,
)
from strato.services.motion.progress import MoveProgress, child_report, vm_part
from strato.services.motion.rules import missing_tags
from strato.services.motion.vm_rules import host_problem
from strato.services.storage.disks import attached_volumes
from strato.units import MIB

IN_MAINTENANCE = ("PrepareForMaintenance", "Maintenance", "ErrorInMaintenance")


class HostParams(BaseModel):
    id: str


class HostMaintenanceParams(HostParams):
    bandwidth_mib: int | None = Field(default=None, ge=1)
    """The `bandwidth` parameter: each VM's move limited to it, in MiB/s."""


def running_vms(session: Session, host_id: str) -> list[VirtualMachine]:
    return list(
        session.scalars(
            select(VirtualMachine)
            .where(VirtualMachine.host_id == host_id, VirtualMachine.removed.is_(None),
                   VirtualMachine.state == "Running")
            .order_by(VirtualMachine.created, VirtualMachine.id)
        )
    )  # fmt: skip


def plan_moves(session: Session, host: Host) -> list[MigrateVmParams]:
    """Where each running VM of the host goes: the suitable host with the most memory left (counting
    the VMs planned before), its disks on pools that host cannot reach to a pool it reaches with room
    and the disk offering's tags (its local pool first). Raises ResourceUnavailable naming every VM
    that has nowhere to go."""
    others = list(
        session.scalars(
            select(Host).where(Host.zone_id == host.zone_id, Host.removed.is_(None), Host.id != host.id)
            .order_by(Host.name)
        )
    )  # fmt: skip
    allocator = Allocator(session, allocation_limits(session))
    planned_mem: dict[str, int] = {}
    planned_disk: dict[str, int] = {}
    plan: list[MigrateVmParams] = []
    stuck: list[str] = []
    for vm in running_vms(session, host.id):
        reasons: list[str] = []
        best: tuple[int, Host, list[DiskMove]] | None = None
        for target in others:
            problem = host_problem(session, vm, target)
            room = target.memory_bytes - host_memory_used(session, target.id) - planned_mem.get(target.id, 0)
            if problem is None and room < vm.memory_mib * MIB:
                reasons.append(f"host {target.name} has no memory left after the VMs planned before")
                continue
            if problem is not None:
                reasons.append(problem.text)
                continue
            moves, why = _disk_moves(session, allocator, vm, target, planned_disk)
            if why is not None:
                reasons.append(why)
                continue
            if best is None or room > best[0]:
                best = (room, target, moves)
        if best is None:
            stuck.append(f"VM {vm.name}: " + ("; ".join(reasons) or "no other host in the zone"))
            continue
        _, target, moves = best
        planned_mem[target.id] = planned_mem.get(target.id, 0) + vm.memory_mib * MIB
        for move in moves:
            size = next(v.size for v in attached_volumes(session, vm.id) if v.id == move.volume_id)
            planned_disk[move.pool_id] = planned_disk.get(move.pool_id, 0) + size
        plan.append(MigrateVmParams(vm_id=vm.id, host_id=target.id, source_host_id=host.id, moves=moves))
    if stuck:
        raise ResourceUnavailable(
            f"Host {host.name} cannot enter maintenance, VMs have nowhere to go: " + " | ".join(stuck)
        )
    return plan


def _disk_moves(
    session: Session, allocator: Allocator, vm: VirtualMachine, target: Host, planned: dict[str, int]
) -> tuple[list[DiskMove], str | None]:
    """The disks of `vm` the target host cannot reach, each to a pool it reaches; or why not."""
    pools = [p for p in session.scalars(select(StoragePool).where(StoragePool.zone_id == target.zone_id,
                                                                   StoragePool.removed.is_(None),
                                                                   StoragePool.state == "Up"))
             if reaches(target, p)]  # fmt: skip
    pools.sort(key=lambda p: (p.host_id != target.id, p.name))  # its local pool first
    moves: list[DiskMove] = []
    for vol in attached_volumes(session, vm.id):
        current = session.get(StoragePool, vol.pool_id) if vol.pool_id else None
        if current is None or reaches(target, current):
            continue
        fits = [p for p in pools if not missing_tags(session, vol, p)
                and allocator.free(p) - planned.get(p.id, 0) >= vol.size]  # fmt: skip
        if not fits:
            return [], f"no pool that host {target.name} reaches takes volume {vol.name}"
        moves.append(DiskMove(volume_id=vol.id, pool_id=fits[0].id))
    return moves, None


class PrepareHostForMaintenance(Operation[HostMaintenanceParams]):
    kind: ClassVar[str] = "host.maintenance"
    cmd: ClassVar[str] = "prepareHostForMaintenance"
    event: ClassVar[str | None] = "MAINT.PREPARE"
    params_model = HostMaintenanceParams
    resumable: ClassVar[bool] = True

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._progress: MoveProgress | None = None

    @classmethod
    def resources(cls, params: HostParams) -> list[str]:
        return [f"host:{params.id}"]

    @classmethod
    def check(cls, session: Session, params: HostParams) -> None:
        host = get_live(session, Host, params.id, "host")
        if host.resource_state in ("PrepareForMaintenance", "Maintenance"):
            raise InvalidState(f"Host {host.name} is already in {host.resource_state}")

    def steps(self) -> Sequence[Step]:
        return [
            Step("refuse new work", lambda: self._set("PrepareForMaintenance")),
            Step("plan moves", self._plan),
            Step("move vms", self._move_vms),
            Step("check running vms", self._check_running),
            Step("set maintenance", lambda: self._set("Maintenance"), commit=True),
        ]

    def _plan(self) -> StepData:
        with self.db.session() as s:
            host = s.get(Host, self.params.id)
            assert host is not None
            plan = plan_moves(s, host)
            parts = []
            for p in plan:
                vm = s.get(VirtualMachine, p.vm_id)
                assert vm is not None
                parts.append(vm_part(s, vm, [(m.volume_id, m.pool_id) for m in p.moves]))
        speed = self.params.bandwidth_mib * MIB if self.params.bandwidth_mib else None
        plan = [p.model_copy(update={"bandwidth_bytes_per_s": speed}) for p in plan]
        return {"plan": [p.model_dump(mode="json") for p in plan], "parts": parts}

    def tracker(self) -> MoveProgress:
        """A part per VM planned to move (its RAM and moving disks; the child's progress a fraction of it)."""
        if self._progress is None:
            self._progress = MoveProgress(self.job, list(self.output("plan moves").get("parts") or []))
        return self._progress

    def _move_vms(self) -> StepData:
        plan = [MigrateVmParams.model_validate(p) for p in self.output("plan moves").get("plan") or []]
        tracker = self.tracker()
        for index, params in enumerate(plan):
            with self.db.session() as s:
                vm = s.get(VirtualMachine, params.vm_id)
                gone = vm is None or vm.removed is not None or vm.host_id != self.params.id or vm.state == "Stopped"
            if gone:
                tracker.complete(params.vm_id)  # nothing left to move for it
                continue  # moved (by an earlier run of this step), stopped or destroyed meanwhile
            operation = MigrateVirtualMachineWithVolume if params.moves else MigrateVirtualMachine
            child = active_job_on(self.job, f"vm:{params.vm_id}", operation.kind)
            if child is None:
                child = submit_child(self.job, operation, params, "VirtualMachine", params.vm_id)
            report = child_report(tracker, params.vm_id, f"VM {index + 1} of {len(plan)}")
            try:
                wait_child(self.job, child, index, len(plan), report=report)
            except ChildFailed as exc:
                raise ResourceUnavailable(f"Moving a VM off the host failed: {exc.text}") from None
            tracker.complete(params.vm_id)
        return {}

    def _set(self, state: str) -> None:
        with self.db.session() as s:
            host = s.get(Host, self.params.id)
            assert host is not None
            host.resource_state = state

    def _check_running(self) -> None:
        with self.db.session() as s:
            host = s.get(Host, self.params.id)
            assert host is not None
            client, name = host_client(host), host.name
        try:
            state = client.call(GetState())
        except AgentClientError as exc:
            raise describe_failure(name, exc) from None
        running = [vm.name for vm in state.vms if vm.power_state != PowerState.STOPPED]
        if running:
            raise InvalidState(
                f"Host {name} still runs VMs ({', '.join(sorted(running)[:10])}); "
                "stop or migrate them before maintenance"
            )

    def result(self) -> JobResult:
        return {"type": "host", "id": self.params.id}

    @classmethod
    def failed(cls, session: Session, params: HostParams) -> None:
        host = session.get(Host, params.id)
        if host is not None and host.resource_state == "PrepareForMaintenance":
            host.resource_state = "ErrorInMaintenance"


class CancelHostMaintenance(Operation[HostParams]):
    kind: ClassVar[str] = "host.cancelmaintenance"
    cmd: ClassVar[str] = "cancelHostMaintenance"
    event: ClassVar[str | None] = "MAINT.CANCEL"
    params_model = HostParams
    resumable: ClassVar[bool] = True

    @classmethod
    def resources(cls, params: HostParams) -> list[str]:
        return [f"host:{params.id}"]

    @classmethod
    def check(cls, session: Session, params: HostParams) -> None:
        host = get_live(session, Host, params.id, "host")
        if host.resource_state not in IN_MAINTENANCE:
            raise InvalidState(f"Host {host.name} is not in maintenance (it is {host.resource_state})")

    def steps(self) -> Sequence[Step]:
        return [Step("enable", self._enable, commit=True)]

    def _enable(self) -> None:
        with self.db.session() as s:
            host = s.get(Host, self.params.id)
            assert host is not None
            host.resource_state = "Enabled"

    def result(self) -> JobResult:
        return {"type": "host", "id": self.params.id}


def prepare_maintenance(ctx: CallContext, host_id: str, bandwidth_mib: int | None = None) -> str:
    """Queues the maintenance of a host; the job refuses new work on it as its first step. A running VM
    with nowhere to go is refused at once."""
    host = get_live(ctx.session, Host, host_id, "host")
    if host.resource_state not in ("PrepareForMaintenance", "Maintenance"):
        plan_moves(ctx.session, host)
    params = HostMaintenanceParams(id=host.id, bandwidth_mib=bandwidth_mib)
    return jobs.submit_operation(ctx, PrepareHostForMaintenance, params, "Host", host.id)


def cancel_maintenance(ctx: CallContext, host_id: str) -> str:
    """Queues the return of a host in (or failing to enter) maintenance to Enabled."""
    host = get_live(ctx.session, Host, host_id, "host")
    return jobs.submit_operation(ctx, CancelHostMaintenance, HostParams(id=host.id), "Host", host.id)
