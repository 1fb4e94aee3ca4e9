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

from strato.db.models import Host, Job, Network, Nic, SecurityGroupRule, VirtualMachine, VmSecurityGroup, Zone
from strato.db.models.jobs import JOB_ACTIVE
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
from strato.services.network import offerings
from strato.services.network.nics import ON_HOST_STATES, HostCall, tap_name

log = logging.getLogger("strato.firewall")


def filtered_network_ids(session: Session) -> set[str]:
    sg_offerings = offerings.ids_with_service(session, "SecurityGroup")
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
    start there), in a fixed number of queries whatever the number of NICs, groups and rules."""
    networks = filtered_network_ids(session)
    if not networks:
        return FirewallSpec()
    on_host = (VirtualMachine.host_id == host_id) & VirtualMachine.state.in_(ON_HOST_STATES)
    arriving = _arriving(session, host_id)
    if arriving:
        on_host = on_host | (VirtualMachine.id.in_(arriving) & (VirtualMachine.state == "Migrating"))
    if extra_vm_id is not None:
        on_host = on_host | (VirtualMachine.id == extra_vm_id)
    here = list(
        session.execute(
            select(Nic, VirtualMachine)
            .join(VirtualMachine, VirtualMachine.id == Nic.vm_id)
            .where(Nic.network_id.in_(networks), VirtualMachine.removed.is_(None), on_host)
            .order_by(Nic.id)
        ).tuples()
    )
    if not here:
        return FirewallSpec()
    groups_of: dict[str, list[str]] = {}
    for vm_id, group_id in session.execute(
        select(VmSecurityGroup.vm_id, VmSecurityGroup.group_id).where(
            VmSecurityGroup.vm_id.in_({vm.id for _, vm in here})
        )
    ).tuples():
        groups_of.setdefault(vm_id, []).append(group_id)
    rules_of: dict[str, list[SecurityGroupRule]] = {}
    for rule in session.scalars(
        select(SecurityGroupRule)
        .where(SecurityGroupRule.group_id.in_({g for gs in groups_of.values() for g in gs}))
        .order_by(SecurityGroupRule.created, SecurityGroupRule.id)
    ):
        rules_of.setdefault(rule.group_id, []).append(rule)
    rows = session.execute(select(Network.id, Network.gateway).where(Network.id.in_(networks))).tuples()
    gateways = {network_id: gateway for network_id, gateway in rows}
    nics: list[NicFirewall] = []
    peer_groups: set[str] = set()
    for nic, vm in here:
        mine = (r for g in groups_of.get(vm.id, []) for r in rules_of.get(g, []))
        rules = sorted(mine, key=lambda r: r.id)  # any order filters alike; the digest needs a fixed one
        peer_groups.update(r.peer_group_id for r in rules if r.peer_group_id)
        nics.append(
            NicFirewall(
                nic=nic.id,
                network_id=nic.network_id,
                tap=tap_name(nic),
                mac=nic.mac_address,
                ip=nic.ip_address,
                router=gateways.get(nic.network_id),
                ingress=[_rule(r) for r in rules if r.direction == INGRESS],
                egress=[_rule(r) for r in rules if r.direction != INGRESS],
            )
        )
    return FirewallSpec(nics=nics, groups=member_addresses(session, peer_groups, networks))


def _arriving(session: Session, host_id: str) -> set[str]:
    """VMs an active job moves to this host (a migration's params name `vm_id` and the target
    `host_id`): while they migrate, the target keeps their filter (it got it before the switch-over),
    and the source too, until the database says they moved."""
    found = set()
    for params in session.scalars(select(Job.params).where(Job.status.in_(JOB_ACTIVE))):
        if isinstance(params, dict) and params.get("host_id") == host_id and isinstance(params.get("vm_id"), str):
            found.add(params["vm_id"])
    return found


def member_addresses(session: Session, group_ids: set[str], networks: set[str]) -> dict[str, list[str]]:
    """Each group's addresses: those of its VMs (not expunged) on security-group networks."""
    found: dict[str, set[str]] = {g: set() for g in group_ids}
    if group_ids:
        for group_id, ip in session.execute(
            select(VmSecurityGroup.group_id, Nic.ip_address)
            .join(Nic, Nic.vm_id == VmSecurityGroup.vm_id)
            .join(VirtualMachine, VirtualMachine.id == Nic.vm_id)
            .where(
                VmSecurityGroup.group_id.in_(group_ids),
                VirtualMachine.removed.is_(None),
                Nic.network_id.in_(networks),
            )
        ).tuples():
            found[group_id].add(ip)
    return {g: sorted(found[g]) for g in sorted(found)}


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
