"""Guest networks: their address range, VNI and owner; bad input refused before anything is made."""

from __future__ import annotations

import ipaddress
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from strato.db.base import utcnow
from strato.db.models import Account, Network, Nic, PhysicalNetwork, VirtualMachine, Zone
from strato.errors import InvalidParameter, NotFound, PermissionDenied, ResourceInUse
from strato.services.core import limits
from strato.services.core.access import get_owned, owner_scope
from strato.services.core.context import CallContext
from strato.services.core.listing import Page, run_page
from strato.services.core.lookup import get_live
from strato.services.identity.identity import find_account
from strato.services.network import dns, egress, offerings
from strato.services.network.offerings import NetworkOffering
from strato.services.network.physical import parse_ranges
from strato.services.network.publicips import public_overlap

DEFAULT_SUBNETS = ipaddress.IPv4Network("10.1.0.0/16")
"""Where a network without gateway/netmask gets its /24: the first one no network of the zone overlaps."""


def _ip(value: str, param: str) -> ipaddress.IPv4Address:
    try:
        return ipaddress.IPv4Address(value)
    except ValueError:
        raise InvalidParameter(f"Parameter {param} must be an IPv4 address, not {value!r}") from None


def parse_cidr(gateway: str, netmask: str) -> ipaddress.IPv4Network:
    """The network of gateway/netmask; 431 naming netmask or gateway when either is wrong."""
    gw = _ip(gateway, "gateway")
    try:
        net = ipaddress.IPv4Network(f"{gw}/{netmask}", strict=False)
    except ValueError:
        raise InvalidParameter(f"Parameter netmask {netmask!r} is not a valid netmask") from None
    if net.prefixlen > 30 or net.prefixlen < 8:
        raise InvalidParameter(f"Parameter netmask {netmask}: the network must be between /8 and /30")
    if gw in (net.network_address, net.broadcast_address):
        raise InvalidParameter(f"Parameter gateway {gateway} is the network's or its broadcast address")
    return net


def zone_networks(ctx: CallContext, zone_id: str) -> list[Network]:
    return list(ctx.session.scalars(select(Network).where(Network.zone_id == zone_id, Network.removed.is_(None))))


def _default_cidr(existing: list[ipaddress.IPv4Network]) -> ipaddress.IPv4Network:
    for subnet in DEFAULT_SUBNETS.subnets(new_prefix=24):
        if not any(subnet.overlaps(n) for n in existing):
            return subnet
    raise InvalidParameter("No free 10.1.x.0/24 range is left in this zone: give gateway and netmask")


def _physical_network(ctx: CallContext, zone: Zone, pn_id: str | None) -> PhysicalNetwork:
    if pn_id:
        pn = get_live(ctx.session, PhysicalNetwork, pn_id, "physical network", "physicalnetworkid")
        if pn.zone_id != zone.id:
            raise InvalidParameter(f"Physical network {pn.name} (physicalnetworkid) is not in zone {zone.name}")
        return pn
    rows = list(
        ctx.session.scalars(
            select(PhysicalNetwork)
            .where(PhysicalNetwork.zone_id == zone.id, PhysicalNetwork.removed.is_(None))
            .order_by(PhysicalNetwork.created)
        )
    )
    guest = [p for p in rows if any(t["traffictype"] == "Guest" for t in p.traffic_types)]
    if not (guest or rows):
        raise InvalidParameter(f"Zone {zone.name} has no physical network (createPhysicalNetwork first)")
    return (guest or rows)[0]


def _vni(ctx: CallContext, pn: PhysicalNetwork, value: str | None) -> int:
    """The network's VNI: the one asked for (a number in the physical network's range, not in use) or
    the first free one of the range."""
    ranges = parse_ranges(pn.vlan, pn.isolation_method, "vlan")
    used = set(
        ctx.session.scalars(select(Network.vlan).where(Network.physical_network_id == pn.id, Network.removed.is_(None)))
    )
    if value is not None and value != "":
        text = str(value).removeprefix("vxlan://").removeprefix("vlan://")
        if not text.isdigit():
            raise InvalidParameter(f"Parameter vlan must be a number (the VNI), not {value!r}")
        vni = int(text)
        if not any(a <= vni <= b for a, b in ranges):
            raise InvalidParameter(
                f"Parameter vlan {vni} is outside the range of physical network {pn.name} ({pn.vlan or 'none'})"
            )
        if vni in used:
            raise InvalidParameter(f"Parameter vlan {vni} is already used by another network of {pn.name}")
        return vni
    for a, b in ranges:
        for vni in range(a, b + 1):
            if vni not in used:
                return vni
    raise InvalidParameter(
        f"Physical network {pn.name} has no free vlan/VNI (its range: {pn.vlan or 'none'}; updatePhysicalNetwork vlan=)"
    )


def _check_offering_fits(ctx: CallContext, offering: NetworkOffering, zone: Zone, args: dict[str, Any]) -> None:
    """A security-group offering only in a zone with security groups, and such a zone takes only
    those; a shared network is the root admin's, with its range and VLAN given (specifyvlan,
    specifyipranges), as CloudStack requires."""
    with_sg = "SecurityGroup" in offering.services
    if with_sg and not zone.security_group_enabled:
        raise InvalidParameter(
            f"Network offering {offering.name} (networkofferingid) needs a zone with security groups enabled"
        )
    if zone.security_group_enabled and not with_sg:
        raise InvalidParameter(
            f"Zone {zone.name} has security groups: only networks of a SecurityGroup offering can be made there "
            "(networkofferingid)"
        )
    if offering.guest_ip_type != "Shared":
        return
    if not ctx.is_root_admin:
        raise PermissionDenied("Only the root admin may create shared networks")
    for param in ("gateway", "netmask", "startip", "vlan"):
        if not args.get(param):
            raise InvalidParameter(f"Parameter {param} is required for a shared network ({offering.name})")


def create_network(ctx: CallContext, args: dict[str, Any]) -> Network:
    """createNetwork: checks everything, then makes the row (hosts get it when a VM on it starts)."""
    offering = offerings.find(ctx.session, args["networkofferingid"])
    if offering is None:
        raise InvalidParameter(f"Unable to find network offering with networkofferingid={args['networkofferingid']}")
    if offering.state != "Enabled":
        raise InvalidParameter(
            f"Parameter networkofferingid: network offering {offering.name} is {offering.state}, not Enabled"
        )
    zone = get_live(ctx.session, Zone, args["zoneid"], "zone", "zoneid")
    _check_offering_fits(ctx, offering, zone, args)
    pn = _physical_network(ctx, zone, args.get("physicalnetworkid"))
    owner = find_account(ctx, args["account"], args.get("domainid")) if args.get("account") else ctx.account
    if offering.guest_ip_type == "Isolated":
        limits.check(ctx.session, owner, networks=1)
    others = [ipaddress.IPv4Network(n.cidr) for n in zone_networks(ctx, zone.id)]
    gateway, netmask = args.get("gateway"), args.get("netmask")
    if bool(gateway) != bool(netmask):
        raise InvalidParameter("Parameters gateway and netmask must be given together")
    if gateway and netmask:
        net = parse_cidr(gateway, netmask)
    else:
        net = _default_cidr(others)
        gateway = str(net.network_address + 1)
    overlap = next((o for o in others if o.overlaps(net)), None)
    if overlap is not None:
        raise InvalidParameter(f"Parameters gateway/netmask: {net} overlaps {overlap}, a network of zone {zone.name}")
    public_overlap(ctx.session, zone.id, net)
    hosts = list(net.hosts())
    start = _ip(args["startip"], "startip") if args.get("startip") else hosts[0]
    end = _ip(args["endip"], "endip") if args.get("endip") else hosts[-1]
    for value, param in ((start, "startip"), (end, "endip")):
        if value not in net or value in (net.network_address, net.broadcast_address):
            raise InvalidParameter(f"Parameter {param} {value} is outside the network {net}")
    if start > end:
        raise InvalidParameter(f"Parameter startip {start} is after endip {end}")
    if args.get("vlan") and not ctx.is_root_admin:
        raise PermissionDenied("Only the root admin may choose vlan: the VNI is taken from the physical network")
    vni = _vni(ctx, pn, args.get("vlan"))
    row = Network(
        name=args["name"],
        display_text=args.get("displaytext") or args["name"],
        zone_id=zone.id,
        physical_network_id=pn.id,
        network_offering_id=offering.id,
        account_id=owner.id,
        domain_id=owner.domain_id,
        guest_type=offering.guest_ip_type,
        state="Allocated",
        gateway=str(gateway),
        cidr=str(net),
        start_ip=str(start),
        end_ip=str(end),
        vlan=vni,
        network_domain=(
            dns.check_domain(args["networkdomain"])
            if args.get("networkdomain")
            else dns.default_domain(ctx.session, owner)
        ),
    )
    ctx.session.add(row)
    ctx.session.flush()
    return row


def get_network(ctx: CallContext, network_id: str, param: str = "id") -> Network:
    row: Network = get_owned(ctx, Network, network_id, "network", param)
    return row


def usable_network(ctx: CallContext, network_id: str, param: str) -> Network:
    """A network the caller may put a NIC on: its own, or a shared one (the zone's, for every account)."""
    row = ctx.session.get(Network, network_id)
    if row is not None and row.removed is None and row.guest_type == "Shared":
        return row
    return get_network(ctx, network_id, param)


def list_networks(ctx: CallContext, args: dict[str, Any], page: Page) -> tuple[list[Network], int]:
    q = select(Network).where(Network.removed.is_(None))
    if not ctx.is_admin or not args.get("listall") or args.get("account") or args.get("domainid"):
        owned = owner_scope(ctx, args).condition(Network.account_id)
        q = q.where(owned | (Network.guest_type == "Shared") if not args.get("account") else owned)
    if args.get("id"):
        q = q.where(Network.id == args["id"])
    if args.get("zoneid"):
        q = q.where(Network.zone_id == args["zoneid"])
    if args.get("physicalnetworkid"):
        q = q.where(Network.physical_network_id == args["physicalnetworkid"])
    if args.get("type"):
        q = q.where(Network.guest_type == args["type"])
    return run_page(ctx.session, q, page, (Network.name,), (Network.created, Network.id))


def update_network(ctx: CallContext, args: dict[str, Any]) -> tuple[Network, bool]:
    """Returns the network and whether its router must hear of it (the DNS domain changed)."""
    row = get_network(ctx, args["id"])
    if args.get("name"):
        row.name = args["name"]
    if args.get("displaytext"):
        row.display_text = args["displaytext"]
    resend = False
    if args.get("networkdomain"):
        domain = dns.check_domain(args["networkdomain"])
        resend = domain != dns.network_domain(ctx.session, row) and row.router_host_id is not None
        row.network_domain = domain
    return row, resend


def users_of(session: Session, network: Network) -> list[VirtualMachine]:
    """VMs (not expunged) with a NIC on the network."""
    return list(
        session.scalars(
            select(VirtualMachine)
            .join(Nic, Nic.vm_id == VirtualMachine.id)
            .where(Nic.network_id == network.id, VirtualMachine.removed.is_(None))
        )
    )


def check_deletable(session: Session, network: Network) -> None:
    vms = users_of(session, network)
    if vms:
        names = ", ".join(sorted(v.name for v in vms)[:5])
        raise ResourceInUse(f"Network {network.name} is used by {len(vms)} VM(s) ({names}): remove their NICs first")


def mark_deleted(session: Session, network: Network) -> None:
    from strato.services.network.publicips import network_addresses, release

    for ip in network_addresses(session, network.id):
        release(session, ip)  # the router went with the network
    for nic in session.scalars(select(Nic).where(Nic.network_id == network.id)):
        session.delete(nic)  # NICs of expunged VMs
    egress.forget_network_rules(session, network.id)
    network.removed, network.state = utcnow(), "Destroy"


def account_name(ctx: CallContext, account_id: str) -> str:
    acct = ctx.session.get(Account, account_id)
    if acct is None:
        raise NotFound(f"Unable to find account {account_id}")
    return acct.name


def requested_nics(ctx: CallContext, args: dict[str, Any], zone_id: str) -> list[tuple[Network, str | None]]:
    """deployVirtualMachine's networkids (+ ipaddress for the first) or iptonetworklist: each network
    in the VM's zone and usable by the caller; 431 naming the parameter otherwise."""
    pairs: list[tuple[str, str | None, str]] = []
    for entry in args.get("iptonetworklist") or []:
        if not entry.get("networkid"):
            raise InvalidParameter("Parameter iptonetworklist: each entry needs a networkid")
        pairs.append((entry["networkid"], entry.get("ip") or None, "iptonetworklist"))
    if not pairs:
        ids = args.get("networkids") or []
        pairs = [(nid, args.get("ipaddress") if i == 0 else None, "networkids") for i, nid in enumerate(ids)]
    elif args.get("networkids"):
        raise InvalidParameter("Parameters networkids and iptonetworklist cannot both be given")
    if args.get("ipaddress") and not pairs:
        raise InvalidParameter("Parameter ipaddress needs networkids")
    out: list[tuple[Network, str | None]] = []
    for network_id, ip, param in pairs:
        try:
            network = usable_network(ctx, network_id, param)
        except NotFound:
            raise InvalidParameter(f"Unable to find network with {param}={network_id}") from None
        if network.zone_id != zone_id:
            raise InvalidParameter(f"Network {network.name} ({param}) is not in the VM's zone")
        if any(n.id == network.id for n, _ in out):
            raise InvalidParameter(f"Network {network.name} is given twice ({param})")
        out.append((network, ip))
    return out


# --- NICs of an existing VM: rules here; a stopped VM's change is made in the request, a running VM's
# is hot-plugged by a job (nic_plug.py) that runs the same checks again under its locks. ---

NIC_CHANGE_STATES = ("Stopped", "Running")


def check_new_nic(session: Session, vm: VirtualMachine, network: Network) -> None:
    """A NIC may be added on this network: in the VM's zone, the VM's first on it, not being deleted."""
    from strato.services.network.nics import vm_nics

    if network.zone_id != vm.zone_id:
        raise InvalidParameter(f"Network {network.name} (networkid) is not in the VM's zone")
    if any(n.network_id == network.id for n in vm_nics(session, vm.id)):
        raise InvalidParameter(f"VM {vm.name} already has a NIC on network {network.name} (networkid)")
    if network.removed is not None or network.state == "Destroy":
        raise InvalidParameter(f"Network {network.name} (networkid) is being deleted: no NIC can be added to it")


def add_nic_to_vm(ctx: CallContext, vm: VirtualMachine, network: Network, ip: str | None) -> Nic:
    """A stopped VM's new NIC: a row; it is plugged at the next start."""
    from strato.services.core.states import require_vm_state
    from strato.services.network.nics import add_nic, vm_nics

    require_vm_state(vm, "Stopped", action="add a NIC to")
    check_new_nic(ctx.session, vm, network)
    return add_nic(ctx.session, vm, network, ip, default=not vm_nics(ctx.session, vm.id))


def vm_nic(session: Session, vm: VirtualMachine, nic_id: str) -> Nic:
    nic = session.get(Nic, nic_id)
    if nic is None or nic.vm_id != vm.id:
        raise InvalidParameter(f"Unable to find NIC with nicid={nic_id} on VM {vm.name}")
    return nic


def check_removable(session: Session, vm: VirtualMachine, nic_id: str) -> Nic:
    """The NIC is the VM's and not its default while it has others."""
    nic = vm_nic(session, vm, nic_id)
    others = [n for n in session.scalars(select(Nic).where(Nic.vm_id == vm.id)) if n.id != nic.id]
    if nic.is_default and others:
        raise InvalidParameter(f"NIC {nic_id} (nicid) is the default: make another NIC the default first")
    return nic


def remove_nic_from_vm(ctx: CallContext, vm: VirtualMachine, nic_id: str) -> None:
    from strato.services.core.states import require_vm_state

    require_vm_state(vm, "Stopped", action="remove a NIC from")
    ctx.session.delete(check_removable(ctx.session, vm, nic_id))


def set_default_nic(ctx: CallContext, vm: VirtualMachine, nic_id: str) -> None:
    """Stopped or Running, as CloudStack: only the database and the responses change; a running guest
    picks its new default route up at its next DHCP lease."""
    from strato.services.core.states import require_vm_state

    require_vm_state(vm, *NIC_CHANGE_STATES, action="change the default NIC of")
    chosen = vm_nic(ctx.session, vm, nic_id)
    if chosen.is_default:
        raise InvalidParameter(f"NIC {nic_id} (nicid) is already the default NIC of VM {vm.name}")
    for nic in ctx.session.scalars(select(Nic).where(Nic.vm_id == vm.id)):
        nic.is_default = nic.id == chosen.id
