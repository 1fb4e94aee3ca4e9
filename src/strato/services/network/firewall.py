"""The security-group filter each host must apply: the server computes it from the database and pushes
it whole (SyncFirewall) to the hosts concerned; the host monitor re-sends it whenever a host reports
another digest, which also clears the chains of VMs that stopped, moved away or were expunged, and
restores a host whose tables were lost.

Only NICs on networks whose offering provides SecurityGroup are filtered; a NIC's rules are the
union of its VM's groups' rules."""

from __future__ import annotations

import logging

from sqlalchemy import select
from sqlalchemy.orm import Session

from strato.db.models import Host, Network, Nic, SecurityGroupRule, VirtualMachine, VmSecurityGroup, Zone
from strato.db.models.secgroups import INGRESS
from strato.engine.monitor import FollowUp, on_state_report
from strato.protocol.messages import (
    FirewallRule,
    FirewallSpec,
    NicFirewall,
    StateReport,
    SyncFirewall,
    firewall_digest,
)
from strato.services.core.agents import host_client
from strato.services.network.nics import ON_HOST_STATES, HostCall, tap_name
from strato.services.network.offerings import BY_ID

log = logging.getLogger("strato.firewall")


def filtered_network_ids(session: Session) -> set[str]:
    sg_offerings = [o.id for o in BY_ID.values() if "SecurityGroup" in o.services]
    return set(
        session.scalars(
            select(Network.id).where(Network.network_offering_id.in_(sg_offerings), Network.removed.is_(None))
        )
    )


def _rule(row: SecurityGroupRule) -> FirewallRule:
    return FirewallRule(
        protocol=row.protocol,
        start_port=row.start_port,
        end_port=row.end_port,
        icmp_type=row.icmp_type,
        icmp_code=row.icmp_code,
        cidr=row.cidr,
        group=row.peer_group_id,
    )


def host_spec(session: Session, host_id: str, extra_vm_id: str | None = None) -> FirewallSpec:
    """The filter of every security-group NIC of the VMs on the host (and of `extra_vm_id`, about to
    start there)."""
    networks = filtered_network_ids(session)
    if not networks:
        return FirewallSpec()
    rows = session.execute(
        select(Nic, VirtualMachine)
        .join(VirtualMachine, VirtualMachine.id == Nic.vm_id)
        .where(Nic.network_id.in_(networks), VirtualMachine.removed.is_(None))
    ).tuples()
    here = [
        (nic, vm) for nic, vm in rows if vm.id == extra_vm_id or (vm.host_id == host_id and vm.state in ON_HOST_STATES)
    ]
    nics: list[NicFirewall] = []
    peer_groups: set[str] = set()
    for nic, vm in sorted(here, key=lambda p: p[0].id):
        group_ids = list(session.scalars(select(VmSecurityGroup.group_id).where(VmSecurityGroup.vm_id == vm.id)))
        rules = list(
            session.scalars(
                select(SecurityGroupRule)
                .where(SecurityGroupRule.group_id.in_(group_ids))
                .order_by(SecurityGroupRule.created, SecurityGroupRule.id)
            )
        )
        peer_groups.update(r.peer_group_id for r in rules if r.peer_group_id)
        network = session.get(Network, nic.network_id)
        nics.append(
            NicFirewall(
                nic=nic.id,
                network_id=nic.network_id,
                tap=tap_name(nic),
                mac=nic.mac_address,
                ip=nic.ip_address,
                router=network.gateway if network is not None else None,
                ingress=[_rule(r) for r in rules if r.direction == INGRESS],
                egress=[_rule(r) for r in rules if r.direction != INGRESS],
            )
        )
    groups = {g: member_addresses(session, g, networks) for g in sorted(peer_groups)}
    return FirewallSpec(nics=nics, groups=groups)


def member_addresses(session: Session, group_id: str, networks: set[str]) -> list[str]:
    """The addresses of the group's VMs (not expunged) on security-group networks."""
    return sorted(
        set(
            session.scalars(
                select(Nic.ip_address)
                .join(VmSecurityGroup, VmSecurityGroup.vm_id == Nic.vm_id)
                .join(VirtualMachine, VirtualMachine.id == Nic.vm_id)
                .where(
                    VmSecurityGroup.group_id == group_id,
                    VirtualMachine.removed.is_(None),
                    Nic.network_id.in_(networks),
                )
            )
        )
    )


def _sg_hosts(session: Session, zone_id: str | None = None) -> list[Host]:
    q = (
        select(Host)
        .join(Zone, Zone.id == Host.zone_id)
        .where(Host.removed.is_(None), Zone.security_group_enabled.is_(True))
        .order_by(Host.name)
    )
    if zone_id is not None:
        q = q.where(Zone.id == zone_id)
    return list(session.scalars(q))


def sync_calls(session: Session, zone_id: str | None = None, extra: tuple[str, str] | None = None) -> list[HostCall]:
    """SyncFirewall for every host of the security-group zones (or of one zone); `extra` is a (vm id,
    host id) pair: that VM counts as on that host (it is about to start there)."""
    calls = []
    for host in _sg_hosts(session, zone_id):
        vm_id = extra[0] if extra is not None and extra[1] == host.id else None
        spec = host_spec(session, host.id, vm_id)
        calls.append(HostCall(host_client(host), host.name, SyncFirewall(firewall=spec)))
    return calls


def push(calls: list[HostCall]) -> None:
    """Rule changes reach every host that answers now; one that does not is brought up to date by the
    monitor when it reports again (its digest differs)."""
    for call in calls:
        if not call.run_if_reachable():
            log.info("host %s unreachable: its security-group filter follows at its next report", call.host_name)


@on_state_report
def reconcile_firewall(session: Session, host: Host, report: StateReport) -> list[FollowUp] | None:
    if report.firewall is None:
        return None
    zone = session.get(Zone, host.zone_id) if host.zone_id else None
    spec = host_spec(session, host.id) if zone is not None and zone.security_group_enabled else FirewallSpec()
    if firewall_digest(spec) == report.firewall:
        return None
    log.info("host %s: security-group filter differs from the wanted one (%d NICs): re-sent", host.name, len(spec.nics))
    return [HostCall(host_client(host), host.name, SyncFirewall(firewall=spec)).run]
