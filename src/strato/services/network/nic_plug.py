"""NICs of a running VM: addNicToVirtualMachine and removeNicFromVirtualMachine as jobs that plug and
unplug them live (the agent's AttachNic / DetachNic), locked on the VM and the network.

Add: the NIC row first (its IP and MAC, so the router's DHCP knows it), then the network's wanted state
on the VM's host (the tap on the bridge, the lease, the security-group filter: what a start would send),
then the hot-plug (the commit point). A failure at any step takes back what was done, newest first: the
device and netdev, the tap, the row, and the hosts are told again without the NIC.

Remove: the unplug first (the guest must release the device: a guest that does not leaves the NIC in
place and fails the job with the agent's reason), the commit point; then the row goes and the
hosts are told (tap removed, lease and filter re-sent, best effort: an unreachable host is left to
network sync)."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import ClassVar

from pydantic import BaseModel
from sqlalchemy import select
from sqlalchemy.orm import Session

from strato.db.models import Host, Network, Nic, VirtualMachine, Zone
from strato.engine.jobkinds import JobResult
from strato.engine.operation import Operation, Step, StepData
from strato.errors import NotFound
from strato.protocol.client import AgentCallError
from strato.protocol.messages import AttachNic, DetachNic, ErrorCode, NicSpec, RemoveTaps
from strato.services.core import jobs
from strato.services.core.agents import agent_errors, host_client
from strato.services.core.context import CallContext
from strato.services.core.states import require_vm_state
from strato.services.network import networks, nics
from strato.services.network.nics import HostCall

VM_RESULT = {"type": "virtualmachine"}


class AddNicParams(BaseModel):
    vm_id: str
    network_id: str
    ip: str | None = None


class RemoveNicParams(BaseModel):
    vm_id: str
    nic_id: str
    network_id: str
    mac: str
    tap: str


def _running(session: Session, vm_id: str, action: str) -> tuple[VirtualMachine, Host]:
    vm = session.get(VirtualMachine, vm_id)
    if vm is None or vm.removed is not None:
        raise NotFound(f"Unable to find VM with id {vm_id}")
    require_vm_state(vm, "Running", action=action)
    host = session.get(Host, vm.host_id) if vm.host_id else None
    if host is None:
        raise NotFound(f"VM {vm.name} is Running on no known host")
    return vm, host


def _placed(session: Session, vm_id: str) -> tuple[VirtualMachine | None, Host | None]:
    """The VM and its host whatever its state, for an undo (a VM stopped meanwhile has no device left)."""
    vm = session.get(VirtualMachine, vm_id)
    return vm, session.get(Host, vm.host_id) if vm is not None and vm.host_id else None


def _network(session: Session, network_id: str) -> Network:
    row = session.get(Network, network_id)
    if row is None or row.removed is not None:
        raise NotFound(f"Unable to find network with id {network_id}")
    return row


def _retell_calls(session: Session, network: Network, zone_id: str) -> list[HostCall]:
    """The network's wanted state (its leases) and the zone's filters, to the hosts, best effort."""
    calls = nics.refresh_network(session, network)
    zone = session.get(Zone, zone_id)
    if zone is not None and zone.security_group_enabled:
        from strato.services.network.firewall import sync_calls

        calls += sync_calls(session, zone.id)
    return [dataclasses.replace(c, best_effort=True) for c in calls]


def _call_tolerating(host: Host, command: AttachNic | DetachNic, done_code: ErrorCode) -> None:
    """One device call on the VM's host; `done_code` means it was done already (before a restart)."""
    with agent_errors(host.name):
        try:
            host_client(host).call(command)
        except AgentCallError as exc:
            if exc.code != done_code:
                raise


class AddNicToRunningVm(Operation[AddNicParams]):
    kind: ClassVar[str] = "vm.nic.add"
    cmd: ClassVar[str] = "addNicToVirtualMachine"
    event: ClassVar[str | None] = "NIC.CREATE"
    params_model = AddNicParams

    @classmethod
    def resources(cls, params: AddNicParams) -> list[str]:
        return [f"vm:{params.vm_id}", f"network:{params.network_id}"]

    @classmethod
    def check(cls, session: Session, params: AddNicParams) -> None:
        vm, _ = _running(session, params.vm_id, "hot-plug a NIC into")
        network = _network(session, params.network_id)
        networks.check_new_nic(session, vm, network)
        if params.ip:  # a bad or taken address refused now, not by the job
            nics.allocate_ip(session, network, params.ip)

    def steps(self) -> Sequence[Step]:
        return [
            Step("allocate the NIC", self._allocate, undo=self._forget),
            Step("network on the host", self._ensure, undo=self._remove_tap),
            Step("hot-plug", self._plug, undo=self._unplug, commit=True),
        ]

    def _nic(self, session: Session) -> Nic | None:
        """The VM's NIC on the network (one at most): found so also after a half-done step."""
        return session.scalar(
            select(Nic).where(Nic.vm_id == self.params.vm_id, Nic.network_id == self.params.network_id)
        )

    def _allocate(self) -> StepData:
        self.job.progress(0, 3)
        with self.db.session() as s:
            vm, _ = _running(s, self.params.vm_id, "hot-plug a NIC into")
            network = _network(s, self.params.network_id)
            nic = nics.add_nic(s, vm, network, self.params.ip, default=not nics.vm_nics(s, vm.id))
            return {"nic_id": nic.id, "mac": nic.mac_address, "tap": nics.tap_name(nic)}

    def _forget(self) -> None:
        with self.db.session() as s:
            nic = self._nic(s)
            if nic is None:
                return
            s.delete(nic)
            s.flush()
            vm = s.get(VirtualMachine, self.params.vm_id)
            calls = _retell_calls(s, _network(s, self.params.network_id), vm.zone_id) if vm else []
        for call in calls:
            call.run()

    def _ensure(self) -> StepData:
        self.job.progress(1, 3)
        with self.db.session() as s:
            vm, host = _running(s, self.params.vm_id, "hot-plug a NIC into")
            calls = nics.prepare_for_vm(s, vm, host)
        for call in calls:
            call.run()
        return {}

    def _remove_tap(self) -> None:
        with self.db.session() as s:
            _vm, host = _placed(s, self.params.vm_id)
            nic = self._nic(s)
            if nic is None or host is None:
                return
            call = HostCall(host_client(host), host.name, RemoveTaps(taps=[nics.tap_name(nic)]), best_effort=True)
        call.run()

    def _plug(self) -> StepData:
        self.job.progress(2, 3)
        with self.db.session() as s:
            vm, host = _running(s, self.params.vm_id, "hot-plug a NIC into")
            nic = self._nic(s)
            if nic is None:
                raise NotFound(f"the new NIC of VM {vm.name} is gone")
            spec = NicSpec(mac=nic.mac_address, network_id=nic.network_id, tap=nics.tap_name(nic))
            name = vm.instance_name
        _call_tolerating(host, AttachNic(vm_name=name, nic=spec), ErrorCode.ALREADY_EXISTS)
        self.job.progress(3, 3)
        return {}

    def _unplug(self) -> None:
        with self.db.session() as s:
            vm, host = _placed(s, self.params.vm_id)
            nic = self._nic(s)
            if nic is None or vm is None or host is None or vm.state != "Running":
                return
            command = DetachNic(vm_name=vm.instance_name, mac=nic.mac_address)
        _call_tolerating(host, command, ErrorCode.NOT_FOUND)

    def result(self) -> JobResult:
        return {**VM_RESULT, "id": self.params.vm_id}


class RemoveNicFromRunningVm(Operation[RemoveNicParams]):
    kind: ClassVar[str] = "vm.nic.remove"
    cmd: ClassVar[str] = "removeNicFromVirtualMachine"
    event: ClassVar[str | None] = "NIC.DELETE"
    params_model = RemoveNicParams

    @classmethod
    def resources(cls, params: RemoveNicParams) -> list[str]:
        return [f"vm:{params.vm_id}", f"network:{params.network_id}"]

    @classmethod
    def check(cls, session: Session, params: RemoveNicParams) -> None:
        vm, _ = _running(session, params.vm_id, "hot-unplug a NIC from")
        networks.check_removable(session, vm, params.nic_id)

    def steps(self) -> Sequence[Step]:
        return [
            Step("hot-unplug", self._unplug, commit=True),
            Step("forget the NIC", self._forget),
            Step("tell the hosts", self._tell),
        ]

    def _unplug(self) -> StepData:
        self.job.progress(0, 3)
        with self.db.session() as s:
            vm, host = _running(s, self.params.vm_id, "hot-unplug a NIC from")
            command = DetachNic(vm_name=vm.instance_name, mac=self.params.mac)
        _call_tolerating(host, command, ErrorCode.NOT_FOUND)
        return {}

    def _forget(self) -> StepData:
        self.job.progress(1, 3)
        with self.db.session() as s:
            nic = s.get(Nic, self.params.nic_id)
            if nic is not None:
                s.delete(nic)
        return {}

    def _tell(self) -> StepData:
        self.job.progress(2, 3)
        with self.db.session() as s:
            vm, host = _placed(s, self.params.vm_id)
            calls = []
            if host is not None:
                tap = RemoveTaps(taps=[self.params.tap])
                calls.append(HostCall(host_client(host), host.name, tap, best_effort=True))
            network = s.get(Network, self.params.network_id)
            if vm is not None and network is not None and network.removed is None:
                calls += _retell_calls(s, network, vm.zone_id)
        for call in calls:
            call.run()
        self.job.progress(3, 3)
        return {}

    def result(self) -> JobResult:
        return {**VM_RESULT, "id": self.params.vm_id}


def submit_add(ctx: CallContext, vm: VirtualMachine, network_id: str, ip: str | None) -> str:
    """addNicToVirtualMachine on a running VM: permission on the network here, the rest in the job's
    check (run now and again under its locks)."""
    network = networks.usable_network(ctx, network_id, "networkid")
    params = AddNicParams(vm_id=vm.id, network_id=network.id, ip=ip)
    return jobs.submit_operation(ctx, AddNicToRunningVm, params, "VirtualMachine", vm.id)


def submit_remove(ctx: CallContext, vm: VirtualMachine, nic_id: str) -> str:
    nic = networks.check_removable(ctx.session, vm, nic_id)
    params = RemoveNicParams(
        vm_id=vm.id, nic_id=nic.id, network_id=nic.network_id, mac=nic.mac_address, tap=nics.tap_name(nic)
    )
    return jobs.submit_operation(ctx, RemoveNicFromRunningVm, params, "VirtualMachine", vm.id)
