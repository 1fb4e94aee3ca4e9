"""createNetworkOffering / updateNetworkOffering / deleteNetworkOffering: offerings an admin makes, with
CloudStack's parameters, holding only the services that work here (a service this release does not
provide is refused, rather than listed and not there). A new offering is Disabled until
updateNetworkOffering state=Enabled, as in CloudStack; the default offerings are fixed."""

from __future__ import annotations

from typing import Any

from sqlalchemy import func, select

from strato.db.base import utcnow
from strato.db.models import Network, NetworkOfferingRow
from strato.errors import InvalidParameter
from strato.services.core.context import CallContext
from strato.services.network import offerings
from strato.services.network.offerings import ISOLATED_SERVICES, NEEDS_SOURCE_NAT, SHARED_SERVICES, NetworkOffering

STATES = ("Enabled", "Disabled")
AVAILABILITIES = ("Optional", "Required")


def _services(args: dict[str, Any], guest_type: str) -> list[str]:
    allowed = ISOLATED_SERVICES if guest_type == "Isolated" else SHARED_SERVICES
    wanted: list[str] = []
    for raw in args.get("supportedservices") or []:
        name = next((s for s in (*ISOLATED_SERVICES, *SHARED_SERVICES) if s.lower() == str(raw).strip().lower()), None)
        if name is None:
            raise InvalidParameter(
                f"Parameter supportedservices: {raw} is not a service Strato provides "
                f"({', '.join(dict.fromkeys((*ISOLATED_SERVICES, *SHARED_SERVICES)))})"
            )
        if name not in allowed:
            raise InvalidParameter(f"Parameter supportedservices: {name} is not offered on {guest_type} networks")
        if name not in wanted:
            wanted.append(name)
    if "Dhcp" not in wanted:
        raise InvalidParameter("Parameter supportedservices must include Dhcp: every network's router serves DHCP")
    lacking = [s for s in wanted if s in NEEDS_SOURCE_NAT and "SourceNat" not in wanted]
    if lacking:
        raise InvalidParameter(f"Parameter supportedservices: {', '.join(lacking)} need(s) SourceNat here")
    if guest_type == "Shared" and "SecurityGroup" not in wanted:
        raise InvalidParameter("Parameter supportedservices: a Shared offering needs SecurityGroup here")
    for entry in args.get("serviceproviderlist") or []:
        provider = str(entry.get("provider", "")) if isinstance(entry, dict) else ""
        if provider.lower() != "virtualrouter":
            raise InvalidParameter(f"Parameter serviceproviderlist: provider {provider!r} is not VirtualRouter")
    return wanted


def _choice(value: Any, choices: tuple[str, ...], param: str) -> str:
    found = next((c for c in choices if c.lower() == str(value).lower()), None)
    if found is None:
        raise InvalidParameter(f"Parameter {param} must be one of {', '.join(choices)}, not {value!r}")
    return found


def create(ctx: CallContext, args: dict[str, Any]) -> NetworkOffering:
    guest_type = _choice(args["guestiptype"], ("Isolated", "Shared"), "guestiptype")
    if str(args["traffictype"]).lower() != "guest":
        raise InvalidParameter(f"Parameter traffictype must be GUEST, not {args['traffictype']!r}")
    name = str(args["name"]).strip()
    if not name:
        raise InvalidParameter("Parameter name must not be empty")
    taken = any(o.name == name for o in offerings.all_offerings(ctx.session))
    if taken:
        raise InvalidParameter(f"Parameter name: a network offering named {name} exists already")
    services = _services(args, guest_type)
    row = NetworkOfferingRow(
        name=name,
        display_text=args.get("displaytext") or name,
        guest_ip_type=guest_type,
        services=services,
        specify_vlan=bool(args.get("specifyvlan", guest_type == "Shared")),
        specify_ip_ranges=bool(args.get("specifyipranges", guest_type == "Shared")),
        egress_default_allow=bool(args.get("egressdefaultpolicy", True)),
        conserve_mode=bool(args.get("conservemode", True)),
        availability=_choice(args.get("availability") or "Optional", AVAILABILITIES, "availability"),
        state="Disabled",
    )
    if guest_type == "Shared" and not (row.specify_vlan and row.specify_ip_ranges):
        raise InvalidParameter("Parameters specifyvlan and specifyipranges must be true for a Shared offering")
    if "Firewall" not in services and not row.egress_default_allow:
        raise InvalidParameter("Parameter egressdefaultpolicy=false needs the Firewall service (egress rules)")
    ctx.session.add(row)
    ctx.session.flush()
    return offerings.from_row(row)


def _own_row(ctx: CallContext, offering_id: str) -> NetworkOfferingRow:
    if offering_id in offerings.BY_ID:
        raise InvalidParameter(f"Network offering {offerings.BY_ID[offering_id].name} (id) is a default one: fixed")
    row = ctx.session.get(NetworkOfferingRow, offering_id)
    if row is None or row.removed is not None:
        raise InvalidParameter(f"Unable to find network offering with id={offering_id}")
    return row


def update(ctx: CallContext, args: dict[str, Any]) -> NetworkOffering:
    row = _own_row(ctx, args["id"])
    if args.get("name"):
        name = str(args["name"]).strip()
        if any(o.name == name and o.id != row.id for o in offerings.all_offerings(ctx.session)):
            raise InvalidParameter(f"Parameter name: a network offering named {name} exists already")
        row.name = name
    if args.get("displaytext"):
        row.display_text = args["displaytext"]
    if args.get("state"):
        row.state = _choice(args["state"], STATES, "state")
    if args.get("availability"):
        row.availability = _choice(args["availability"], AVAILABILITIES, "availability")
    ctx.session.flush()
    return offerings.from_row(row)


def delete(ctx: CallContext, offering_id: str) -> None:
    row = _own_row(ctx, offering_id)
    used = ctx.session.scalar(
        select(func.count()).where(Network.network_offering_id == row.id, Network.removed.is_(None))
    )
    if used:
        raise InvalidParameter(f"Network offering {row.name} (id) is used by {used} network(s): delete them first")
    row.removed = utcnow()
