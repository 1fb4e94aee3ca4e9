"""Zones, pods and clusters."""

from __future__ import annotations

from typing import Any

from strato.api import views
from strato.api.envelope import Listing
from strato.api.pageload import render_page
from strato.api.params import Param, T
from strato.api.registry import ADMIN, Kind, api
from strato.services.core.context import CallContext
from strato.services.core.listing import Page
from strato.services.infra import topology

ALLOC = Param("allocationstate", T.STRING, "Allocation state: Enabled or Disabled", choices=topology.ALLOCATION_STATES)


@api(
    "createZone",
    "Creates a zone",
    response="zone",
    access=ADMIN,
    event="ZONE.CREATE",
    params=(
        Param("name", T.STRING, "The name of the zone", required=True, max_length=255),
        Param(
            "networktype",
            T.STRING,
            "Network type of the zone: Basic or Advanced",
            choices=("Basic", "Advanced"),
        ),
        Param("dns1", T.STRING, "The first DNS server of the zone", max_length=64),
        Param("internaldns1", T.STRING, "The first internal DNS server of the zone", max_length=64),
        Param("description", T.STRING, "Description of the zone", max_length=1024),
        Param("domainid", T.UUID, "The domain the zone is dedicated to"),
        Param("localstorageenabled", T.BOOLEAN, "Whether local storage may be used for VMs"),
        Param("securitygroupenabled", T.BOOLEAN, "True for an Advanced zone with security groups (shared networks)"),
        ALLOC,
    ),
)
def create_zone(ctx: CallContext, args: dict[str, Any]) -> dict[str, Any]:
    return views.zone(ctx.session, topology.create_zone(ctx, args))


@api(
    "listZones",
    "Lists zones",
    kind=Kind.LIST,
    response="zone",
    params=(
        Param("id", T.UUID, "The ID of the zone"),
        Param("name", T.STRING, "The name of the zone", max_length=255),
        Param("networktype", T.STRING, "The network type of the zone", max_length=32),
        Param("available", T.BOOLEAN, "True to list only zones the caller can deploy in"),
        Param("showcapacities", T.BOOLEAN, "Flag to display the capacity of the zones"),
    ),
)
def list_zones(ctx: CallContext, args: dict[str, Any]) -> Listing:
    rows, total = topology.list_zones(ctx, args, Page.from_args(args))
    return Listing(render_page(ctx.session, rows, lambda z: views.zone(ctx.session, z)), total)


@api(
    "updateZone",
    "Updates a zone",
    response="zone",
    access=ADMIN,
    event="ZONE.EDIT",
    params=(
        Param("id", T.UUID, "The ID of the zone", required=True),
        Param("name", T.STRING, "The name of the zone", max_length=255),
        Param("dns1", T.STRING, "The first DNS server of the zone", max_length=64),
        Param("internaldns1", T.STRING, "The first internal DNS server of the zone", max_length=64),
        Param("description", T.STRING, "Description of the zone", max_length=1024),
        Param("localstorageenabled", T.BOOLEAN, "Whether local storage may be used for VMs"),
        ALLOC,
    ),
)
def update_zone(ctx: CallContext, args: dict[str, Any]) -> dict[str, Any]:
    return views.zone(ctx.session, topology.update_zone(ctx, args))


@api(
    "deleteZone",
    "Deletes a zone",
    kind=Kind.SUCCESS,
    access=ADMIN,
    event="ZONE.DELETE",
    params=(Param("id", T.UUID, "The ID of the zone", required=True),),
)
def delete_zone(ctx: CallContext, args: dict[str, Any]) -> None:
    topology.delete_zone(ctx, args["id"])


@api(
    "createPod",
    "Creates a new pod",
    response="pod",
    access=ADMIN,
    event="POD.CREATE",
    params=(
        Param("name", T.STRING, "The name of the pod", required=True, max_length=255),
        Param("zoneid", T.UUID, "The zone ID of the pod", required=True),
        Param("gateway", T.STRING, "The gateway of the pod", max_length=64),
        Param("netmask", T.STRING, "The netmask of the pod", max_length=64),
        Param("startip", T.STRING, "The starting IP address of the pod", max_length=64),
        Param("endip", T.STRING, "The ending IP address of the pod", max_length=64),
        ALLOC,
    ),
)
def create_pod(ctx: CallContext, args: dict[str, Any]) -> dict[str, Any]:
    return views.pod(ctx.session, topology.create_pod(ctx, args))


@api(
    "listPods",
    "Lists all pods",
    kind=Kind.LIST,
    response="pod",
    access=ADMIN,
    params=(
        Param("id", T.UUID, "List pods by ID"),
        Param("name", T.STRING, "List pods by name", max_length=255),
        Param("zoneid", T.UUID, "List pods by zone ID"),
        ALLOC,
    ),
)
def list_pods(ctx: CallContext, args: dict[str, Any]) -> Listing:
    rows, total = topology.list_pods(ctx, args, Page.from_args(args))
    return Listing(render_page(ctx.session, rows, lambda p: views.pod(ctx.session, p)), total)


@api(
    "deletePod",
    "Deletes a pod",
    kind=Kind.SUCCESS,
    access=ADMIN,
    event="POD.DELETE",
    params=(Param("id", T.UUID, "The ID of the pod", required=True),),
)
def delete_pod(ctx: CallContext, args: dict[str, Any]) -> None:
    topology.delete_pod(ctx, args["id"])


@api(
    "addCluster",
    "Adds a new cluster",
    kind=Kind.LIST,
    response="cluster",
    access=ADMIN,
    event="CLUSTER.CREATE",
    params=(
        Param("clustername", T.STRING, "The cluster name", required=True, max_length=255),
        Param(
            "clustertype",
            T.STRING,
            "Type of the cluster: CloudManaged or ExternalManaged",
            choices=("CloudManaged", "ExternalManaged"),
        ),
        Param(
            "hypervisor",
            T.STRING,
            "Hypervisor type of the cluster: KVM or Simulator",
            required=True,
            max_length=32,
        ),
        Param("podid", T.UUID, "The pod ID of the cluster", required=True),
        Param("zoneid", T.UUID, "The zone ID of the cluster", required=True),
        ALLOC,
    ),
)
def add_cluster(ctx: CallContext, args: dict[str, Any]) -> Listing:
    # CloudStack answers addCluster with a list of one cluster.
    return Listing([views.cluster(ctx.session, topology.add_cluster(ctx, args))], 1)


@api(
    "listClusters",
    "Lists clusters",
    kind=Kind.LIST,
    response="cluster",
    access=ADMIN,
    params=(
        Param("id", T.UUID, "Lists clusters by the cluster ID"),
        Param("name", T.STRING, "Lists clusters by the cluster name", max_length=255),
        Param("zoneid", T.UUID, "Lists clusters by zone ID"),
        Param("podid", T.UUID, "Lists clusters by pod ID"),
        Param("hypervisor", T.STRING, "Lists clusters by hypervisor type", max_length=32),
        ALLOC,
    ),
)
def list_clusters(ctx: CallContext, args: dict[str, Any]) -> Listing:
    rows, total = topology.list_clusters(ctx, args, Page.from_args(args))
    return Listing(render_page(ctx.session, rows, lambda c: views.cluster(ctx.session, c)), total)


@api(
    "deleteCluster",
    "Deletes a cluster",
    kind=Kind.SUCCESS,
    access=ADMIN,
    event="CLUSTER.DELETE",
    params=(Param("id", T.UUID, "The cluster ID", required=True),),
)
def delete_cluster(ctx: CallContext, args: dict[str, Any]) -> None:
    topology.delete_cluster(ctx, args["id"])
