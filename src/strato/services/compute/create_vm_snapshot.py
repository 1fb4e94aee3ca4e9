"""createVMSnapshot: freeze the top layer of every disk of the VM (one transaction when it runs, with its
memory if asked) under a new empty top; the frozen layers are the snapshot.

The freeze is the point of no return: a running VM writes to the new tops from then on. Before it, every
new layer (row and file) is removed again; after it, the database is made to say what the disks are."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any, ClassVar

from pydantic import BaseModel
from sqlalchemy.orm import Session

from strato.db.base import utcnow
from strato.db.models import Account, Layer, VMSnapshot, VMSnapshotDisk, Volume
from strato.db.models.vmsnapshots import LAYER_MEMORY
from strato.engine.audit import record_event
from strato.engine.jobkinds import JobResult
from strato.engine.operation import FinishForward, Operation, Step, StepData
from strato.errors import InvalidParameter, InvalidState
from strato.protocol.client import AgentClient
from strato.protocol.messages import CreateLayer, GetLayerInfo, LayerInfo, LayerRef, SnapshotDisk, SnapshotVm
from strato.services.compute import vmsnap_usage
from strato.services.compute.vmcommon import load_vm
from strato.services.compute.vmsnap_tree import (
    VM_SNAPSHOT_RESULT,
    check_max,
    layer_ref,
    load_snapshot,
    new_layer_row,
    pools_client,
    refuse_on_layerless,
    require_enabled,
)
from strato.services.core import jobs, limits
from strato.services.core.access import get_vm
from strato.services.core.agents import agent_errors, find_until_reachable, host_client
from strato.services.core.context import CallContext
from strato.services.storage.layers import remove_unfinished_layer


class CreateSnapshotParams(BaseModel):
    snapshot_id: str
    vm_id: str
    memory: bool = False


class CreateVMSnapshot(Operation[CreateSnapshotParams]):
    kind: ClassVar[str] = "vmsnapshot.create"
    cmd: ClassVar[str] = "createVMSnapshot"
    event: ClassVar[str | None] = "VMSNAPSHOT.CREATE"
    params_model = CreateSnapshotParams
    _phase: str | None = None
    _last: tuple[int, int] = (0, 0)

    @classmethod
    def resources(cls, params: CreateSnapshotParams) -> list[str]:
        return [f"vm:{params.vm_id}"]

    @classmethod
    def check(cls, session: Session, params: CreateSnapshotParams) -> None:
        vm = load_vm(session, params.vm_id)
        require_enabled(session, vm, params.memory)
        if vm.state not in ("Running", "Stopped"):
            raise InvalidState(f"Cannot snapshot VM {vm.name}: it is {vm.state}; it must be Running or Stopped")
        if params.memory and vm.state != "Running":
            raise InvalidParameter("Can not snapshot memory when VM is not in Running state")
        refuse_on_layerless(session, vm)
        check_max(session, vm, exclude=params.snapshot_id)
        snap = load_snapshot(session, params.snapshot_id)
        if snap.state not in ("Allocated", "Creating"):
            raise InvalidState(f"VM snapshot {snap.name} is {snap.state}")
        owner = session.get(Account, vm.account_id)
        assert owner is not None
        limits.check(session, owner, vm_snapshots=1, counted=True)  # its own row is counted already

    def steps(self) -> Sequence[Step]:
        return [
            Step("plan", self._plan, undo=self._unplan),
            Step("freeze", self._freeze, undo=self._unfreeze, commit=True),
            Step("record", self._record),
        ]

    def _plan(self) -> StepData:
        """Creating; a row for each new top (and the memory file), marked with this job."""
        with self.db.session() as s:
            vm = load_vm(s, self.params.vm_id)
            snap = load_snapshot(s, self.params.snapshot_id)
            snap.state = "Creating"
            disks = []
            for vol in refuse_on_layerless(s, vm):
                assert vol.top_layer_id and vol.pool_id
                layer = new_layer_row(s, vol, vol.pool_id, vol.top_layer_id, self.job.job_id)
                disks.append({"volume_id": vol.id, "device_id": vol.device_id or 0, "old_top": vol.top_layer_id,
                              "new_top": layer.id})  # fmt: skip
            memory = None
            if self.params.memory:
                root = next(v for v in refuse_on_layerless(s, vm) if v.volume_type == "ROOT") if disks else None
                root = root or s.get(Volume, disks[0]["volume_id"])
                assert root is not None and root.pool_id
                mem = new_layer_row(s, root, root.pool_id, None, self.job.job_id, kind=LAYER_MEMORY,
                                    path=f"vmsnapshots/{vm.id}/{snap.id}.mem", size=vm.memory_mib << 20)  # fmt: skip
                mem.volume_id, mem.vm_id = None, vm.id
                memory = mem.id
            running = vm.state == "Running"
            return {"disks": disks, "memory": memory, "running": running, "host_id": vm.host_id if running else None}

    def _unplan(self) -> None:
        plan = self.output("plan")
        for lid in [d["new_top"] for d in plan.get("disks", [])] + ([plan["memory"]] if plan.get("memory") else []):
            remove_unfinished_layer(self.db, lid)
        with self.db.session() as s:
            snap = s.get(VMSnapshot, self.params.snapshot_id)
            if snap is not None and snap.state == "Creating":
                snap.state = "Allocated"

    def _refs(self) -> tuple[list[dict[str, Any]], Any]:
        plan = self.output("plan")
        with self.db.session() as s:
            disks = [dict(d, new_ref=layer_ref(s, d["new_top"]), old_ref=layer_ref(s, d["old_top"]))
                     for d in plan["disks"]]  # fmt: skip
            mem = layer_ref(s, plan["memory"]) if plan.get("memory") else None
        return disks, mem

    def _freeze(self) -> StepData:
        plan = self.output("plan")
        disks, mem = self._refs()
        with self.db.session() as s:
            vm = load_vm(s, self.params.vm_id)
            name = vm.instance_name
            if plan["running"]:
                from strato.db.models import Host

                host = s.get(Host, plan["host_id"])
                assert host is not None
                client, host_name = host_client(host), host.name
            else:
                client, host_name = pools_client(s, [d["new_top"] for d in plan["disks"]])
        sizes: dict[str, int] = {}
        with agent_errors(host_name):
            if plan["running"]:
                wanted = [SnapshotDisk(device_id=d["device_id"], new_top=d["new_ref"]) for d in disks]
                taken = client.run_long(SnapshotVm(vm_name=name, disks=wanted, memory=mem), on_progress=self._progress,
                                        on_phase=self._say)  # fmt: skip
                if taken.memory is not None:
                    sizes["memory"] = taken.memory.physical_size
            else:
                for d in disks:
                    info = client.call(CreateLayer(layer=d["new_ref"], size_bytes=None, backing=d["old_ref"]))
                    sizes[d["new_top"]] = info.physical_size
        return {"sizes": sizes}

    def _progress(self, done: int, total: int) -> None:
        self._last = (done, total)
        self.job.progress(done, total, {"phase": self._phase} if self._phase else None)

    def _say(self, phase: str) -> None:
        """The agent's phase (new tops, memory written with the guest running, disks frozen) for the job."""
        self._phase = phase
        self.job.progress(*self._last, {"phase": phase})

    def _unfreeze(self) -> None:
        """A running VM's snapshot that happened (its new tops exist: an agent removes them when the
        snapshot fails, also a new agent life ending its predecessor's) is finished forward, its memory
        kept only if the file is there (complete: a new agent life removes a partial one); a stopped VM's
        new tops are removed (by the plan's undo). A restarting agent is waited for, not guessed about."""
        plan = self.output("plan")
        if not plan.get("running"):
            return
        disks, mem = self._refs()
        with self.db.session() as s:
            client, host_name = pools_client(s, [d["new_top"] for d in plan["disks"]], prefer=plan.get("host_id"))
        if _layer_info(client, host_name, disks[0]["new_ref"]) is None:
            return
        memory = _layer_info(client, host_name, mem) if mem is not None else None
        sizes = {"memory": memory.physical_size} if memory is not None else {}
        raise FinishForward(
            "the VM's disks are on their new tops", {"sizes": sizes, "memory_lost": mem is not None and memory is None}
        )

    def _record(self) -> StepData:
        plan, sizes = self.output("plan"), self.output("freeze").get("sizes", {})
        with self.db.session() as s:
            vm = load_vm(s, self.params.vm_id)
            snap = load_snapshot(s, self.params.snapshot_id)
            if snap.state == "Ready":
                return {}
            for d in plan["disks"]:
                old, new, vol = s.get(Layer, d["old_top"]), s.get(Layer, d["new_top"]), s.get(Volume, d["volume_id"])
                assert old is not None and new is not None and vol is not None
                old.frozen = True
                new.state, new.creating_job = "Ready", None
                new.physical_size = int(sizes.get(new.id, 196_608))
                vol.top_layer_id = new.id
                s.add(VMSnapshotDisk(snapshot_id=snap.id, volume_id=vol.id, device_id=d["device_id"], layer_id=old.id))
            if plan.get("memory") and self.output("freeze").get("memory_lost"):
                mem = s.get(Layer, plan["memory"])
                assert mem is not None
                mem.removed, mem.state, mem.creating_job = utcnow(), "Error", None
                snap.snapshot_type = "Disk"  # the disks froze, the memory save did not complete
                record_event(
                    s, "VMSNAPSHOT.CREATE", f"VM snapshot {snap.name} of VM {vm.name}: the disks were frozen but "
                    "the memory save was cut off (the host's agent restarted); kept as a disk-only snapshot",
                    account_id=snap.account_id, user_id=None, level="WARN", resource_type="VMSnapshot",
                    resource_id=snap.id,
                )  # fmt: skip
            elif plan.get("memory"):
                mem = s.get(Layer, plan["memory"])
                assert mem is not None
                mem.state, mem.creating_job, mem.frozen = "Ready", None, True
                mem.physical_size = int(sizes.get("memory", mem.virtual_size))
                snap.memory_layer_id = mem.id
            snap.parent_id, snap.state = vm.current_snapshot_id, "Ready"
            vm.current_snapshot_id = snap.id
            vmsnap_usage.record_created(s, vm, snap)
        return {}

    def result(self) -> JobResult:
        return {"type": VM_SNAPSHOT_RESULT, "id": self.params.snapshot_id}

    @classmethod
    def failed(cls, session: Session, params: CreateSnapshotParams) -> None:
        snap = session.get(VMSnapshot, params.snapshot_id)
        if snap is not None and snap.state in ("Allocated", "Creating"):
            snap.state = "Error"


def create(ctx: CallContext, args: dict[str, Any]) -> tuple[VMSnapshot, str]:
    """createVMSnapshot at the request: the row (Allocated), then the rules, then the job."""
    vm = get_vm(ctx, args["virtualmachineid"], "virtualmachineid")
    if args.get("quiescevm"):
        raise InvalidParameter("quiescevm=true is not supported: there is no guest agent to quiesce the VM through")
    memory = bool(args.get("snapshotmemory"))
    require_enabled(ctx.session, vm, memory)
    ts = datetime.now(UTC).strftime("%Y%m%d%H%M%S")
    name = args.get("name") or f"i-{vm.name}_VS_{ts}"
    snap = VMSnapshot(vm_id=vm.id, account_id=vm.account_id, domain_id=vm.domain_id, name=name,
                      display_name=args.get("name") or name, description=args.get("description"),
                      snapshot_type="DiskAndMemory" if memory else "Disk", state="Allocated")  # fmt: skip
    ctx.session.add(snap)
    ctx.session.flush()
    params = CreateSnapshotParams(snapshot_id=snap.id, vm_id=vm.id, memory=memory)
    return snap, jobs.submit_operation(ctx, CreateVMSnapshot, params, "VMSnapshot", snap.id)


def _layer_info(client: AgentClient, host_name: str, ref: LayerRef) -> LayerInfo | None:
    """The layer's file as its agent sees it, None when there is none; an agent that restarts is waited
    for (its answer decides whether the snapshot happened)."""
    return find_until_reachable(client, host_name, GetLayerInfo(layer=ref))
