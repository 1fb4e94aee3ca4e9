"""revertSnapshot: the volume's content becomes the snapshot's.

As CloudStack on KVM, only while no VM runs on the disk (its VM Stopped, or the volume detached), and
not while the VM has VM snapshots (their layers hold the disk's present chain). The snapshot's file is
copied from the image store into a new standalone layer on the volume's pool ("copy"); the volume then
points at it ("switch", the commit point) and its old layers go ("drop old"). Until the switch the old
chain is untouched, and a failure removes the new layer again."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

from pydantic import BaseModel
from sqlalchemy import select
from sqlalchemy.orm import Session

from strato.db.models import Layer, StoragePool, VirtualMachine, Volume
from strato.engine.jobkinds import JobResult
from strato.engine.operation import Operation, Step, StepData
from strato.errors import InvalidParameter, InvalidState
from strato.protocol.messages import ConvertLayer
from strato.services.core import jobs
from strato.services.core.agents import agent_errors, host_client
from strato.services.core.context import CallContext
from strato.services.core.reach import host_for
from strato.services.storage.layers import ref, remove_unfinished_layer, remove_volume_layers
from strato.services.storage.rules import refuse_with_vm_snapshots
from strato.services.storage.snapshots import SNAPSHOT_RESULT, backed_up, get_snapshot, snapshot_file
from strato.services.storage.volumes import live_volume


class RevertSnapshotParams(BaseModel):
    snapshot_id: str
    volume_id: str
    vm_id: str | None = None


def check_revert(session: Session, snapshot_id: str) -> Volume:
    snap = backed_up(session, snapshot_id)
    vol = session.get(Volume, snap.volume_id)
    if vol is None or vol.removed is not None:
        raise InvalidParameter(f"The volume of snapshot {snap.name} is gone; create a volume from it instead")
    if vol.state != "Ready" or not vol.pool_id:
        raise InvalidState(f"Volume {vol.name} is {vol.state}; it must be Ready")
    if vol.vm_id:
        vm = session.get(VirtualMachine, vol.vm_id)
        if vm is not None and vm.state != "Stopped":
            raise InvalidState(
                f"VM {vm.name} is {vm.state}: a volume snapshot is reverted only while its VM is Stopped"
            )
        refuse_with_vm_snapshots(session, vol.vm_id, "revert the volume snapshot")
    return vol


class RevertSnapshot(Operation[RevertSnapshotParams]):
    kind: ClassVar[str] = "snapshot.revert"
    cmd: ClassVar[str] = "revertSnapshot"
    event: ClassVar[str | None] = "SNAPSHOT.REVERT"
    params_model = RevertSnapshotParams

    @classmethod
    def resources(cls, params: RevertSnapshotParams) -> list[str]:
        locks = [f"snapshot:{params.snapshot_id}", f"volume:{params.volume_id}"]
        return locks + ([f"vm:{params.vm_id}"] if params.vm_id else [])

    @classmethod
    def check(cls, session: Session, params: RevertSnapshotParams) -> None:
        check_revert(session, params.snapshot_id)

    def steps(self) -> Sequence[Step]:
        return [
            Step("copy", self._copy, undo=self._uncopy),
            Step("switch", self._switch, commit=True),
            Step("drop old", self._drop_old),
        ]

    def _copy(self) -> StepData:
        with self.db.session() as s:
            vol = live_volume(s, self.params.volume_id)
            snap = backed_up(s, self.params.snapshot_id)
            source, store = snapshot_file(s, snap)
            pool = s.get(StoragePool, vol.pool_id)
            assert pool is not None
            layer = Layer(pool_id=pool.id, path="", volume_id=vol.id, virtual_size=snap.virtual_size,
                          state="Creating", creating_job=self.job.job_id)  # fmt: skip
            s.add(layer)
            s.flush()
            layer.path = f"volumes/{vol.id}/{layer.id}.qcow2"
            layer_id, target = layer.id, ref(pool, layer.path)
            host = host_for(s, [pool], [store])
            client, host_name = host_client(host), host.name
            old_top = vol.top_layer_id
        # The row (marked with this job) is committed before the copy: the undo, also after a crash, finds it.
        with agent_errors(host_name):
            info = client.run_long(ConvertLayer(source=source, target=target), on_progress=self.job.part_progress(0, 1))
        return {"layer_id": layer_id, "old_top": old_top, "physical_size": info.physical_size,
                "virtual_size": info.virtual_size}  # fmt: skip

    def _uncopy(self) -> None:
        with self.db.session() as s:
            ids = list(s.scalars(select(Layer.id).where(Layer.creating_job == self.job.job_id,
                                                        Layer.removed.is_(None))))  # fmt: skip
        for layer_id in ids:
            remove_unfinished_layer(self.db, layer_id)

    def _switch(self) -> None:
        out = self.output("copy")
        with self.db.session() as s:
            vol = live_volume(s, self.params.volume_id)
            layer = s.get(Layer, out["layer_id"])
            assert layer is not None
            if vol.top_layer_id == layer.id:
                return
            layer.state, layer.creating_job = "Ready", None
            layer.virtual_size, layer.physical_size = int(out["virtual_size"]), int(out["physical_size"])
            vol.top_layer_id, vol.size = layer.id, layer.virtual_size

    def _drop_old(self) -> None:
        old = self.output("copy").get("old_top")
        if old:
            remove_volume_layers(self.db, old)

    def result(self) -> JobResult:
        return {"type": SNAPSHOT_RESULT, "id": self.params.snapshot_id}


def revert(ctx: CallContext, args: dict[str, Any]) -> tuple[str, str]:
    snap = get_snapshot(ctx, args["id"])
    vol = check_revert(ctx.session, snap.id)
    params = RevertSnapshotParams(snapshot_id=snap.id, volume_id=vol.id, vm_id=vol.vm_id)
    return snap.id, jobs.submit_operation(ctx, RevertSnapshot, params, "Snapshot", snap.id)
