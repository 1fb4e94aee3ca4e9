"""Network offerings an admin makes (createNetworkOffering, updateNetworkOffering, deleteNetworkOffering);
listNetworkOfferings is with the other network commands."""

from __future__ import annotations

from typing import Any

from strato.api import views_network as v
from strato.api.params import Param, T
from strato.api.registry import ADMIN, Kind, api
from strato.services.core.context import CallContext
from strato.services.network import offering_admin


@api(
    "createNetworkOffering",
    "Creates a network offering (Disabled until updateNetworkOffering state=Enabled)",
    response="networkoffering",
    access=ADMIN,
    event="NETWORK.OFFERING.CREATE",
    params=(
        Param("name", T.STRING, "The name of the offering", required=True, max_length=255),
        Param("displaytext", T.STRING, "The display text of the offering", max_length=4096),
        Param("guestiptype", T.STRING, "Isolated or Shared", required=True, max_length=16),
        Param("traffictype", T.STRING, "GUEST (the only kind)", required=True, max_length=16),
        Param(
            "supportedservices",
            T.LIST,
            "Services: Dhcp, SourceNat, PortForwarding, Firewall, StaticNat, SecurityGroup (those Strato provides)",
        ),
        Param("serviceproviderlist", T.MAP, "service/provider pairs; the provider is VirtualRouter"),
        Param("specifyvlan", T.BOOLEAN, "Networks of the offering name their VLAN/VNI"),
        Param("specifyipranges", T.BOOLEAN, "Networks of the offering name their IP range"),
        Param(
            "egressdefaultpolicy",
            T.BOOLEAN,
            "true (default): guests may send out and egress rules block; false: only what egress rules allow goes out",
        ),
        Param("conservemode", T.BOOLEAN, "Accepted (recorded and shown)"),
        Param("availability", T.STRING, "Optional or Required", max_length=16),
    ),
)
def create_network_offering(ctx: CallContext, args: dict[str, Any]) -> dict[str, Any]:
    return v.network_offering(offering_admin.create(ctx, args))


@api(
    "updateNetworkOffering",
    "Updates a network offering made by an admin: name, display text, state, availability",
    response="networkoffering",
    access=ADMIN,
    event="NETWORK.OFFERING.EDIT",
    params=(
        Param("id", T.UUID, "The ID of the offering", required=True),
        Param("name", T.STRING, "The new name", max_length=255),
        Param("displaytext", T.STRING, "The new display text", max_length=4096),
        Param("state", T.STRING, "Enabled or Disabled", max_length=16),
        Param("availability", T.STRING, "Optional or Required", max_length=16),
    ),
)
def update_network_offering(ctx: CallContext, args: dict[str, Any]) -> dict[str, Any]:
    return v.network_offering(offering_admin.update(ctx, args))


@api(
    "deleteNetworkOffering",
    "Deletes a network offering made by an admin (refused while networks use it)",
    kind=Kind.SUCCESS,
    access=ADMIN,
    event="NETWORK.OFFERING.DELETE",
    params=(Param("id", T.UUID, "The ID of the offering", required=True),),
)
def delete_network_offering(ctx: CallContext, args: dict[str, Any]) -> None:
    offering_admin.delete(ctx, args["id"])
