"""migrateVolume: a volume moves to another pool, live when its VM runs, offline otherwise.

Strategy, chosen at the request: a disk of a VM running on a host moves live on that host (the frozen
layers the target pool lacks are copied and rebased, then `MirrorDisk` copies the top layer onto them and
pivots the VM); a disk of a stopped VM, or a detached one, moves offline (the chain is copied, checked
with GetLayerInfo). The pivot (live) and the database switch (both) are points of no return: after them
the move finishes forward, removing the source layers no other layer uses. Before them, a failure or a
cancel removes every copy this move made; the VM keeps running on its source disk.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Sequence
from typing import Any, ClassVar

from pydantic import BaseModel, Field
from sqlalchemy.orm import Session

from strato.db.models import Host, VirtualMachine, Volume
from strato.engine.context import JobCancelled, JobContext
from strato.engine.jobkinds import JobResult
from strato.engine.operation import FinishForward, Operation, Step, StepData
from strato.errors import InvalidParameter, InvalidState, ResourceUnavailable
from strato.protocol.messages import CancelBlockJob, DiskPlace, MirrorDisk
from strato.services.core import jobs
from strato.services.core.agents import agent_errors, host_client
from strato.services.core.context import CallContext
from strato.services.core.states import vm_to, volume_to
from strato.services.motion import settle
from strato.services.motion.chains import ChainMove
from strato.services.motion.progress import MoveProgress, disk_part
from strato.services.motion.rules import check_move, live_volume, vm_of, wants_live
from strato.services.storage.volumes import VOLUME_RESULT, get_volume
from strato.units import MIB


class MigrateVolumeParams(BaseModel):
    volume_id: str
    pool_id: str
    live: bool
    """The strategy chosen at the request (the VM was running); the job refuses if that changed."""
    vm_id: str | None = None
    bandwidth_mib: int | None = Field(default=None, ge=1)
    """Strato: the copy's limit in MiB/s (the `bandwidth` parameter); None: unlimited."""

    @property
    def bandwidth_bytes(self) -> int | None:
        return self.bandwidth_mib * MIB if self.bandwidth_mib else None


class MigrateVolume(Operation[MigrateVolumeParams]):
    """migrateVolume: mark Migrating, copy the frozen layers, copy or mirror the top, switch, clean up."""

    kind: ClassVar[str] = "volume.migrate"
    cmd: ClassVar[str] = "migrateVolume"
    event: ClassVar[str | None] = "VOLUME.MIGRATE"
    params_model = MigrateVolumeParams

    @classmethod
    def resources(cls, params: MigrateVolumeParams) -> list[str]:
        return [f"volume:{params.volume_id}"] + ([f"vm:{params.vm_id}"] if params.vm_id else [])

    @classmethod
    def check(cls, session: Session, params: MigrateVolumeParams) -> None:
        vol = live_volume(session, params.volume_id)
        if vol.vm_id != params.vm_id:
            raise InvalidState(f"Parameter volumeid: volume {vol.name} was attached or detached since the request")
        check_move(session, params.volume_id, params.pool_id, params.live)

    def __init__(self, job: JobContext, params: MigrateVolumeParams) -> None:
        super().__init__(job, params)
        self._progress: MoveProgress | None = None
        self.chain = ChainMove(self, params.volume_id, params.pool_id, bandwidth=params.bandwidth_bytes,
                               prefer_host=self._vm_host(), report=self._chain_progress,
                               on_phase=lambda text: self.tracker().say(text))  # fmt: skip

    def tracker(self) -> MoveProgress:
        """One part, the volume's chain, planned in the first step."""
        if self._progress is None:
            self._progress = MoveProgress(self.job, list(self.output("mark migrating").get("parts") or []))
        return self._progress

    def _chain_progress(self, done: int, _total: int) -> None:
        self.tracker().set_bytes(self.params.volume_id, done)

    def _vm_host(self) -> str | None:
        if not self.params.vm_id:
            return None
        with self.db.session() as s:
            vm = s.get(VirtualMachine, self.params.vm_id)
            return vm.host_id if vm is not None else None

    def steps(self) -> Sequence[Step]:
        top = (
            Step("mirror top layer", self._mirror, undo=self._unmirror, commit=True)
            if self.params.live
            else self.chain.offline_top_step()
        )
        return [
            Step("mark migrating", self._mark),
            *self.chain.frozen_steps(),
            top,
            Step("switch database", self._switch, commit=True),
            self.chain.cleanup_step(),
            Step("end migrating", self._end),
        ]

    # --- steps ---------------------------------------------------------------------------------------

    def _mark(self) -> StepData:
        with self.db.session() as s:
            vol = s.get(Volume, self.params.volume_id)
            assert vol is not None
            if vol.state != "Migrating":
                volume_to(vol, "Migrating")
            vm = s.get(VirtualMachine, self.params.vm_id) if self.params.vm_id else None
            if vm is not None and vm.state != "Migrating":
                vm_to(vm, "Migrating")
            return {"parts": [disk_part(s, vol, self.params.pool_id)]}

    def _mirror(self) -> StepData:
        """The live copy of the top layer onto the copied chain, and the pivot (QEMU's job-complete)."""
        top_id, target = self.chain.new_top_row()
        _, backing = self.chain.target_backing()
        with self.db.session() as s:
            vol = s.get(Volume, self.params.volume_id)
            vm = s.get(VirtualMachine, self.params.vm_id)
            assert vol is not None and vm is not None and vm.host_id and vol.device_id is not None
            host = s.get(Host, vm.host_id)
            assert host is not None
            client, host_name = host_client(host), host.name
            command = MirrorDisk(vm_name=vm.instance_name, device_id=vol.device_id, target=target,
                                 target_backing=backing, bandwidth_bytes_per_s=self.params.bandwidth_bytes)  # fmt: skip
        progress = self.chain.progress_for(int(self.chain.plan()["sizes"][0]))
        cancel = threading.Event()
        self.tracker().say("mirroring the top layer")

        def on_progress(done: int, total: int) -> None:
            # A cancel goes through run_long's cancel_event, which reads the task's final state: a
            # mirror that pivoted before the cancel reached it is a success, not a failure to undo.
            try:
                progress(done, total)
            except JobCancelled:
                cancel.set()

        try:
            with agent_errors(host_name):
                client.run_long(command, on_progress=on_progress, cancel_event=cancel, on_phase=self.tracker().say)
        except ResourceUnavailable:
            if cancel.is_set():
                raise JobCancelled("The job was cancelled; the volume stays on its pool") from None
            raise
        return {"top": top_id}

    def _unmirror(self) -> None:
        """Undo of the live copy: the agent stops the mirror (its task outlives a dead server) and says
        where the disk is. On the target (the pivot happened) the move finishes forward; on its source
        the copies this move made are removed."""
        made = self.chain.made_top_row()
        if made is not None and self.params.vm_id:
            top_id, target = made
            with self.db.session() as s:
                vol = s.get(Volume, self.params.volume_id)
                vm = s.get(VirtualMachine, self.params.vm_id)
                host = s.get(Host, vm.host_id) if vm is not None and vm.host_id else None
                device = vol.device_id if vol is not None else None
                asked = (host_client(host), host.name, vm.instance_name) if host and vm and device is not None else None
            if asked is not None and device is not None:
                client, host_name, vm_name = asked
                outcome = settle.ask(
                    client, host_name, CancelBlockJob(vm_name=vm_name, device_id=device, target=target)
                )
                if outcome.place == DiskPlace.TARGET:
                    raise FinishForward(f"disk {device} of VM {vm_name} had moved onto the target", {"top": top_id})
        self.chain.remove_copies()

    def _top_id(self) -> str:
        name = "mirror top layer" if self.params.live else "copy top layer"
        top = self.output(name).get("top")
        assert top, f"step {name} recorded no top layer"
        return str(top)

    def _switch(self) -> StepData:
        with self.db.session() as s:
            self.chain.switch(s, self._top_id())
        with contextlib.suppress(JobCancelled):  # past the pivot a cancel comes too late
            self.tracker().complete(self.params.volume_id)
        return {}

    def _end(self) -> StepData:
        with self.db.session() as s:
            _back_to_stable(s, self.params)
        return {}

    def result(self) -> JobResult:
        return {"type": VOLUME_RESULT, "id": self.params.volume_id}

    @classmethod
    def failed(cls, session: Session, params: MigrateVolumeParams) -> None:
        _back_to_stable(session, params)


def _back_to_stable(session: Session, params: MigrateVolumeParams) -> None:
    """The volume Ready and its VM as it was before the move (Running live, Stopped offline)."""
    vol = session.get(Volume, params.volume_id)
    if vol is not None and vol.state == "Migrating":
        volume_to(vol, "Ready")
    vm = session.get(VirtualMachine, params.vm_id) if params.vm_id else None
    if vm is not None and vm.state == "Migrating":
        vm_to(vm, "Running" if params.live else "Stopped")


def migrate(ctx: CallContext, args: dict[str, Any]) -> str:
    """migrateVolume at the request: lookups, the strategy, then the operation's rules."""
    vol = get_volume(ctx, args["volumeid"], "volumeid")
    vm = vm_of(ctx.session, vol)
    live = wants_live(vm)
    asked = args.get("livemigrate")
    if live and asked is False:
        raise InvalidParameter(
            f"Parameter livemigrate is false but VM {vm.name if vm else ''} of volume {vol.name} is running: "
            "pass livemigrate=true to move the disk live, or stop the VM first"
        )
    if jobs.active_on(ctx.session, f"volume:{vol.id}"):
        raise InvalidState(f"Parameter volumeid: volume {vol.name} is in another job; wait for it to end")
    params = MigrateVolumeParams(volume_id=vol.id, pool_id=args["storageid"], live=live,
                                 vm_id=vm.id if vm else None, bandwidth_mib=args.get("bandwidth"))  # fmt: skip
    return jobs.submit_operation(ctx, MigrateVolume, params, "Volume", vol.id)
