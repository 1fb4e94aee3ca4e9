"""migrateVirtualMachine and migrateVirtualMachineWithVolume: a running VM moves live to another host,
its disks staying on pools both hosts reach or (WithVolume) moving to the pools named for them; with
storageid, a stopped VM's disks all move offline to one pool.

Live, the steps are: the VM and its moving volumes go Migrating; each moving volume's frozen layers are
copied to its new pool (volmotion's ChainMove: CopyLayer where one host reaches both pools, else the
target pulls them from the source host's agent); the target prepares the VM waiting for its migration,
the moving disks' new top layers created empty on the copied chains and exported over NBD; the source
migrates the VM (mirroring those disks into the exports); the database records the VM on its new host
and the volumes on their new pools (the commit point, in the same step); the target runs the VM; the
source layers no other disk uses are removed and the source agent forgets the VM.

Before the commit a failure or a cancel leaves the VM running on its source (AbortIncoming removes the
target's VM and new layers, the copies are removed). A server that died inside the migrate step asks the
source agent to cancel the migration (CancelMigration stops its task, or what QEMU still runs): if the
VM had already left, the undo finishes the move forward (FinishForward) instead of aborting the only
running copy.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Sequence
from typing import Any, ClassVar
from urllib.parse import urlsplit

from pydantic import BaseModel, Field
from sqlalchemy import or_, select
from sqlalchemy.orm import Session

from strato.db.models import Host, HypervisorCapability, Layer, StoragePool, VirtualMachine, Volume, Zone
from strato.db.models.storage import LAYER_CONFIG_DRIVE
from strato.engine.allocator import reaches
from strato.engine.context import JobCancelled
from strato.engine.jobkinds import JobResult
from strato.engine.operation import FinishForward, Operation, Step, StepData
from strato.errors import CloudError, InvalidParameter, NotFound
from strato.protocol.messages import (
    AbortIncoming,
    CancelMigration,
    CdromSpec,
    FinishIncoming,
    IncomingDisk,
    MigrateVm,
    MigrationPlace,
    PrepareIncoming,
    RemoveVm,
)
from strato.protocol.motion import IncomingVm
from strato.services.compute.vmcommon import load_vm, vm_result
from strato.services.compute.vmspec import config_drive_layer, vm_spec
from strato.services.core import jobs
from strato.services.core.agents import agent_errors, host_client
from strato.services.core.context import CallContext
from strato.services.core.lookup import get_live
from strato.services.core.reach import up_hosts
from strato.services.core.states import vm_to, volume_to
from strato.services.motion import settle
from strato.services.motion.chains import ChainMove, chain_rows, copier_between
from strato.services.motion.progress import MoveProgress, Part, disk_part
from strato.services.motion.vm_rules import (
    WITH_VOLUME,
    can_move_offline,
    check_not_busy,
    check_pool_room,
    check_source,
    host_problem,
    target_pool,
)
from strato.services.network.firewall import push, sync_calls
from strato.services.network.nics import leave_host, prepare_for_vm
from strato.services.storage.disks import attached_volumes
from strato.services.storage.layers import ref, remove_layer_file, remove_unfinished_layer
from strato.units import MIB

log = logging.getLogger("strato.motion")


class DiskMove(BaseModel):
    volume_id: str
    pool_id: str


class MigrateVmParams(BaseModel):
    vm_id: str
    host_id: str | None = None
    """The target host of a live move."""
    source_host_id: str | None = None
    """The VM's host when the request came (the job refuses if it has moved since)."""
    pool_id: str | None = None
    """storageid: every disk of the stopped VM moves there, offline."""
    moves: list[DiskMove] = []
    """Live: the disks that change pool (listed in migrateto, on another pool than today's)."""
    bandwidth_bytes_per_s: int | None = Field(default=None, ge=1)
    """The `bandwidth` parameter (MiB/s at the API) in bytes/s: every layer copy or pull, the disks'
    mirrors and the RAM stream of this move; None: unlimited."""


# --- the rules -----------------------------------------------------------------------------------------


def _check_offline(session: Session, vm: VirtualMachine, volumes: list[Volume], params: MigrateVmParams) -> None:
    assert params.pool_id is not None
    if vm.state != "Stopped":
        raise InvalidParameter(
            f"VM {vm.name} (virtualmachineid) is {vm.state}; it must be Stopped to move its disks with storageid"
        )
    pool = target_pool(session, params.pool_id, vm, "storageid")
    moving = [v for v in volumes if v.pool_id != pool.id]
    if not moving:
        raise InvalidParameter(f"Every volume of VM {vm.name} is already on storage pool {pool.name} (storageid)")
    copiers = [h for h in up_hosts(session, vm.zone_id) if reaches(h, pool)]
    if not any(can_move_offline(h) for h in copiers):
        raise InvalidParameter(
            f"No Up host reaching storage pool {pool.name} (storageid) supports offline storage motion"
        )
    check_pool_room(session, [(v, pool) for v in moving], None)


def _check_live(
    session: Session, vm: VirtualMachine, volumes: list[Volume], params: MigrateVmParams, command: str
) -> None:
    source = check_source(session, vm)
    if params.source_host_id and source.id != params.source_host_id:
        raise InvalidParameter(f"VM {vm.name} (virtualmachineid) has moved to host {source.name} since the request")
    assert params.host_id is not None
    host = session.get(Host, params.host_id)
    if host is None or host.removed is not None:
        raise NotFound(f"Unable to find host with hostid={params.host_id}")
    problem = host_problem(session, vm, host)
    if problem is not None:
        raise problem
    by_id = {v.id: v for v in volumes}
    moves: list[tuple[Volume, StoragePool]] = []
    for move in params.moves:
        vol = by_id.get(move.volume_id)
        if vol is None:
            raise InvalidParameter(f"Volume {move.volume_id} (migrateto[].volume) is not a disk of VM {vm.name}")
        pool = target_pool(session, move.pool_id, vm, "migrateto[].pool")
        if not reaches(host, pool):
            raise InvalidParameter(
                f"Storage pool {pool.name} (migrateto[].pool) for volume {vol.name} is not reachable from host "
                f"{host.name}"
            )
        moves.append((vol, pool))
    if moves:
        gate = session.query(HypervisorCapability).filter_by(hypervisor=host.hypervisor, removed=None).first()
        if gate is not None and not gate.storage_motion_enabled:
            raise InvalidParameter(
                f"Cannot move the disks of VM {vm.name} (migrateto): storage motion is disabled for hypervisor "
                f"{host.hypervisor} (updateHypervisorCapabilities storagemotionenabled)"
            )
    moving = {m.volume_id for m in params.moves}
    for vol in volumes:
        current = session.get(StoragePool, vol.pool_id) if vol.pool_id else None
        if vol.id in moving or current is None or reaches(host, current):
            continue
        advice = (
            "list it in migrateto with a pool that host reaches"
            if command == WITH_VOLUME
            else f"move it with {WITH_VOLUME}"
        )
        raise InvalidParameter(
            f"Cannot migrate VM {vm.name} to host {host.name} (hostid): its volume {vol.name} is on storage pool "
            f"{current.name}, which that host cannot reach; {advice}"
        )
    drive = config_drive_layer(session, vm.id)
    drive_pool = session.get(StoragePool, drive.pool_id) if drive is not None else None
    root_moves = any(v.volume_type == "ROOT" for v, _ in moves)
    if drive_pool is not None and not reaches(host, drive_pool) and not root_moves:
        raise InvalidParameter(
            f"Cannot migrate VM {vm.name} to host {host.name} (hostid): its config drive is on storage pool "
            f"{drive_pool.name}, which that host cannot reach; move its root volume with {WITH_VOLUME}"
        )
    check_pool_room(session, moves, host)


def check_move(session: Session, params: MigrateVmParams, command: str) -> None:
    vm = get_live(session, VirtualMachine, params.vm_id, "virtual machine", "virtualmachineid")
    volumes = attached_volumes(session, vm.id)
    check_not_busy(session, vm, volumes)
    if params.pool_id:
        _check_offline(session, vm, volumes, params)
    else:
        _check_live(session, vm, volumes, params, command)


# --- the operation -------------------------------------------------------------------------------------


class MigrateVirtualMachine(Operation[MigrateVmParams]):
    """migrateVirtualMachine: live to another host (disks stay), or offline to one pool (storageid)."""

    kind: ClassVar[str] = "vm.migrate"
    cmd: ClassVar[str] = "migrateVirtualMachine"
    event: ClassVar[str | None] = "VM.MIGRATE"
    params_model = MigrateVmParams

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._chains: list[ChainMove] | None = None
        self._progress: MoveProgress | None = None

    def tracker(self) -> MoveProgress:
        """Parts planned in the first step: each moving disk's chain (live: its frozen layers) and, live,
        the migration stream (the RAM and the moving disks' top layers)."""
        if self._progress is None:
            self._progress = MoveProgress(self.job, list(self.output("mark migrating").get("parts") or []))
        return self._progress

    @classmethod
    def resources(cls, params: MigrateVmParams) -> list[str]:
        return [f"vm:{params.vm_id}", *(f"volume:{m.volume_id}" for m in params.moves)]

    @classmethod
    def check(cls, session: Session, params: MigrateVmParams) -> None:
        check_move(session, params, cls.cmd)

    # --- what moves --------------------------------------------------------------------------------

    @property
    def offline(self) -> bool:
        return bool(self.params.pool_id)

    def moving(self) -> list[DiskMove]:
        """The disks that change pool: all those not on the pool (storageid), or the listed ones."""
        if not self.offline:
            return list(self.params.moves)
        assert self.params.pool_id is not None
        prior = self.output("mark migrating").get("moving")
        if prior is not None:
            return [DiskMove(volume_id=v, pool_id=self.params.pool_id) for v in prior]
        with self.db.session() as s:
            vols = attached_volumes(s, self.params.vm_id)
            return [
                DiskMove(volume_id=v.id, pool_id=self.params.pool_id) for v in vols if v.pool_id != self.params.pool_id
            ]

    def chains(self) -> list[ChainMove]:
        if self._chains is None:
            self._chains = [
                ChainMove(self, m.volume_id, m.pool_id, bandwidth=self.params.bandwidth_bytes_per_s,
                          prefer_host=self.params.host_id, prefix=f"disk {i}: ",
                          report=self._chain_progress(m.volume_id), on_phase=self._say)
                for i, m in enumerate(self.moving())
            ]  # fmt: skip
        return self._chains

    def _chain_progress(self, volume_id: str) -> Callable[[int, int], None]:
        def report(done: int, _total: int) -> None:
            self.tracker().set_bytes(volume_id, done)

        return report

    def _say(self, text: str) -> None:
        self.tracker().say(text)

    def _plan_parts(self, s: Session, moves: list[DiskMove]) -> list[Part]:
        parts: list[Part] = []
        tops = 0
        for move in moves:
            vol = s.get(Volume, move.volume_id)
            if vol is None:
                continue
            part = disk_part(s, vol, move.pool_id, frozen_only=not self.offline)
            if part["total"] > 0:
                parts.append(part)
            rows = chain_rows(s, vol.top_layer_id)
            tops += rows[0].physical_size if rows else 0
        if not self.offline:
            vm = load_vm(s, self.params.vm_id)
            name = "memory" + (f" and {len(moves)} disk(s) top layer" if moves else "")
            parts.append({"name": name, "virtualmachineid": vm.id, "total": vm.memory_mib * MIB + tops})
        return parts

    # --- steps -------------------------------------------------------------------------------------

    def steps(self) -> Sequence[Step]:
        if self.offline:
            return self._offline_steps()
        out = [Step("mark migrating", self._mark, undo=self._unmark)]
        for chain in self.chains():
            out += [self._guarded(s) for s in chain.frozen_steps()]
        if self._drive_moves():
            out.append(Step("copy config drive", self._copy_drive, undo=self._unless_switched(self._drop_drive)))
        out += [
            Step("network on target", self._network_on_target, undo=self._unless_switched(self._network_off_target)),
            Step("prepare incoming", self._prepare, undo=self._unless_switched(self._abort)),
            Step("migrate", self._migrate, undo=self._unmigrate, commit=True),
            Step("finish incoming", self._finish),
            *(chain.cleanup_step() for chain in self.chains()),
            *([Step("remove old config drive", self._remove_old_drive)] if self._drive_moves() else []),
            Step("forget at source", self._forget_source),
            Step("network off source", self._network_off_source),
            Step("mark stable", self._stable),
        ]
        return out

    def _offline_steps(self) -> list[Step]:
        out = [Step("mark migrating", self._mark, undo=self._unmark)]
        for chain in self.chains():
            out += [*chain.frozen_steps(), chain.offline_top_step()]
        drive = self._drive_moves()
        if drive:
            out.append(Step("copy config drive", self._copy_drive, undo=self._drop_drive))
        out += [
            Step("switch database", self._switch_offline, commit=True),
            *(chain.cleanup_step() for chain in self.chains()),
            *([Step("remove old config drive", self._remove_old_drive)] if drive else []),
            Step("mark stable", self._stable),
        ]
        return out

    def _guarded(self, step: Step) -> Step:
        return Step(step.name, step.run, undo=self._unless_switched(step.undo), commit=step.commit)

    def _unless_switched(self, undo: Callable[[], None] | None) -> Callable[[], None] | None:
        """An undo that leaves the target alone once the database says the VM is there."""
        if undo is None:
            return None
        fn = undo

        def guarded() -> None:
            if not self._switched():
                fn()

        return guarded

    def _switched(self) -> bool:
        with self.db.session() as s:
            vm = s.get(VirtualMachine, self.params.vm_id)
            return vm is not None and self.params.host_id is not None and vm.host_id == self.params.host_id

    # --- the config drive: along with the root disk, when the target host cannot reach it, and
    # --- always with a stopped VM's disks (storageid): it stays beside the root disk

    def _root_target(self) -> str | None:
        if self.offline:
            return self.params.pool_id
        with self.db.session() as s:
            for m in self.params.moves:
                vol = s.get(Volume, m.volume_id)
                if vol is not None and vol.volume_type == "ROOT":
                    return m.pool_id
        return None

    def _drive_moves(self) -> bool:
        """Live: the VM's config drive is on a pool the target host cannot reach (the root disk moves).
        Offline: the VM has a config drive elsewhere than the pool its disks go to."""
        if not self.offline and not self.params.host_id:
            return False
        root_target = self._root_target()
        if root_target is None:
            return False
        with self.db.session() as s:
            if self._new_drive(s) is not None:
                return True
            drive = self._old_drive(s)
            if self.offline:
                return drive is not None and drive.pool_id != root_target
            host = s.get(Host, self.params.host_id)
            pool = s.get(StoragePool, drive.pool_id) if drive is not None else None
            return pool is not None and host is not None and not reaches(host, pool)

    def _old_drive(self, s: Session) -> Layer | None:
        mine = self.job.job_id
        rows = s.scalars(select(Layer).where(
            Layer.vm_id == self.params.vm_id, Layer.kind == LAYER_CONFIG_DRIVE, Layer.removed.is_(None),
            or_(Layer.creating_job.is_(None), Layer.creating_job != mine),
        ))  # fmt: skip
        return next(iter(rows), None)

    def _new_drive(self, s: Session) -> Layer | None:
        return s.scalar(select(Layer).where(
            Layer.vm_id == self.params.vm_id, Layer.kind == LAYER_CONFIG_DRIVE, Layer.removed.is_(None),
            Layer.creating_job == self.job.job_id,
        ))  # fmt: skip

    def _copy_drive(self) -> StepData:
        target_pool_id = self._root_target()
        assert target_pool_id is not None
        with self.db.session() as s:
            old = self._old_drive(s)
            assert old is not None
            new = self._new_drive(s)
            if new is not None and new.state == "Ready":
                return {"layer_id": new.id}
            if new is None:
                new = Layer(pool_id=target_pool_id, path=old.path, kind=LAYER_CONFIG_DRIVE, vm_id=old.vm_id,
                            frozen=True, virtual_size=old.virtual_size, state="Creating",
                            creating_job=self.job.job_id)  # fmt: skip
                s.add(new)
                s.flush()
            src_pool, dst_pool = s.get(StoragePool, old.pool_id), s.get(StoragePool, target_pool_id)
            assert src_pool is not None and dst_pool is not None
            source, target, new_id, src_id = ref(src_pool, old.path), ref(dst_pool, new.path), new.id, src_pool.id
        copier = copier_between(self.db, src_id, target_pool_id, self.params.host_id, self.params.bandwidth_bytes_per_s)
        info = copier(source, target, lambda _d, _t: None)
        with self.db.session() as s:
            row = s.get(Layer, new_id)
            assert row is not None
            row.state, row.physical_size = "Ready", info.physical_size
        return {"layer_id": new_id}

    def _drop_drive(self) -> None:
        with self.db.session() as s:
            new = self._new_drive(s)
            layer_id, ready = (new.id, new.state == "Ready") if new is not None else (None, False)
        if layer_id is not None:
            (remove_layer_file if ready else remove_unfinished_layer)(self.db, layer_id)

    def _remove_old_drive(self) -> StepData:
        with self.db.session() as s:
            old = self._old_drive(s)
            layer_id = old.id if old is not None else None
        if layer_id is not None:
            remove_layer_file(self.db, layer_id)
        return {}

    # --- states ------------------------------------------------------------------------------------

    def _mark(self) -> StepData:
        moves = self.moving()
        moving = [m.volume_id for m in moves]
        with self.db.session() as s:
            vm = load_vm(s, self.params.vm_id)
            if vm.state != "Migrating":
                vm_to(vm, "Migrating")
            for vol_id in moving:
                vol = s.get(Volume, vol_id)
                if vol is not None and vol.state != "Migrating":
                    volume_to(vol, "Migrating")
            return {"moving": moving, "parts": self._plan_parts(s, moves)}

    def _unmark(self) -> None:
        with self.db.session() as s:
            type(self).failed(s, self.params)

    def _stable(self) -> StepData:
        with self.db.session() as s:
            type(self).failed(s, self.params)
        return {}

    @classmethod
    def failed(cls, session: Session, params: MigrateVmParams) -> None:
        """The VM back to Running (live) or Stopped (offline), its volumes Ready, wherever they now are."""
        vm = session.get(VirtualMachine, params.vm_id)
        if vm is not None and vm.state == "Migrating":
            vm_to(vm, "Stopped" if params.pool_id else "Running")
        if vm is not None:
            for vol in attached_volumes(session, vm.id):
                if vol.state == "Migrating":
                    volume_to(vol, "Ready")

    # --- live: target and source -------------------------------------------------------------------

    def _hosts(self) -> tuple[Host, Host, str]:
        """(source, target, instance name), read in a closed session (plain attributes only)."""
        with self.db.session() as s:
            vm = load_vm(s, self.params.vm_id)
            source = s.get(Host, self.params.source_host_id) if self.params.source_host_id else None
            target = s.get(Host, self.params.host_id) if self.params.host_id else None
            assert source is not None and target is not None
            s.expunge(source)
            s.expunge(target)
            return source, target, vm.instance_name

    def _prepare(self) -> StepData:
        """PrepareIncoming at the target: the VM's spec with each moving disk on its new top layer
        (created empty there on the copied chain and exported), the other disks as they are."""
        tops: dict[str, tuple[str, Any]] = {}
        backings: dict[str, Any] = {}
        for chain in self.chains():
            tops[chain.volume_id] = chain.new_top_row()
            backings[chain.volume_id] = chain.target_backing()[1]
        with self.db.session() as s:
            vm = load_vm(s, self.params.vm_id)
            spec = vm_spec(s, vm)
            devices = {v.id: (v.device_id, v.size) for v in attached_volumes(s, vm.id)}
        disks: list[IncomingDisk] = []
        by_device = {d.device_id: d for d in spec.disks}
        for vol_id, (_top_id, top_ref) in tops.items():
            device, size = devices[vol_id]
            assert device is not None
            by_device[device] = by_device[device].model_copy(update={"layer": top_ref})
            disks.append(IncomingDisk(device_id=device, size_bytes=size, backing=backings[vol_id]))
        spec = spec.model_copy(update={"disks": [by_device[d.device_id] for d in spec.disks]})
        if self._drive_moves():
            with self.db.session() as s:
                drive = self._new_drive(s)
                pool = s.get(StoragePool, drive.pool_id) if drive is not None else None
                assert drive is not None and pool is not None
                spec = spec.model_copy(update={"config_drive": CdromSpec(path=f"{pool.path}/{drive.path}")})
        _source, target, _name = self._hosts()
        listen = urlsplit(target.url).hostname or "127.0.0.1"
        with agent_errors(target.name):
            incoming = host_client(target).call(PrepareIncoming(spec=spec, disks=disks, listen_host=listen))
        return {"incoming": incoming.model_dump(mode="json"), "tops": {v: t[0] for v, t in tops.items()}}

    def _network_on_target(self) -> StepData:
        """The target's bridges, taps and security-group filter are ready before QEMU opens the taps."""
        _source, target, _name = self._hosts()
        with self.db.session() as s:
            target_row = s.get(Host, target.id)
            assert target_row is not None
            network_calls = prepare_for_vm(s, load_vm(s, self.params.vm_id), target_row)
        for call in network_calls:
            call.run()
        return {}

    def _network_off_target(self) -> None:
        """A failed or cancelled move: the target keeps nothing of the VM's NICs (its filter follows at
        the host's next monitor round, once the job no longer counts the VM there)."""
        _source, target, _name = self._hosts()
        self._leave(target)

    def _network_off_source(self) -> StepData:
        """After the switch-over the source loses the VM's taps (and each network nothing else keeps
        there), and its security-group filter drops the VM's chains now rather than at the next round."""
        source, _target, _name = self._hosts()
        self._leave(source)
        with self.db.session() as s:
            vm = load_vm(s, self.params.vm_id)
            zone = s.get(Zone, vm.zone_id)
            calls = sync_calls(s, vm.zone_id) if zone is not None and zone.security_group_enabled else []
        push([c for c in calls if c.host_name == source.name])
        return {}

    def _leave(self, host: Host) -> None:
        with self.db.session() as s:
            row = s.get(Host, host.id)
            calls = leave_host(s, load_vm(s, self.params.vm_id), row) if row is not None else []
        for call in calls:
            try:
                if not call.run_if_reachable():
                    log.info("host %s unreachable: VM %s's NICs stay there", call.host_name, self.params.vm_id)
            except CloudError as exc:  # a host refusing the clean-up does not undo a finished move
                log.warning("host %s: removing VM %s's NICs failed: %s", call.host_name, self.params.vm_id, exc)

    def _abort(self) -> None:
        _source, target, name = self._hosts()
        with agent_errors(target.name):
            host_client(target).call(AbortIncoming(name=name))

    def _migrate(self) -> StepData:
        """MigrateVm at the source (progress into the job; a cancel stops it and the VM stays), then
        the database switch: the commit point."""
        if self._switched():
            return {}
        source, _target, name = self._hosts()
        incoming = IncomingVm.model_validate(self.output("prepare incoming")["incoming"])
        command = MigrateVm(name=name, incoming=incoming, bandwidth_bytes_per_s=self.params.bandwidth_bytes_per_s)
        tracker = self.tracker()

        def on_progress(done: int, total: int) -> None:
            tracker.set_fraction(self.params.vm_id, done, total)

        tracker.say("migrating the VM to the target host")
        with agent_errors(source.name):
            host_client(source).run_long(command, on_progress=on_progress, on_phase=tracker.say)
        self._switch_live()
        with contextlib.suppress(JobCancelled):  # switched: a cancel comes too late
            tracker.complete(self.params.vm_id)
        return {}

    def _switch_live(self) -> None:
        tops = dict(self.output("prepare incoming").get("tops") or {})
        with self.db.session() as s:
            vm = load_vm(s, self.params.vm_id)
            if vm.host_id == self.params.host_id:
                return
            vm.last_host_id, vm.host_id = vm.host_id, self.params.host_id
            for chain in self.chains():
                chain.switch(s, tops[chain.volume_id])

    def _unmigrate(self) -> None:
        """Undo of the migration: the source agent stops it (its task outlives a dead server) and says
        whether the VM is still there. Still there: nothing to take back here (AbortIncoming, undone
        next, removes the target's VM and layers). Left: the move happened, so the database records
        the VM on its new host and the operation finishes forward (the target runs it, the source
        layers go)."""
        if self._switched():
            raise FinishForward("the database already records the VM on its new host")
        source, _target, name = self._hosts()
        outcome = settle.ask(host_client(source), source.name, CancelMigration(name=name))
        if outcome.place == MigrationPlace.LEFT:
            self._switch_live()
            raise FinishForward(f"VM {name} had left host {source.name}")

    def _finish(self) -> StepData:
        _source, target, name = self._hosts()
        with agent_errors(target.name):
            report = host_client(target).call(FinishIncoming(name=name))
        return {"power_state": report.power_state.value}

    def _forget_source(self) -> StepData:
        source, _target, name = self._hosts()
        with agent_errors(source.name):
            host_client(source).call(RemoveVm(name=name))
        return {}

    # --- offline -----------------------------------------------------------------------------------

    def _switch_offline(self) -> StepData:
        with self.db.session() as s:
            for chain in self.chains():
                top = self.output(chain.name("copy top layer")).get("top")
                vol = s.get(Volume, chain.volume_id)
                if top and vol is not None and vol.top_layer_id != top:
                    chain.switch(s, top)
        return {}

    def result(self) -> JobResult:
        return vm_result(self.params.vm_id)


class MigrateVirtualMachineWithVolume(MigrateVirtualMachine):
    """migrateVirtualMachineWithVolume: live to another host, the listed disks to the pools named."""

    kind: ClassVar[str] = "vm.migrate_with_volume"
    cmd: ClassVar[str] = WITH_VOLUME
    event: ClassVar[str | None] = "VM.MIGRATE"


# --- at the request ------------------------------------------------------------------------------------


def _busy(ctx: CallContext, vm: VirtualMachine, volume_ids: list[str]) -> None:
    """A job queued or running on the VM or one of its disks: refused at once, not queued behind it
    (check() cannot tell another job from its own once it runs, so this rule is the request's)."""
    for resource in (f"vm:{vm.id}", *(f"volume:{v}" for v in volume_ids)):
        if jobs.active_on(ctx.session, resource):
            raise InvalidParameter(f"VM {vm.name} (virtualmachineid) or one of its volumes is in another job")


def _vm(ctx: CallContext, args: dict[str, Any]) -> VirtualMachine:
    vm = get_live(ctx.session, VirtualMachine, args["virtualmachineid"], "virtual machine", "virtualmachineid")
    _busy(ctx, vm, [v.id for v in attached_volumes(ctx.session, vm.id)])
    return vm


def migrate(ctx: CallContext, args: dict[str, Any]) -> str:
    """migrateVirtualMachine: exactly one of hostid (live) and storageid (offline)."""
    host_id, pool_id = args.get("hostid"), args.get("storageid")
    if bool(host_id) == bool(pool_id):
        raise InvalidParameter(
            "Give exactly one of hostid (move the running VM live) and storageid (move a stopped VM's disks)"
        )
    vm = _vm(ctx, args)
    params = MigrateVmParams(vm_id=vm.id, host_id=host_id, pool_id=pool_id,
                             source_host_id=vm.host_id if host_id else None,
                             bandwidth_bytes_per_s=_bytes_per_s(args))  # fmt: skip
    return jobs.submit_operation(ctx, MigrateVirtualMachine, params, "VirtualMachine", vm.id)


def migrate_with_volume(ctx: CallContext, args: dict[str, Any]) -> str:
    """migrateVirtualMachineWithVolume: the listed disks to their pools (one already there stays)."""
    vm = _vm(ctx, args)
    vols = {v.id: v for v in attached_volumes(ctx.session, vm.id)}
    moves: list[DiskMove] = []
    for i, entry in enumerate(args.get("migrateto") or []):
        ids: dict[str, str] = {}
        for key in ("volume", "pool"):
            raw = (entry.get(key) or "").strip()
            if not raw:
                raise InvalidParameter(f"Parameter migrateto[{i}].{key} is missing")
            ids[key] = _uuid(raw, f"migrateto[{i}].{key}")
        if any(m.volume_id == ids["volume"] for m in moves):
            raise InvalidParameter(f"Volume {ids['volume']} is listed twice in migrateto (migrateto[{i}].volume)")
        vol = vols.get(ids["volume"])
        if vol is None:
            raise InvalidParameter(f"Volume {ids['volume']} (migrateto[{i}].volume) is not a disk of VM {vm.name}")
        if vol.pool_id != ids["pool"]:
            moves.append(DiskMove(volume_id=vol.id, pool_id=ids["pool"]))
    params = MigrateVmParams(vm_id=vm.id, host_id=args["hostid"], source_host_id=vm.host_id, moves=moves,
                             bandwidth_bytes_per_s=_bytes_per_s(args))  # fmt: skip
    return jobs.submit_operation(ctx, MigrateVirtualMachineWithVolume, params, "VirtualMachine", vm.id)


def _bytes_per_s(args: dict[str, Any]) -> int | None:
    """The `bandwidth` parameter (MiB/s, checked positive by its declaration) in bytes per second."""
    mib = args.get("bandwidth")
    return int(mib) * MIB if mib else None


def _uuid(raw: str, param: str) -> str:
    import uuid

    try:
        return str(uuid.UUID(raw))
    except ValueError:
        raise InvalidParameter(f"Invalid parameter {param} value={raw[:64]} due to incorrect uuid format") from None
