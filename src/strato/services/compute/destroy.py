"""destroyVirtualMachine (with expunge=true, the expunge follows in the same job), expungeVirtualMachine,
and the periodic expunge of VMs destroyed longer ago than expunge.delay (CloudStack's expunge thread).

Both operations only go forward: their purpose is to finish, and every step may run again after a
crash (files are removed with missing_ok, rows changed only when not changed yet)."""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from datetime import timedelta
from typing import Any, ClassVar

from pydantic import BaseModel
from sqlalchemy import exists, select
from sqlalchemy.orm import Session

from strato.db.base import utcnow
from strato.db.engine import Database
from strato.db.models import Host, Job, JobResource, Network, VirtualMachine, Volume
from strato.db.models.jobs import JOB_ACTIVE
from strato.engine import queue
from strato.engine.jobkinds import JobResult
from strato.engine.operation import Operation, Step, StepData
from strato.engine.periodic import periodic
from strato.errors import CloudError, InvalidParameter
from strato.protocol.client import AgentClientError
from strato.protocol.messages import RemoveTaps, RemoveVm, StopVm
from strato.services.compute.hibernate import HIBERNATED, forget_hibernation
from strato.services.compute.vmcommon import drop_config_drive, host_of, load_vm, vm_result
from strato.services.compute.vmsnap_tree import forget_vm_snapshots, remove_branch_layers
from strato.services.core import jobs, settings
from strato.services.core.access import get_vm
from strato.services.core.agents import agent_errors, host_client
from strato.services.core.context import CallContext
from strato.services.core.states import require_vm_state, vm_to, volume_to
from strato.services.network.natrules import forget_vm_rules
from strato.services.network.nics import refresh_network, tap_name, vm_nics
from strato.services.network.secgroups import forget_vm
from strato.services.storage.disks import attached_volumes
from strato.services.storage.layers import remove_volume_files, remove_volume_layers


class ExpungeParams(BaseModel):
    vm_id: str
    # Set by the periodic expunge: the job does nothing when the VM has left this state since (recovered).
    expect_state: str | None = None


class DestroyParams(BaseModel):
    vm_id: str
    expunge: bool = False
    volume_ids: list[str] = []


class _Expunging(Operation[Any]):
    """The expunge steps, shared by expungeVirtualMachine and destroyVirtualMachine with expunge=true."""

    resumable: ClassVar[bool] = True

    @classmethod
    def resources(cls, params: Any) -> list[str]:
        return [f"vm:{params.vm_id}"]

    def expunge_steps(self) -> list[Step]:
        return [
            Step("expunging", self._expunging),
            Step("remove disks", self._remove_disks),
            Step("config drive", self._config_drive),
            Step("run files", self._run_files),
            Step("expunged", self._expunged, commit=True),
        ]

    def _skipped(self) -> bool:
        return bool(self.output("expunging").get("skip"))

    def _expunging(self) -> StepData:
        """Expunging; records the disks that go with the VM (its root disk, those destroyed with it)."""
        expected = getattr(self.params, "expect_state", None)
        with self.db.session() as s:
            vm = s.get(VirtualMachine, self.params.vm_id)
            if vm is None or vm.removed is not None:
                return {"skip": True}
            if expected and vm.state not in (expected, "Expunging"):
                return {"skip": True}  # recovered (or otherwise changed) since the expunge was queued
            if vm.state == "Stopped":
                vm_to(vm, "Destroyed")
            if vm.state != "Expunging":
                vm_to(vm, "Expunging")
            doomed = [v.id for v in attached_volumes(s, vm.id) if v.volume_type == "ROOT" or v.state == "Destroy"]
            return {"volumes": doomed, "host_id": vm.last_host_id}

    def _remove_disks(self) -> StepData:
        had_snapshots = forget_vm_snapshots(self.db, self.params.vm_id)
        if had_snapshots:  # disks the VM keeps attached until its end lose the other branches' layers
            doomed = set(self.output("expunging").get("volumes", []))
            with self.db.session() as s:
                kept = [v.id for v in attached_volumes(s, self.params.vm_id) if v.id not in doomed]
            for volume_id in kept:
                remove_branch_layers(self.db, volume_id)
        for volume_id in self.output("expunging").get("volumes", []):
            with self.db.session() as s:
                vol = s.get(Volume, volume_id)
                if vol is None or vol.removed is not None:
                    continue
                top = vol.top_layer_id
            if had_snapshots:  # the layers of every branch of the snapshot tree
                remove_volume_files(self.db, volume_id)
            else:
                remove_volume_layers(self.db, top)
            with self.db.session() as s:
                vol = s.get(Volume, volume_id)
                assert vol is not None
                volume_to(vol, "Expunged")
                vol.removed, vol.vm_id, vol.top_layer_id = utcnow(), None, None
        return {}

    def _config_drive(self) -> StepData:
        if not self._skipped():
            drop_config_drive(self.db, self.params.vm_id)
        return {}

    def _run_files(self) -> StepData:
        """Run files of a stopped VM on an unreachable host are harmless: a later expunge removes them."""
        host_id = self.output("expunging").get("host_id")
        with self.db.session() as s:
            host = s.get(Host, host_id) if host_id and not self._skipped() else None
            vm = s.get(VirtualMachine, self.params.vm_id)
            if host is None or vm is None:
                return {}
            client, name = host_client(host), vm.instance_name
            taps = [tap_name(n) for n in vm_nics(s, vm.id)]
        with contextlib.suppress(AgentClientError):
            client.call(RemoveVm(name=name))
        if taps:
            with contextlib.suppress(AgentClientError):
                client.call(RemoveTaps(taps=taps))
        return {}

    def _expunged(self) -> StepData:
        if self._skipped():
            return {}
        with self.db.session() as s:
            vm = s.get(VirtualMachine, self.params.vm_id)
            if vm is None or vm.removed is not None:
                return {}
            for vol in attached_volumes(s, vm.id):
                vol.vm_id, vol.device_id, vol.attached = None, None, None
            forget_vm_rules(s, vm.id)
            network_ids = sorted({nic.network_id for nic in vm_nics(s, vm.id)})
            for nic in vm_nics(s, vm.id):
                s.delete(nic)  # its address and MAC are free again
            forget_vm(s, vm.id)
            vm_to(vm, "Expunged")
            vm.removed, vm.host_id, vm.iso_id = utcnow(), None, None
        self._tell_routers(network_ids)
        return {}

    def _tell_routers(self, network_ids: list[str]) -> None:
        """The VM's networks' hosts get their state without its NICs: its lease and DNS name go at once. Best
        effort: a host that does not answer has them until the network's next restart or rule change."""
        with self.db.session() as s:
            calls = [
                call
                for nid in network_ids
                if (net := s.get(Network, nid)) and net.removed is None
                for call in refresh_network(s, net)
            ]
        for call in calls:
            with contextlib.suppress(CloudError):
                call.run_if_reachable()

    @classmethod
    def failed(cls, session: Session, params: Any) -> None:
        vm = session.get(VirtualMachine, params.vm_id)
        if vm is not None and vm.state == "Expunging":
            vm_to(vm, "Destroyed")
        elif vm is not None and vm.state == "Stopping":
            vm_to(vm, "Running")


class ExpungeVirtualMachine(_Expunging):
    """Removes the VM's root disk files, its config drive and its run files on the host; data disks are
    detached and kept (unless they were destroyed with it)."""

    kind: ClassVar[str] = "vm.expunge"
    cmd: ClassVar[str] = "expungeVirtualMachine"
    event: ClassVar[str | None] = "VM.EXPUNGE"
    params_model = ExpungeParams

    @classmethod
    def check(cls, session: Session, params: ExpungeParams) -> None:
        if params.expect_state:
            return  # queued by the periodic expunge: the first step decides whether it is still wanted
        require_vm_state(load_vm(session, params.vm_id), "Destroyed", "Error", "Stopped", action="expunge")

    def steps(self) -> Sequence[Step]:
        return self.expunge_steps()

    def result(self) -> JobResult:
        return {"success": True}


class DestroyVirtualMachine(_Expunging):
    kind: ClassVar[str] = "vm.destroy"
    cmd: ClassVar[str] = "destroyVirtualMachine"
    event: ClassVar[str | None] = "VM.DESTROY"
    params_model = DestroyParams

    @classmethod
    def check(cls, session: Session, params: DestroyParams) -> None:
        vm = load_vm(session, params.vm_id)
        require_vm_state(vm, "Running", "Stopped", "Error", HIBERNATED, action="destroy")
        for vid in params.volume_ids:
            vol = session.get(Volume, vid)
            if vol is None or vol.removed is not None or vol.vm_id != vm.id or vol.volume_type != "DATADISK":
                raise InvalidParameter(f"Volume {vid} (volumeids) is not a data disk of VM {vm.name}")

    def steps(self) -> Sequence[Step]:
        out = [Step("stop", self._stop, undo=self._stop_undone), Step("destroyed", self._destroyed, commit=True),
               Step("forget memory", self._forget_memory)]  # fmt: skip
        return out + (self.expunge_steps() if self.params.expunge else [])

    def _forget_memory(self) -> StepData:
        """A hibernated VM's memory file goes with it: a recovered VM starts Stopped, from its disks."""
        forget_hibernation(self.db, self.params.vm_id)
        return {}

    def _stop(self) -> StepData:
        with self.db.session() as s:
            vm = load_vm(s, self.params.vm_id)
            if vm.state not in ("Running", "Stopping") or not vm.host_id:
                return {}
            if vm.state == "Running":
                vm_to(vm, "Stopping")
        client, host_name, name = host_of(self.db, self.params.vm_id)
        with agent_errors(host_name):
            client.call(StopVm(name=name, force=True))
        return {}

    def _stop_undone(self) -> None:
        with self.db.session() as s:
            vm = s.get(VirtualMachine, self.params.vm_id)
            if vm is not None and vm.state == "Stopping":
                vm_to(vm, "Running")

    def _destroyed(self) -> StepData:
        with self.db.session() as s:
            vm = load_vm(s, self.params.vm_id)
            if vm.state in ("Destroyed", "Expunging"):
                return {}
            vm_to(vm, "Destroyed")
            vm.host_id, vm.destroyed_at = None, utcnow()
            for vol in attached_volumes(s, vm.id):
                if (vol.volume_type == "ROOT" or vol.id in self.params.volume_ids) and vol.state != "Destroy":
                    volume_to(vol, "Destroy")
        return {}

    def result(self) -> JobResult:
        return {"success": True} if self.params.expunge else vm_result(self.params.vm_id)


# --- the requests and the periodic expunge ----------------------------------------------------------


def destroy(ctx: CallContext, args: dict[str, Any]) -> str:
    """CloudStack lets users expunge when allow.user.expunge.recover.vm is on; Strato always allows it."""
    vm = get_vm(ctx, args["id"])
    params = DestroyParams(vm_id=vm.id, expunge=bool(args.get("expunge")), volume_ids=list(args.get("volumeids") or []))
    return jobs.submit_operation(ctx, DestroyVirtualMachine, params, "VirtualMachine", vm.id)


def expunge(ctx: CallContext, args: dict[str, Any]) -> str:
    vm = get_vm(ctx, args["id"])
    return jobs.submit_operation(ctx, ExpungeVirtualMachine, ExpungeParams(vm_id=vm.id), "VirtualMachine", vm.id)


def _expunge_interval(db: Database) -> float:
    with db.session() as s:
        return float(settings.get(s, "expunge.interval"))


@periodic("expunge-destroyed-vms", every_s=_expunge_interval)
def expunge_destroyed_vms(db: Database) -> None:
    """Queues an expunge for every VM destroyed longer ago than expunge.delay (none already queued)."""
    with db.session() as s:
        delay = int(settings.get(s, "expunge.delay"))
        limit = utcnow() - timedelta(seconds=delay)
        busy = exists(
            select(1)
            .select_from(JobResource)
            .join(Job, Job.seq == JobResource.job_seq)
            .where(JobResource.resource == "vm:" + VirtualMachine.id, Job.status.in_(JOB_ACTIVE))
        )
        due = s.scalars(
            select(VirtualMachine).where(
                VirtualMachine.state == "Destroyed",
                VirtualMachine.removed.is_(None),
                VirtualMachine.destroyed_at.is_not(None),
                VirtualMachine.destroyed_at <= limit,
                ~busy,
            )
        )
        for vm in due:
            params = ExpungeParams(vm_id=vm.id, expect_state="Destroyed")
            queue.submit(
                s,
                kind=ExpungeVirtualMachine.kind,
                cmd=ExpungeVirtualMachine.cmd,
                params=params.model_dump(mode="json"),
                resources=ExpungeVirtualMachine.resources(params),
                account_id=vm.account_id,
                user_id=None,
                instance_type="VirtualMachine",
                instance_id=vm.id,
            )
