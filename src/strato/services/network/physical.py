"""Physical networks of a zone: the isolation method (VXLAN by default, VLAN accepted) and the range of
VNIs / VLAN ids the zone's guest networks take theirs from."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select

from strato.db.base import new_id, utcnow
from strato.db.models import Network, PhysicalNetwork, Zone
from strato.errors import InvalidParameter, ResourceInUse
from strato.services.core.context import CallContext
from strato.services.core.listing import Page, run_page
from strato.services.core.lookup import get_live

ISOLATION_METHODS = ("VXLAN", "VLAN")
TRAFFIC_TYPES = ("Guest", "Management", "Public", "Storage")
MAX_VNI = 16777215
MAX_VLAN = 4094


def parse_ranges(text: str | None, method: str, param: str = "vlan") -> list[tuple[int, int]]:
    """CloudStack's "100-200,300" into [(100, 200), (300, 300)]; 431 naming `param` when it is not one."""
    if not text:
        return []
    top = MAX_VNI if method == "VXLAN" else MAX_VLAN
    ranges = []
    for part in text.split(","):
        lo, _, hi = part.strip().partition("-")
        if not lo.strip().isdigit() or (hi and not hi.strip().isdigit()):
            raise InvalidParameter(f"Parameter {param} must be numbers or ranges like 100-200, not {text!r}")
        a, b = int(lo), int(hi or lo)
        if not 1 <= a <= b <= top:
            raise InvalidParameter(f"Parameter {param}: range {part.strip()} is outside 1-{top} for {method}")
        ranges.append((a, b))
    return ranges


def _method(value: str | None) -> str:
    method = (value or "VXLAN").upper()
    if method not in ISOLATION_METHODS:
        raise InvalidParameter(f"Parameter isolationmethods must be VXLAN or VLAN, not {value}")
    return method


def create_physical_network(ctx: CallContext, args: dict[str, Any]) -> PhysicalNetwork:
    zone = get_live(ctx.session, Zone, args["zoneid"], "zone", "zoneid")
    method = _method(args.get("isolationmethods"))
    parse_ranges(args.get("vlan"), method)
    row = PhysicalNetwork(
        name=args["name"],
        zone_id=zone.id,
        isolation_method=method,
        vlan=args.get("vlan") or None,
        state="Disabled",
        tags=args.get("tags"),
        traffic_types=[],
    )
    ctx.session.add(row)
    ctx.session.flush()
    return row


def get_physical_network(ctx: CallContext, pn_id: str, param: str = "id") -> PhysicalNetwork:
    return get_live(ctx.session, PhysicalNetwork, pn_id, "physical network", param)


def update_physical_network(ctx: CallContext, args: dict[str, Any]) -> PhysicalNetwork:
    row = get_physical_network(ctx, args["id"])
    if args.get("vlan") is not None:
        parse_ranges(args["vlan"], row.isolation_method)
        row.vlan = args["vlan"] or None
    if args.get("state"):
        row.state = args["state"]
    if args.get("tags") is not None:
        row.tags = args["tags"] or None
    return row


def add_traffic_type(ctx: CallContext, args: dict[str, Any]) -> dict[str, Any]:
    row = get_physical_network(ctx, args["physicalnetworkid"], "physicalnetworkid")
    kind = args["traffictype"]
    if any(t["traffictype"] == kind for t in row.traffic_types):
        raise InvalidParameter(f"Physical network {row.name} already carries {kind} traffic (traffictype)")
    entry = {"id": new_id(), "traffictype": kind, "kvmnetworklabel": args.get("kvmnetworklabel")}
    row.traffic_types = [*row.traffic_types, entry]
    return {**entry, "physicalnetworkid": row.id}


def list_physical_networks(ctx: CallContext, args: dict[str, Any], page: Page) -> tuple[list[PhysicalNetwork], int]:
    q = select(PhysicalNetwork).where(PhysicalNetwork.removed.is_(None))
    if args.get("id"):
        q = q.where(PhysicalNetwork.id == args["id"])
    if args.get("zoneid"):
        q = q.where(PhysicalNetwork.zone_id == args["zoneid"])
    if args.get("name"):
        q = q.where(PhysicalNetwork.name == args["name"])
    return run_page(ctx.session, q, page, (PhysicalNetwork.name,), (PhysicalNetwork.created, PhysicalNetwork.id))


def delete_physical_network(ctx: CallContext, pn_id: str) -> None:
    row = get_physical_network(ctx, pn_id)
    used = ctx.session.scalar(
        select(Network.name).where(Network.physical_network_id == row.id, Network.removed.is_(None)).limit(1)
    )
    if used is not None:
        raise ResourceInUse(f"Physical network {row.name} still carries network {used}: delete it first")
    row.removed = utcnow()
