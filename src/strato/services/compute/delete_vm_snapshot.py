"""deleteVMSnapshot: a node of the tree goes, and its layers with it as the tree allows.

- No child: its frozen layers are removed (and a hidden parent left with one child or none is dealt
  with in the same job, as if deleted again).
- One child: each of its frozen layers merges with the child's layer resting on it, in the direction
  that copies less (commit the child's layer down, or stream this one up), live through the running VM
  when the VM has the layers open.
- Several children: hidden (gone from the API), its layers kept until one child is left.
The memory file goes in every case. The merge is the point of no return: once the files say the layers
are one, the database is made to say it too (a failed merge is undone: a stream changes nothing until it
completes; a commit may have written into the snapshot's layer, which is then marked Error)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

from pydantic import BaseModel
from sqlalchemy import select
from sqlalchemy.orm import Session

from strato.db.base import utcnow
from strato.db.models import Host, Layer, VirtualMachine, VMSnapshot, VMSnapshotDisk, Volume
from strato.engine.jobkinds import JobResult
from strato.engine.operation import Operation, Step, StepData
from strato.errors import InvalidState
from strato.protocol.messages import (
    CommitDisk,
    CommitLayer,
    GetLayerInfo,
    RebaseLayer,
    StreamDisk,
    StreamLayer,
)
from strato.services.compute import vmsnap_usage
from strato.services.compute.vmcommon import load_vm
from strato.services.compute.vmsnap_tree import (
    child_count,
    layer_ref,
    live_children,
    load_snapshot,
    pools_client,
    running_chain,
    snapshot_disks,
)
from strato.services.core import jobs
from strato.services.core.access import get_owned
from strato.services.core.agents import agent_errors, host_client
from strato.services.core.context import CallContext
from strato.services.storage.layers import remove_layer_file

EMPTY = 196_608


class DeleteSnapshotParams(BaseModel):
    snapshot_id: str
    vm_id: str


class DeleteVMSnapshot(Operation[DeleteSnapshotParams]):
    kind: ClassVar[str] = "vmsnapshot.delete"
    cmd: ClassVar[str] = "deleteVMSnapshot"
    event: ClassVar[str | None] = "VMSNAPSHOT.DELETE"
    params_model = DeleteSnapshotParams

    @classmethod
    def resources(cls, params: DeleteSnapshotParams) -> list[str]:
        return [f"vm:{params.vm_id}"]

    @classmethod
    def check(cls, session: Session, params: DeleteSnapshotParams) -> None:
        snap = load_snapshot(session, params.snapshot_id)
        if snap.state not in ("Ready", "Error", "Expunging") or (snap.hidden and snap.state != "Expunging"):
            raise InvalidState(f"VM snapshot {snap.name} is {snap.state}; it cannot be deleted now")
        vm = load_vm(session, params.vm_id)
        # Hibernated: QEMU is down, so the merge runs offline as for a stopped VM; it keeps the disks'
        # content, which is all the saved memory relies on (the resume opens the chain the database names).
        if vm.state not in ("Running", "Stopped", "Hibernated", "Destroyed", "Expunging"):
            raise InvalidState(f"Cannot delete a snapshot of VM {vm.name}: it is {vm.state}")

    def steps(self) -> Sequence[Step]:
        return [
            Step("plan", self._plan, undo=self._unplan),
            Step("merge", self._merge, undo=self._unmerge, commit=True),
            Step("switch", self._switch, commit=True),
            Step("remove layers", self._remove),
        ]

    # --- the plan: which nodes go, which one (at most) merges with its single child ------------------

    def _plan(self) -> StepData:
        with self.db.session() as s:
            snap = load_snapshot(s, self.params.snapshot_id)
            previous = snap.state
            snap.state = "Expunging"
            remove: list[str] = []
            merge: dict[str, Any] | None = None
            hide = False
            node: VMSnapshot | None = snap
            first = True
            while node is not None:
                n = child_count(s, node) - (0 if first else 1)  # a parent loses the child removed below it
                if not first and (not node.hidden or n > 1):
                    break
                if n >= 2:
                    hide = True
                    break
                if n == 1:
                    going = {d.layer_id for r in remove for d in snapshot_disks(s, r)}
                    merge = _merge_plan(s, node, going)
                    break
                remove.append(node.id)
                node = s.get(VMSnapshot, node.parent_id) if node.parent_id else None
                first = False
            memory = [snap.memory_layer_id] if snap.memory_layer_id else []
        if merge is not None:
            self._choose_directions(merge)
        return {"previous": previous, "remove": remove, "merge": merge, "hide": hide, "memory": memory}

    def _choose_directions(self, merge: dict[str, Any]) -> None:
        """Per disk: commit the upper layer down when it holds less data than the lower, else stream up."""
        for d in merge["disks"]:
            with self.db.session() as s:
                upper, lower = layer_ref(s, d["upper"]), layer_ref(s, d["lower"])
                client, host_name = pools_client(s, [d["upper"], d["lower"]])
            with agent_errors(host_name):
                up, low = client.call(GetLayerInfo(layer=upper)), client.call(GetLayerInfo(layer=lower))
            d["direction"] = "commit" if up.physical_size <= low.physical_size else "stream"
            d["copied"] = (up.physical_size if d["direction"] == "commit" else low.physical_size) - EMPTY

    def _unplan(self) -> None:
        plan = self.output("plan")
        with self.db.session() as s:
            snap = s.get(VMSnapshot, self.params.snapshot_id)
            if snap is not None and snap.state == "Expunging":
                snap.state = plan.get("previous", "Ready")

    # --- the merge (agent side) ----------------------------------------------------------------------

    def _merge(self) -> StepData:
        merge = self.output("plan").get("merge")
        if not merge:
            return {}
        for d in merge["disks"]:
            self._merge_disk(merge, d)
        return {}

    def _merge_disk(self, merge: dict[str, Any], d: dict[str, Any]) -> None:
        with self.db.session() as s:
            vm = load_vm(s, self.params.vm_id)
            upper, lower = s.get(Layer, d["upper"]), s.get(Layer, d["lower"])
            assert upper is not None and lower is not None
            if upper.removed is not None or lower.removed is not None:
                return  # merged before a restart
            live = vm.state == "Running" and upper.id in running_chain(s, vm) and vm.host_id is not None
            up_ref, low_ref = layer_ref(s, upper.id), layer_ref(s, lower.id)
            base_ref = layer_ref(s, lower.parent_id) if lower.parent_id else None
            if live:
                host = s.get(Host, vm.host_id)
                assert host is not None
                client, host_name = host_client(host), host.name
            else:
                client, host_name = pools_client(s, [upper.id, lower.id])
            open_chain = running_chain(s, vm)
            others = [(layer_ref(s, c.id), c.id) for c in s.scalars(select(Layer).where(
                Layer.parent_id == upper.id, Layer.removed.is_(None))) if c.id not in open_chain]  # fmt: skip
            name, device = vm.instance_name, d["device_id"]
        with agent_errors(host_name):
            if d["direction"] == "commit":
                if live:
                    client.run_long(CommitDisk(vm_name=name, device_id=device, top=up_ref, base=low_ref),
                                    on_progress=self.job.progress)  # fmt: skip
                else:
                    client.run_long(CommitLayer(top=up_ref, base=low_ref), on_progress=self.job.progress)
                for other, _oid in others:  # layers of other branches resting on the committed one
                    client.call(RebaseLayer(layer=other, backing=low_ref))
            elif live:
                client.run_long(StreamDisk(vm_name=name, device_id=device, into=up_ref, base=base_ref),
                                on_progress=self.job.progress)  # fmt: skip
            else:
                client.run_long(StreamLayer(layer=up_ref, base=base_ref), on_progress=self.job.progress)

    def _unmerge(self) -> None:
        """A stream changes nothing anyone sees; a commit may have written into the snapshot's layer,
        which then no longer holds the snapshot's instant: the snapshot is Error (delete it again)."""
        merge = self.output("plan").get("merge")
        if merge and any(d["direction"] == "commit" for d in merge["disks"]):
            with self.db.session() as s:
                snap = s.get(VMSnapshot, merge["node"])
                if snap is not None:
                    snap.state = "Error"
                    snap.hidden = False

    # --- the database, then the files ------------------------------------------------------------------

    def _switch(self) -> StepData:
        plan = self.output("plan")
        drop: list[str] = []
        with self.db.session() as s:
            vm = s.get(VirtualMachine, self.params.vm_id)
            snap = load_snapshot(s, self.params.snapshot_id)
            vmsnap_usage.record_deleted(s, snap)
            if plan["hide"]:
                snap.hidden, snap.state, snap.memory_layer_id = True, "Ready", None
                return {"drop": []}
            merge = plan.get("merge")
            if merge:
                drop += _switch_merge(s, vm, merge)
                _drop_node(s, vm, merge["node"])
            for node_id in plan["remove"]:
                for d in snapshot_disks(s, node_id):
                    drop.append(d.layer_id)
                _drop_node(s, vm, node_id)
        return {"drop": drop}

    def _remove(self) -> StepData:
        plan = self.output("plan")
        for lid in [*self.output("switch").get("drop", []), *plan.get("memory", [])]:
            with self.db.session() as s:
                row = s.get(Layer, lid)
                if row is None or row.removed is not None:
                    continue
                if s.scalar(select(VMSnapshotDisk.id).where(VMSnapshotDisk.layer_id == lid,
                                                            VMSnapshotDisk.removed.is_(None))):  # fmt: skip
                    continue
            remove_layer_file(self.db, lid)
        return {}

    def result(self) -> JobResult:
        return {"success": True}

    @classmethod
    def failed(cls, session: Session, params: DeleteSnapshotParams) -> None:
        snap = session.get(VMSnapshot, params.snapshot_id)
        if snap is not None and snap.removed is None and snap.state == "Expunging":
            snap.state = "Ready"


def _merge_plan(s: Session, node: VMSnapshot, going: set[str]) -> dict[str, Any]:
    """For each frozen layer of the node, the one layer resting on it (the child's; `going` are the
    layers of the nodes removed in the same job)."""
    kids = live_children(s, node.id)
    disks = []
    for d in snapshot_disks(s, node.id):
        above = select(Layer).where(Layer.parent_id == d.layer_id, Layer.removed.is_(None), Layer.id.not_in(going))
        upper = s.scalar(above)
        if upper is None:
            continue
        disks.append({"volume_id": d.volume_id, "device_id": d.device_id, "upper": upper.id, "lower": d.layer_id})
    return {"node": node.id, "child": kids[0].id if kids else None, "disks": disks}


def _switch_merge(s: Session, vm: VirtualMachine | None, merge: dict[str, Any]) -> list[str]:
    """The rows follow the files: after a commit the lower layer stands for the upper one; after a stream
    the upper layer rests on the lower one's backing. Answers the layers whose files go."""
    drop = []
    for d in merge["disks"]:
        upper, lower = s.get(Layer, d["upper"]), s.get(Layer, d["lower"])
        assert upper is not None and lower is not None
        if upper.removed is not None or lower.removed is not None:
            continue
        if d["direction"] == "commit":
            for child in s.scalars(select(Layer).where(Layer.parent_id == upper.id, Layer.removed.is_(None))):
                child.parent_id = lower.id
            for held in s.scalars(select(VMSnapshotDisk).where(VMSnapshotDisk.layer_id == upper.id,
                                                               VMSnapshotDisk.removed.is_(None))):  # fmt: skip
                held.layer_id = lower.id
            vol = s.get(Volume, d["volume_id"])
            if vol is not None and vol.top_layer_id == upper.id:
                vol.top_layer_id, lower.frozen = lower.id, False
            lower.physical_size += max(0, upper.physical_size - EMPTY)
            mine = select(VMSnapshotDisk).where(
                VMSnapshotDisk.layer_id == lower.id, VMSnapshotDisk.snapshot_id == merge["node"]
            )
            for held in s.scalars(mine):
                held.removed = utcnow()
            drop.append(upper.id)
        else:
            upper.parent_id = lower.parent_id
            upper.physical_size += max(0, lower.physical_size - EMPTY)
            drop.append(lower.id)
    return drop


def _drop_node(s: Session, vm: VirtualMachine | None, node_id: str) -> None:
    """The node leaves the tree: its children hang from its parent, and so does the VM's present state."""
    node = s.get(VMSnapshot, node_id)
    if node is None or node.removed is not None:
        return
    for child in live_children(s, node.id):
        child.parent_id = node.parent_id
    if vm is not None and vm.current_snapshot_id == node.id:
        vm.current_snapshot_id = node.parent_id
    for d in snapshot_disks(s, node.id):
        d.removed = utcnow()
    node.removed, node.state, node.memory_layer_id = utcnow(), "Expunging", None


def delete(ctx: CallContext, args: dict[str, Any]) -> str:
    snap: VMSnapshot = get_owned(ctx, VMSnapshot, args["vmsnapshotid"], "VM snapshot", "vmsnapshotid")
    if snap.hidden:
        raise InvalidState(f"VM snapshot {snap.name} is already deleted")
    params = DeleteSnapshotParams(snapshot_id=snap.id, vm_id=snap.vm_id)
    return jobs.submit_operation(ctx, DeleteVMSnapshot, params, "VMSnapshot", snap.id)
