"""NICs: each VM's IP and MAC chosen here (IP address management in the database), and the wanted
state of a network on each host that carries it, sent to the agents before a VM on it starts."""

from __future__ import annotations

import dataclasses
import ipaddress
import secrets
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlparse

from sqlalchemy import select
from sqlalchemy.orm import Session

from strato.db.models import Host, Network, Nic, VirtualMachine, Zone
from strato.errors import InsufficientCapacity, InvalidParameter
from strato.protocol.client import AgentClient, AgentClientError, AgentUnreachable
from strato.protocol.messages import (
    AgentCommand,
    DhcpHost,
    EnsureNetwork,
    NetworkSpec,
    NicSpec,
    RemoveNetwork,
    RemoveTaps,
    RouterSpec,
)
from strato.services.core.agents import agent_error, agent_errors, host_client
from strato.services.network import dns, publicips

ON_HOST_STATES = ("Starting", "Running", "Stopping", "Migrating")


def tap_name(nic: Nic) -> str:
    """At most 15 characters, unique per NIC."""
    return "st-" + nic.id.replace("-", "")[:12]


def new_mac(session: Session) -> str:
    """A locally administered unicast MAC (02:00:...) no other NIC has."""
    while True:
        mac = "02:00:" + ":".join(f"{b:02x}" for b in secrets.token_bytes(4))
        if session.scalar(select(Nic.id).where(Nic.mac_address == mac)) is None:
            return mac


def allocate_ip(session: Session, network: Network, wanted: str | None, param: str = "ipaddress") -> str:
    """The wanted address if it is free and in the network's range, else the first free one."""
    net = ipaddress.IPv4Network(network.cidr)
    start, end = ipaddress.IPv4Address(network.start_ip), ipaddress.IPv4Address(network.end_ip)
    used = set(session.scalars(select(Nic.ip_address).where(Nic.network_id == network.id)))
    used.add(network.gateway)
    if wanted:
        try:
            ip = ipaddress.IPv4Address(wanted)
        except ValueError:
            raise InvalidParameter(f"Parameter {param} must be an IPv4 address, not {wanted!r}") from None
        if ip not in net or not start <= ip <= end:
            raise InvalidParameter(f"Parameter {param} {ip} is outside network {network.name}'s range {start}-{end}")
        if str(ip) in used:
            raise InvalidParameter(f"Parameter {param} {ip} is already used in network {network.name}")
        return str(ip)
    addr = start
    while addr <= end:
        if str(addr) not in used:
            return str(addr)
        addr += 1
    raise InsufficientCapacity(f"Network {network.name} has no free address left in {start}-{end}")


def add_nic(session: Session, vm: VirtualMachine, network: Network, ip: str | None, default: bool) -> Nic:
    if network.removed is not None or network.state == "Destroy":
        raise InvalidParameter(f"Network {network.name} is being deleted: no NIC can be added to it")
    taken = list(session.scalars(select(Nic.device_id).where(Nic.vm_id == vm.id)))
    device = max(taken) + 1 if taken else 0  # not the count: a NIC removed in between frees no later id
    nic = Nic(
        vm_id=vm.id,
        network_id=network.id,
        device_id=device,
        ip_address=allocate_ip(session, network, ip),
        mac_address=new_mac(session),
        is_default=default,
    )
    session.add(nic)
    session.flush()
    return nic


def vm_nics(session: Session, vm_id: str) -> list[Nic]:
    return list(session.scalars(select(Nic).where(Nic.vm_id == vm_id).order_by(Nic.device_id)))


def nic_specs(session: Session, vm_id: str) -> list[NicSpec]:
    return [NicSpec(mac=n.mac_address, network_id=n.network_id, tap=tap_name(n)) for n in vm_nics(session, vm_id)]


def host_address(host: Host) -> str:
    """The host's address on the hosts' network: the one its agent is reached at."""
    return urlparse(host.url).hostname or "127.0.0.1"


@dataclass(frozen=True)
class HostCall:
    """One agent call prepared inside a session, made after it closes."""

    client: AgentClient
    host_name: str
    command: AgentCommand[Any]
    best_effort: bool = False
    """A host that cannot be reached is left to reconciliation instead of failing the caller."""

    def run(self) -> None:
        if self.best_effort:
            self.run_if_reachable()
            return
        with agent_errors(self.host_name):
            self.client.call(self.command)

    def run_if_reachable(self) -> bool:
        """As run, but a host that cannot be reached is not an error: False, for the caller to leave to
        reconciliation. A host that answers with a failure still raises."""
        try:
            self.client.call(self.command)
        except AgentUnreachable:
            return False
        except AgentClientError as exc:
            raise agent_error(self.host_name, exc) from None
        return True


def _carrying_hosts(session: Session, network: Network, extra: Host | None) -> list[Host]:
    """Hosts with a VM of the network on them (or about to be), and the router's host."""
    ids = set(
        session.scalars(
            select(VirtualMachine.host_id)
            .join(Nic, Nic.vm_id == VirtualMachine.id)
            .where(
                Nic.network_id == network.id,
                VirtualMachine.removed.is_(None),
                VirtualMachine.state.in_(ON_HOST_STATES),
                VirtualMachine.host_id.is_not(None),
            )
        )
    )
    if network.router_host_id:
        ids.add(network.router_host_id)
    if extra is not None:
        ids.add(extra.id)
    return [h for h in (session.get(Host, i) for i in sorted(i for i in ids if i)) if h is not None]


def network_spec(session: Session, network: Network, host: Host, hosts: list[Host], vm_id: str | None) -> NetworkSpec:
    taps = [
        tap_name(nic)
        for nic, vm in session.execute(
            select(Nic, VirtualMachine)
            .join(VirtualMachine, VirtualMachine.id == Nic.vm_id)
            .where(Nic.network_id == network.id, VirtualMachine.removed.is_(None))
        ).tuples()
        if vm.id == vm_id or (vm.host_id == host.id and vm.state in ON_HOST_STATES)
    ]
    router = None
    if network.router_host_id == host.id:
        net = ipaddress.IPv4Network(network.cidr)
        leases = session.execute(
            select(Nic, VirtualMachine.name)
            .join(VirtualMachine, VirtualMachine.id == Nic.vm_id)
            .where(Nic.network_id == network.id)
            .order_by(Nic.ip_address)
        ).tuples()
        router = RouterSpec(
            gateway=network.gateway,
            prefix=net.prefixlen,
            hosts=[DhcpHost(mac=n.mac_address, ip=n.ip_address, hostname=dns.hostname(name)) for n, name in leases],
            public=publicips.public_spec(session, network),
            dns=dns.dns_spec(session, network),
        )
    return NetworkSpec(
        id=network.id,
        isolation="vlan" if _isolation(session, network) == "VLAN" else "vxlan",
        vni=network.vlan,
        local=host_address(host),
        peers=sorted({host_address(h) for h in hosts if h.id != host.id}),
        taps=sorted(taps),
        router=router,
    )


def _isolation(session: Session, network: Network) -> str:
    from strato.db.models import PhysicalNetwork

    pn = session.get(PhysicalNetwork, network.physical_network_id)
    return pn.isolation_method if pn is not None else "VXLAN"


def prepare_for_vm(session: Session, vm: VirtualMachine, host: Host) -> list[HostCall]:
    """What every host of the VM's networks must be told before the VM starts on `host`: its taps and
    the flood entries to the new host; the first host a network's VM starts on runs its router."""
    calls: list[HostCall] = []
    network_ids = sorted({n.network_id for n in vm_nics(session, vm.id)})
    for network_id in network_ids:
        network = session.get(Network, network_id)
        if network is None or network.removed is not None:
            continue
        if network.router_host_id is None or session.get(Host, network.router_host_id) is None:
            network.router_host_id = host.id
        network.state = "Implemented"
        publicips.ensure_source_nat(session, network)
        hosts = _carrying_hosts(session, network, host)
        for h in hosts:
            spec = network_spec(session, network, h, hosts, vm.id if h.id == host.id else None)
            calls.append(HostCall(host_client(h), h.name, EnsureNetwork(network=spec)))
    zone = session.get(Zone, vm.zone_id)
    if zone is not None and zone.security_group_enabled:
        from strato.services.network.firewall import sync_calls

        for call in sync_calls(session, zone.id, extra=(vm.id, host.id)):
            # The VM's own host must have its filter before it starts; the others' member sets follow.
            calls.append(call if call.host_name == host.name else dataclasses.replace(call, best_effort=True))
    return calls


def refresh_network(session: Session, network: Network) -> list[HostCall]:
    """The network's wanted state re-sent to the hosts carrying it (restartNetwork, rule changes); an
    implemented network without its source NAT address gets it now (a public range added since)."""
    if network.router_host_id is not None:
        publicips.ensure_source_nat(session, network)
    hosts = _carrying_hosts(session, network, None)
    return [
        HostCall(host_client(h), h.name, EnsureNetwork(network=network_spec(session, network, h, hosts, None)))
        for h in hosts
    ]


def removal_calls(session: Session, network: Network) -> list[HostCall]:
    """RemoveNetwork to every host of the zone, whatever its status (a host just back from a restart may
    still be Disconnected in the database while it answers; idempotent: a host without the network has
    nothing to do). One that does not answer is told later by network sync (netsync), from its report."""
    hosts = session.scalars(select(Host).where(Host.zone_id == network.zone_id, Host.removed.is_(None)))
    return [HostCall(host_client(h), h.name, RemoveNetwork(network_id=network.id)) for h in hosts]


def leave_host(session: Session, vm: VirtualMachine, host: Host) -> list[HostCall]:
    """What a host the VM no longer runs on (a migration's source after the switch-over, or its target
    after a failed or cancelled one) must be told: the VM's taps go; a network nothing else keeps
    there (no other VM of it on that host, not its router's host) is removed from it whole, and the
    hosts still carrying it drop their flood entries towards it. Computed from the database, where
    the VM is already recorded on its other host."""
    calls: list[HostCall] = []
    by_network: dict[str, list[str]] = {}
    for nic in vm_nics(session, vm.id):
        by_network.setdefault(nic.network_id, []).append(tap_name(nic))
    for network_id, taps in sorted(by_network.items()):
        network = session.get(Network, network_id)
        if network is None or network.removed is not None:
            continue
        hosts = _carrying_hosts(session, network, None)
        if any(h.id == host.id for h in hosts):
            calls.append(HostCall(host_client(host), host.name, RemoveTaps(taps=sorted(taps)), best_effort=True))
            continue
        calls.append(HostCall(host_client(host), host.name, RemoveNetwork(network_id=network.id), best_effort=True))
        calls += [
            HostCall(host_client(h), h.name, EnsureNetwork(network=network_spec(session, network, h, hosts, None)),
                     best_effort=True)
            for h in hosts
        ]  # fmt: skip
    return calls
