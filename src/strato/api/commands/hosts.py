"""Hosts (through their agents) and capacity."""

from __future__ import annotations

from typing import Any

from strato.api import views
from strato.api.commands.motion import BANDWIDTH
from strato.api.envelope import AsyncStarted, Listing
from strato.api.pageload import render_page
from strato.api.params import Param, T
from strato.api.registry import ADMIN, Kind, api
from strato.services.core.context import CallContext
from strato.services.core.listing import Page
from strato.services.infra import capacity, hosts
from strato.services.motion import host_maintenance as maintenance


@api(
    "addHost",
    "Adds a new host: the agent at url is checked and its local pool registered",
    kind=Kind.LIST,
    response="host",
    access=ADMIN,
    event="HOST.ADD",
    params=(
        Param("zoneid", T.UUID, "The zone ID for the host", required=True),
        Param("podid", T.UUID, "The pod ID for the host", required=True),
        Param("clusterid", T.UUID, "The cluster ID for the host"),
        Param("url", T.STRING, "The agent's URL, http://host:port", required=True, max_length=1024),
        Param("username", T.STRING, "Ignored (the agent authenticates the token)", required=True, max_length=255),
        Param("password", T.STRING, "The agent's bearer token", required=True, max_length=1024),
        Param(
            "hypervisor",
            T.STRING,
            "Hypervisor type of the host: KVM or Simulator",
            required=True,
            max_length=32,
        ),
        Param("hosttags", T.STRING, "List of tags for this host", max_length=1024),
        Param("allocationstate", T.STRING, "Allocation state of the host", choices=("Enabled", "Disabled")),
    ),
)
def add_host(ctx: CallContext, args: dict[str, Any]) -> Listing:
    host = hosts.add_host(ctx, args)
    if args.get("allocationstate") == "Disabled":
        host.resource_state = "Disabled"
    return Listing([views.host(ctx.session, host)], 1)


@api(
    "listHosts",
    "Lists hosts",
    kind=Kind.LIST,
    response="host",
    access=ADMIN,
    params=(
        Param("id", T.UUID, "The id of the host"),
        Param("name", T.STRING, "The name of the host", max_length=255),
        Param("zoneid", T.UUID, "The zone ID of the host"),
        Param("podid", T.UUID, "The pod ID of the host"),
        Param("clusterid", T.UUID, "Lists hosts existing in this cluster"),
        Param("type", T.STRING, "The host type (Routing for hypervisors)", max_length=32),
        Param("state", T.STRING, "The connection state of the host (Up, Disconnected, Alert)", max_length=32),
        Param("resourcestate", T.STRING, "List hosts by resource state", choices=hosts.RESOURCE_STATES),
        Param("hypervisor", T.STRING, "Hypervisor type of the host", max_length=32),
    ),
)
def list_hosts(ctx: CallContext, args: dict[str, Any]) -> Listing:
    rows, total = hosts.list_hosts(ctx, args, Page.from_args(args))
    return Listing(render_page(ctx.session, rows, lambda h: views.host(ctx.session, h)), total)


@api(
    "updateHost",
    "Updates a host",
    response="host",
    access=ADMIN,
    event="HOST.UPDATE",
    params=(
        Param("id", T.UUID, "The ID of the host to update", required=True),
        Param("hosttags", T.STRING, "New host tags (comma separated)", max_length=1024),
        Param(
            "allocationstate",
            T.STRING,
            "Enable or Disable the host for new VMs",
            choices=("Enable", "Disable"),
        ),
        Param("name", T.STRING, "New name of the host", max_length=255),
    ),
)
def update_host(ctx: CallContext, args: dict[str, Any]) -> dict[str, Any]:
    return views.host(ctx.session, hosts.update_host(ctx, args))


@api(
    "deleteHost",
    "Deletes a host",
    kind=Kind.SUCCESS,
    access=ADMIN,
    event="HOST.DELETE",
    params=(
        Param("id", T.UUID, "The host ID", required=True),
        Param("forced", T.BOOLEAN, "Delete the host even if it is up and not in maintenance"),
    ),
)
def delete_host(ctx: CallContext, args: dict[str, Any]) -> None:
    hosts.delete_host(ctx, args["id"], bool(args.get("forced")))


@api(
    "prepareHostForMaintenance",
    "Prepares a host for maintenance",
    kind=Kind.ASYNC,
    access=ADMIN,
    event="MAINT.PREPARE",
    params=(Param("id", T.UUID, "The host ID", required=True), BANDWIDTH),
)
def prepare_maintenance(ctx: CallContext, args: dict[str, Any]) -> AsyncStarted:
    return AsyncStarted(maintenance.prepare_maintenance(ctx, args["id"], args.get("bandwidth")), args["id"])


@api(
    "cancelHostMaintenance",
    "Cancels host maintenance",
    kind=Kind.ASYNC,
    access=ADMIN,
    event="MAINT.CANCEL",
    params=(Param("id", T.UUID, "The host ID", required=True),),
)
def cancel_maintenance(ctx: CallContext, args: dict[str, Any]) -> AsyncStarted:
    return AsyncStarted(maintenance.cancel_maintenance(ctx, args["id"]), args["id"])


@api(
    "listCapacity",
    "Lists all the system wide capacities",
    kind=Kind.LIST,
    response="capacity",
    access=ADMIN,
    params=(
        Param("zoneid", T.UUID, "Lists capacity by the zone ID"),
        Param("podid", T.UUID, "Lists capacity by the pod ID"),
        Param("clusterid", T.UUID, "Lists capacity by the cluster ID"),
        Param(
            "type",
            T.INTEGER,
            "Lists capacity by type: 0 memory, 1 CPU, 2 primary storage used, 3 primary storage allocated",
        ),
    ),
)
def list_capacity(ctx: CallContext, args: dict[str, Any]) -> Listing:
    rows = capacity.list_capacity(ctx, args)
    return Listing(rows, len(rows))
