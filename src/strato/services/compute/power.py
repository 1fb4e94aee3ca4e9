"""startVirtualMachine, stopVirtualMachine, rebootVirtualMachine.

Each operation's first step moves the VM into its transitional state (Starting, Stopping), so that the
rules checked at the request and again when the job starts under its lock are the same. Starting the VM
on its host is start's point of no return; stop and reboot only ever go forward (a crash finishes them)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

from pydantic import BaseModel
from sqlalchemy.orm import Session

from strato.db.models import Host, StoragePool, VirtualMachine
from strato.engine.allocator import DiskRequest, plan, reaches
from strato.engine.jobkinds import JobResult
from strato.engine.operation import Operation, Step, StepData
from strato.errors import InvalidState
from strato.protocol.messages import RebootVm, RestoreVm, StartVm, StopVm
from strato.services.compute.hibernate import HIBERNATED, forget_hibernation, hibernation_layer
from strato.services.compute.vmcommon import GRACEFUL_STOP_S, host_of, load_vm, tear_down_on_host, vm_result
from strato.services.compute.vms import admin_choice
from strato.services.compute.vmsnap_tree import layer_ref
from strato.services.compute.vmspec import vm_spec
from strato.services.core import jobs, settings
from strato.services.core.access import get_vm
from strato.services.core.agents import agent_errors, host_client
from strato.services.core.context import CallContext
from strato.services.core.states import require_vm_state, vm_to
from strato.services.network.nics import prepare_for_vm
from strato.services.storage.disks import attached_volumes


class VmParams(BaseModel):
    vm_id: str


class StartParams(VmParams):
    host_id: str | None = None


class StopParams(VmParams):
    forced: bool = False


class _VmOperation(Operation[Any]):
    """An operation on one VM, locked by it."""

    @classmethod
    def resources(cls, params: Any) -> list[str]:
        return [f"vm:{params.vm_id}"]

    def result(self) -> JobResult:
        return vm_result(self.params.vm_id)


class StartVirtualMachine(_VmOperation):
    kind: ClassVar[str] = "vm.start"
    cmd: ClassVar[str] = "startVirtualMachine"
    event: ClassVar[str | None] = "VM.START"
    params_model = StartParams

    @classmethod
    def check(cls, session: Session, params: StartParams) -> None:
        require_vm_state(load_vm(session, params.vm_id), "Stopped", HIBERNATED, action="start")

    def steps(self) -> Sequence[Step]:
        return [
            Step("plan", self._plan, undo=self._unplan),
            Step("start", self._start, undo=self._stop, commit=True),
            Step("running", self._running),
            Step("forget memory", self._forget_memory),
        ]

    def _plan(self) -> StepData:
        """Starting, on a host that reaches every pool of its disks (its last host preferred)."""
        with self.db.session() as s:
            vm = load_vm(s, self.params.vm_id)
            if vm.state != "Starting":
                vm_to(vm, "Starting")
            volumes = [v for v in attached_volumes(s, vm.id) if v.pool_id]
            requests = [DiskRequest(label=v.name, size=0, pool_id=v.pool_id, existing=True) for v in volumes]
            # The volumes exist: the host must reach their pools; sizes are already accounted.
            chosen = plan(
                s,
                vm.zone_id,
                requests,
                vm.memory_mib,
                vm.cpu_number,
                settings.allocation_limits(s),
                host_id=self.params.host_id,
                prefer_host_id=vm.last_host_id,
            )
            pools = [s.get(StoragePool, v.pool_id) for v in volumes]
            assert all(p is not None and reaches(chosen.host, p) for p in pools)
            vm.host_id = vm.last_host_id = chosen.host.id
            saved = hibernation_layer(s, vm.id)  # a hibernated VM resumes from its memory file
            return {"host_id": chosen.host.id, "memory": saved.id if saved is not None else None}

    def _unplan(self) -> None:
        with self.db.session() as s:
            _back_to_stopped(s, self.params.vm_id)

    def _start(self) -> StepData:
        with self.db.session() as s:
            vm = load_vm(s, self.params.vm_id)
            host = s.get(Host, self.output("plan")["host_id"])
            assert host is not None
            spec, client, host_name = vm_spec(s, vm), host_client(host), host.name
            network_calls = prepare_for_vm(s, vm, host)
            memory_id = self.output("plan").get("memory")
            memory = layer_ref(s, memory_id) if memory_id else None
        for call in network_calls:
            call.run()
        with agent_errors(host_name):
            if memory is not None:
                client.run_long(RestoreVm(spec=spec, memory=memory), on_progress=self.job.progress)
            else:
                client.call(StartVm(spec=spec))
        return {}

    def _stop(self) -> None:
        tear_down_on_host(self.db, self.params.vm_id, self.output("plan").get("host_id"))

    def _running(self) -> StepData:
        with self.db.session() as s:
            vm = load_vm(s, self.params.vm_id)
            if vm.state != "Running":
                vm_to(vm, "Running")
        return {}

    def _forget_memory(self) -> StepData:
        """Resumed: the memory file has served (a crash before this step leaves it; running again removes it)."""
        if self.output("plan").get("memory"):
            forget_hibernation(self.db, self.params.vm_id)
        return {}

    @classmethod
    def failed(cls, session: Session, params: StartParams) -> None:
        _back_to_stopped(session, params.vm_id)


def _back_to_stopped(session: Session, vm_id: str) -> None:
    """A start undone: Stopped, or Hibernated again when its memory file is still there to resume from."""
    vm = session.get(VirtualMachine, vm_id)
    if vm is not None and vm.state == "Starting":
        vm_to(vm, HIBERNATED if hibernation_layer(session, vm_id) is not None else "Stopped")
        vm.host_id = None


class StopVirtualMachine(_VmOperation):
    kind: ClassVar[str] = "vm.stop"
    cmd: ClassVar[str] = "stopVirtualMachine"
    event: ClassVar[str | None] = "VM.STOP"
    params_model = StopParams
    resumable: ClassVar[bool] = True

    @classmethod
    def check(cls, session: Session, params: StopParams) -> None:
        require_vm_state(load_vm(session, params.vm_id), "Running", "Stopped", action="stop")

    def steps(self) -> Sequence[Step]:
        return [
            Step("stopping", self._stopping, undo=self._back_to_running),
            Step("stop", self._stop),
            Step("stopped", self._stopped, commit=True),
        ]

    def _stopping(self) -> StepData:
        with self.db.session() as s:
            vm = load_vm(s, self.params.vm_id)
            if vm.state == "Running":
                vm_to(vm, "Stopping")
        return {}

    def _back_to_running(self) -> None:
        with self.db.session() as s:
            _stop_undone(s, self.params.vm_id)

    def _stop(self) -> StepData:
        """Stopping a stopped VM is no error on the agents, so this step may run again."""
        with self.db.session() as s:
            if load_vm(s, self.params.vm_id).state == "Stopped":
                return {}
        client, host_name, name = host_of(self.db, self.params.vm_id)
        with agent_errors(host_name):
            client.call(StopVm(name=name, force=self.params.forced, timeout_s=GRACEFUL_STOP_S))
        return {}

    def _stopped(self) -> StepData:
        with self.db.session() as s:
            vm = load_vm(s, self.params.vm_id)
            if vm.state != "Stopped":
                vm_to(vm, "Stopped")
            vm.host_id = None
        return {}

    @classmethod
    def failed(cls, session: Session, params: StopParams) -> None:
        _stop_undone(session, params.vm_id)


def _stop_undone(session: Session, vm_id: str) -> None:
    vm = session.get(VirtualMachine, vm_id)
    if vm is not None and vm.state == "Stopping":
        vm_to(vm, "Running")  # the agent did not stop it; VM sync corrects this if it did


class RebootVirtualMachine(_VmOperation):
    kind: ClassVar[str] = "vm.reboot"
    cmd: ClassVar[str] = "rebootVirtualMachine"
    event: ClassVar[str | None] = "VM.REBOOT"
    params_model = VmParams
    resumable: ClassVar[bool] = True

    @classmethod
    def check(cls, session: Session, params: VmParams) -> None:
        vm = load_vm(session, params.vm_id)
        require_vm_state(vm, "Running", action="reboot")
        if not vm.host_id:
            raise InvalidState(f"VM {vm.name} has no host")

    def steps(self) -> Sequence[Step]:
        return [Step("reboot", self._reboot)]

    def _reboot(self) -> StepData:
        """Rebooting twice is harmless: after a crash the reboot is asked for again."""
        client, host_name, name = host_of(self.db, self.params.vm_id)
        with agent_errors(host_name):
            client.call(RebootVm(name=name))
        return {}


# --- the requests -----------------------------------------------------------------------------------


def start(ctx: CallContext, args: dict[str, Any]) -> str:
    vm = get_vm(ctx, args["id"])
    params = StartParams(vm_id=vm.id, host_id=admin_choice(ctx, args.get("hostid"), "hostid"))
    return jobs.submit_operation(ctx, StartVirtualMachine, params, "VirtualMachine", vm.id)


def stop(ctx: CallContext, args: dict[str, Any]) -> str:
    vm = get_vm(ctx, args["id"])
    params = StopParams(vm_id=vm.id, forced=bool(args.get("forced")))
    return jobs.submit_operation(ctx, StopVirtualMachine, params, "VirtualMachine", vm.id)


def reboot(ctx: CallContext, args: dict[str, Any]) -> str:
    vm = get_vm(ctx, args["id"])
    return jobs.submit_operation(ctx, RebootVirtualMachine, VmParams(vm_id=vm.id), "VirtualMachine", vm.id)
