"""listApis, listCapabilities, configurations, hypervisor capabilities, events and tags."""

from __future__ import annotations

from typing import Any

import strato
from strato.api import viewkit, views
from strato.api.envelope import AsyncStarted, Listing
from strato.api.pageload import render_page
from strato.api.params import Param, T
from strato.api.registry import ADMIN, COMMANDS, Kind, Role, api
from strato.services.core import events, jobs, settings, tags
from strato.services.core.context import CallContext
from strato.services.core.listing import Page, paginate_rows
from strato.services.network.secgroups import any_security_group_zone

CLOUDSTACK_VERSION = "4.19.0"


def _caller_role(ctx: CallContext) -> Role:
    if ctx.is_root_admin:
        return Role.ROOT_ADMIN
    return Role.DOMAIN_ADMIN if ctx.is_domain_admin else Role.USER


def describe_api(name: str) -> dict[str, Any]:
    cmd = COMMANDS[name]
    return {
        "name": cmd.name,
        "description": cmd.description,
        "isasync": cmd.is_async,
        "since": cmd.since,
        "related": "",
        "type": cmd.kind.value,
        "params": [
            {
                "name": p.name,
                "description": p.description,
                "type": p.type.value,
                "required": p.required,
                "length": p.max_length,
                "since": p.since or cmd.since,
                "related": ",".join(p.related),
            }
            for p in cmd.params
        ],
        "response": [{"name": n, "description": d} for n, d in cmd.response_fields],
    }


@api(
    "listApis",
    "Lists all available APIs and their parameters",
    kind=Kind.LIST,
    response="api",
    params=(Param("name", T.STRING, "API name", max_length=255),),
)
def list_apis(ctx: CallContext, args: dict[str, Any]) -> Listing:
    role = _caller_role(ctx)
    names = sorted(n for n, c in COMMANDS.items() if role in c.access or c.allow_anonymous)
    if args.get("name"):
        names = [n for n in names if n == args["name"].lower()]
    items = [describe_api(n) for n in names]
    if args.get("keyword"):
        items = [i for i in items if args["keyword"].lower() in i["name"].lower()]
    page, total = paginate_rows(items, Page.from_args(args))
    return Listing(page, total)


@api("listCapabilities", "Lists capabilities", kind=Kind.RAW)
def list_capabilities(ctx: CallContext, args: dict[str, Any]) -> dict[str, Any]:
    # The snapshot flags say what the KVM hosts' drivers really do (false until built); storage motion
    # what some hypervisor's hosts do (as listHypervisorCapabilities answers it).
    kvm = settings.cloud_features(ctx.session, "KVM")
    return {
        "capability": {
            "cloudstackversion": f"{CLOUDSTACK_VERSION} (Strato {strato.__version__})",
            "stratoversion": strato.__version__,
            "securitygroupsenabled": any_security_group_zone(ctx.session),
            "userpublictemplateenabled": True,
            "supportELB": "false",
            "projectinviterequired": False,
            "allowusercreateprojects": False,
            "kvmsnapshotenabled": kvm.vm_snapshots,
            "customdiskofferingmaxsize": 1024,
            "customdiskofferingminsize": 1,
            "apilimitinterval": 1,
            "apilimitmax": 0,
            "dynamicrolesenabled": False,
            "allowuserviewdestroyedvm": True,
            "allowuserexpungerecovervm": True,
            "storagemotionenabled": settings.storage_motion_anywhere(ctx.session),
            "vmsnapshotmemoryenabled": kvm.memory_snapshots,
        }
    }


@api(
    "listConfigurations",
    "Lists all configurations",
    kind=Kind.LIST,
    response="configuration",
    access=ADMIN,
    params=(
        Param("name", T.STRING, "Lists configuration by name", max_length=255),
        Param("category", T.STRING, "Lists configurations by category", max_length=64),
    ),
)
def list_configurations(ctx: CallContext, args: dict[str, Any]) -> Listing:
    rows, total = settings.list_settings(ctx, args, Page.from_args(args))
    return Listing([_setting(spec, value) for spec, value in rows], total)


def _setting(spec: settings.SettingSpec, value: Any) -> dict[str, Any]:
    def text(v: Any) -> str:
        return str(v).lower() if isinstance(v, bool) else str(v)

    return {
        "name": spec.name,
        "category": spec.category,
        "value": text(value),
        "defaultvalue": text(spec.default),
        "description": spec.description,
        "isdynamic": True,
        "type": {int: "Integer", float: "Float", bool: "Boolean"}.get(spec.type, "String"),
        "component": "management-server",
        "scope": "global",
    }


@api(
    "updateConfiguration",
    "Updates a configuration",
    response="configuration",
    access=ADMIN,
    event="CONFIGURATION.VALUE.EDIT",
    params=(
        Param("name", T.STRING, "The name of the configuration", required=True, max_length=255),
        Param(
            "value",
            T.STRING,
            "The value of the configuration (empty to reset to the default)",
            max_length=4096,
        ),
    ),
)
def update_configuration(ctx: CallContext, args: dict[str, Any]) -> dict[str, Any]:
    spec, value = settings.update(ctx, args["name"], args.get("value"))
    return _setting(spec, value)


@api(
    "listHypervisorCapabilities",
    "Lists all hypervisor capabilities",
    kind=Kind.LIST,
    response="hypervisorCapabilities",
    access=ADMIN,
    params=(
        Param("id", T.UUID, "ID of the hypervisor capability"),
        Param("hypervisor", T.STRING, "The hypervisor for which to restrict the search", max_length=32),
    ),
)
def list_hypervisor_capabilities(ctx: CallContext, args: dict[str, Any]) -> Listing:
    rows, total = paginate_rows(settings.list_capabilities(ctx, args), Page.from_args(args))
    return Listing(
        render_page(ctx.session, rows, lambda h: views.hypervisor_capability(h, settings.hosts_can_do(ctx.session, h))),
        total,
    )


@api(
    "updateHypervisorCapabilities",
    "Updates a hypervisor capabilities",
    response="hypervisorCapabilities",
    access=ADMIN,
    event="HYPERVISOR.CAPABILITIES.UPDATE",
    params=(
        Param("id", T.UUID, "ID of the hypervisor capability", required=True),
        Param("maxguestslimit", T.LONG, "The max number of guest VMs per host", min_value=0),
        Param(
            "maxdatavolumeslimit",
            T.INTEGER,
            "The maximum number of data volumes that can be attached to a VM",
            min_value=0,
        ),
        Param("maxhostspercluster", T.INTEGER, "The maximum number of hosts per cluster", min_value=1),
        Param("storagemotionenabled", T.BOOLEAN, "Set true to enable storage motion support"),
        Param("vmsnapshotenabled", T.BOOLEAN, "Set true to enable VM snapshots"),
        Param("securitygroupenabled", T.BOOLEAN, "Set true to enable security groups"),
    ),
)
def update_hypervisor_capabilities(ctx: CallContext, args: dict[str, Any]) -> dict[str, Any]:
    row = settings.update_capability(ctx, args)
    return views.hypervisor_capability(row, settings.hosts_can_do(ctx.session, row))


@api(
    "listEvents",
    "A command to list events",
    kind=Kind.LIST,
    response="event",
    owned=True,
    params=(
        Param("id", T.UUID, "The ID of the event"),
        Param("type", T.STRING, "The event type (see event types)", max_length=64),
        Param("level", T.STRING, "The event level (INFO, WARN, ERROR)", choices=("INFO", "WARN", "ERROR")),
        Param("resourceid", T.UUID, "The ID of the resource the events are about"),
        Param("startdate", T.DATE, "The start date range of the list you want to retrieve"),
        Param("enddate", T.DATE, "The end date range of the list you want to retrieve"),
    ),
)
def list_events(ctx: CallContext, args: dict[str, Any]) -> Listing:
    rows, total = events.list_events(ctx, args, Page.from_args(args))
    return Listing(render_page(ctx.session, rows, lambda e: views.event(ctx.session, e)), total)


TAG_PARAMS = (
    Param("resourceids", T.LIST, "List of resources to tag", required=True, item_type=T.UUID),
    Param(
        "resourcetype",
        T.STRING,
        "Type of the resources (Zone, StoragePool, Account, ...)",
        required=True,
        max_length=64,
    ),
)


@api(
    "createTags",
    "Creates resource tag(s)",
    kind=Kind.ASYNC,
    event="CREATE_TAGS",
    params=(
        *TAG_PARAMS,
        Param("tags", T.MAP, "Map of tags (key/value pairs)", required=True, max_length=255),
        Param("customer", T.STRING, "Identifies a customer the tag belongs to", max_length=255),
    ),
)
def create_tags(ctx: CallContext, args: dict[str, Any]) -> AsyncStarted:
    tags.create_tags(ctx, args["resourcetype"], args["resourceids"], args["tags"])
    return _done(ctx, "createTags")


def _done(ctx: CallContext, cmd: str) -> AsyncStarted:
    """CloudStack's tag commands are async: clients poll a job. The work is a few rows, done at once."""
    return AsyncStarted(jobs.completed(ctx, cmd, {"success": True}, "ResourceTag"))


@api(
    "deleteTags",
    "Deleting resource tag(s)",
    kind=Kind.ASYNC,
    event="DELETE_TAGS",
    params=(*TAG_PARAMS, Param("tags", T.MAP, "Delete tags matching key/value pairs", max_length=255)),
)
def delete_tags(ctx: CallContext, args: dict[str, Any]) -> AsyncStarted:
    tags.delete_tags(ctx, args["resourcetype"], args["resourceids"], args.get("tags") or [])
    return _done(ctx, "deleteTags")


@api(
    "listTags",
    "List resource tag(s)",
    kind=Kind.LIST,
    response="tag",
    owned=True,
    params=(
        Param("key", T.STRING, "List by key", max_length=255),
        Param("value", T.STRING, "List by value", max_length=255),
        Param("resourceid", T.STRING, "List by resource id", max_length=255),
        Param("resourcetype", T.STRING, "List by resource type", max_length=64),
    ),
)
def list_tags(ctx: CallContext, args: dict[str, Any]) -> Listing:
    rows, total = tags.list_tags(ctx, args, Page.from_args(args))
    return Listing(render_page(ctx.session, rows, lambda t: viewkit.tag(ctx.session, t)), total)
