"""Zones, pods and clusters: where hosts and pools live."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from strato.db.base import utcnow
from strato.db.models import Cluster, Domain, Host, ImageStore, Pod, StoragePool, Zone
from strato.errors import InvalidParameter, ResourceInUse
from strato.services.core.context import CallContext
from strato.services.core.listing import Page, run_page
from strato.services.core.lookup import get_live

ALLOCATION_STATES = ("Enabled", "Disabled")
HYPERVISORS = ("KVM", "Simulator")


def _unique_name(session: Session, model: Any, name: str, label: str, **scope: str) -> None:
    q = select(model).where(model.name == name, model.removed.is_(None))
    for col, value in scope.items():
        q = q.where(getattr(model, col) == value)
    if session.scalar(q) is not None:
        raise InvalidParameter(f"A {label} with name {name} already exists")


def _in_use(session: Session, label: str, name: str, checks: list[tuple[Any, Any]]) -> None:
    for model, cond in checks:
        n = len(session.scalars(select(model.id).where(cond, model.removed.is_(None))).all())
        if n:
            raise ResourceInUse(f"Cannot delete {label} {name}: it still has {n} {model.__tablename__}")


# --- zones -----------------------------------------------------------------------------------------


def create_zone(ctx: CallContext, args: dict[str, Any]) -> Zone:
    """createZone: a zone with a unique name."""
    _unique_name(ctx.session, Zone, args["name"], "zone")
    if args.get("securitygroupenabled") and (args.get("networktype") or "Advanced") != "Advanced":
        raise InvalidParameter("Parameter securitygroupenabled: security groups need networktype=Advanced here")
    if args.get("domainid"):
        get_live(ctx.session, Domain, args["domainid"], "domain", "domainid")
    zone = Zone(
        name=args["name"],
        description=args.get("description"),
        dns1=args.get("dns1"),
        internal_dns1=args.get("internaldns1"),
        network_type=args.get("networktype") or "Advanced",
        allocation_state=args.get("allocationstate") or "Enabled",
        local_storage_enabled=args.get("localstorageenabled", True) is not False,
        security_group_enabled=bool(args.get("securitygroupenabled")),
        domain_id=args.get("domainid"),
    )
    ctx.session.add(zone)
    ctx.session.flush()
    return zone


def list_zones(ctx: CallContext, args: dict[str, Any], page: Page) -> tuple[list[Zone], int]:
    """listZones: the zones, filtered and paged."""
    q = select(Zone).where(Zone.removed.is_(None))
    if args.get("id"):
        q = q.where(Zone.id == args["id"])
    if args.get("name"):
        q = q.where(Zone.name == args["name"])
    if args.get("networktype"):
        q = q.where(Zone.network_type == args["networktype"])
    if not ctx.is_root_admin:
        q = q.where(Zone.allocation_state == "Enabled")
    return run_page(ctx.session, q, page, (Zone.name,), (Zone.created, Zone.id))


def update_zone(ctx: CallContext, args: dict[str, Any]) -> Zone:
    """updateZone: a unique name, DNS, allocation state and local storage."""
    zone = get_live(ctx.session, Zone, args["id"], "zone")
    if args.get("name") and args["name"] != zone.name:
        _unique_name(ctx.session, Zone, args["name"], "zone")
        zone.name = args["name"]
    for param, attr in (
        ("description", "description"),
        ("dns1", "dns1"),
        ("internaldns1", "internal_dns1"),
        ("allocationstate", "allocation_state"),
        ("localstorageenabled", "local_storage_enabled"),
    ):
        if args.get(param) is not None:
            setattr(zone, attr, args[param])
    return zone


def delete_zone(ctx: CallContext, zone_id: str) -> None:
    """deleteZone: refused while pods, hosts or pools are in it."""
    zone = get_live(ctx.session, Zone, zone_id, "zone")
    _in_use(
        ctx.session,
        "zone",
        zone.name,
        [
            (Pod, Pod.zone_id == zone.id),
            (StoragePool, StoragePool.zone_id == zone.id),
            (ImageStore, ImageStore.zone_id == zone.id),
        ],
    )
    zone.removed = utcnow()


# --- pods ------------------------------------------------------------------------------------------


def create_pod(ctx: CallContext, args: dict[str, Any]) -> Pod:
    """createPod: a pod in a zone."""
    zone = get_live(ctx.session, Zone, args["zoneid"], "zone", "zoneid")
    _unique_name(ctx.session, Pod, args["name"], "pod in this zone", zone_id=zone.id)
    pod = Pod(
        name=args["name"],
        zone_id=zone.id,
        gateway=args.get("gateway"),
        netmask=args.get("netmask"),
        start_ip=args.get("startip"),
        end_ip=args.get("endip"),
        allocation_state=args.get("allocationstate") or "Enabled",
    )
    ctx.session.add(pod)
    ctx.session.flush()
    return pod


def list_pods(ctx: CallContext, args: dict[str, Any], page: Page) -> tuple[list[Pod], int]:
    """listPods: the pods, filtered and paged."""
    q = select(Pod).where(Pod.removed.is_(None))
    for param, col in (
        ("id", Pod.id),
        ("name", Pod.name),
        ("zoneid", Pod.zone_id),
        ("allocationstate", Pod.allocation_state),
    ):
        if args.get(param):
            q = q.where(col == args[param])
    return run_page(ctx.session, q, page, (Pod.name,), (Pod.created, Pod.id))


def delete_pod(ctx: CallContext, pod_id: str) -> None:
    """deletePod: refused while clusters or hosts are in it."""
    pod = get_live(ctx.session, Pod, pod_id, "pod")
    _in_use(ctx.session, "pod", pod.name, [(Cluster, Cluster.pod_id == pod.id), (Host, Host.pod_id == pod.id)])
    pod.removed = utcnow()


# --- clusters --------------------------------------------------------------------------------------


def add_cluster(ctx: CallContext, args: dict[str, Any]) -> Cluster:
    """addCluster: a cluster in a pod of the zone."""
    pod = get_live(ctx.session, Pod, args["podid"], "pod", "podid")
    if args["zoneid"] != pod.zone_id:
        raise InvalidParameter(f"Pod {pod.name} does not belong to zone {args['zoneid']}")
    _unique_name(ctx.session, Cluster, args["clustername"], "cluster in this pod", pod_id=pod.id)
    cluster = Cluster(
        name=args["clustername"],
        zone_id=pod.zone_id,
        pod_id=pod.id,
        hypervisor=_hypervisor(args["hypervisor"]),
        cluster_type=args.get("clustertype") or "CloudManaged",
        allocation_state=args.get("allocationstate") or "Enabled",
    )
    ctx.session.add(cluster)
    ctx.session.flush()
    return cluster


def _hypervisor(value: str) -> str:
    for h in HYPERVISORS:
        if h.lower() == value.lower():
            return h
    raise InvalidParameter(f"Parameter hypervisor must be one of {', '.join(HYPERVISORS)}, not {value}")


def list_clusters(ctx: CallContext, args: dict[str, Any], page: Page) -> tuple[list[Cluster], int]:
    """listClusters: the clusters, filtered and paged."""
    q = select(Cluster).where(Cluster.removed.is_(None))
    for param, col in (
        ("id", Cluster.id),
        ("name", Cluster.name),
        ("zoneid", Cluster.zone_id),
        ("podid", Cluster.pod_id),
        ("hypervisor", Cluster.hypervisor),
        ("allocationstate", Cluster.allocation_state),
    ):
        if args.get(param):
            q = q.where(col == args[param])
    return run_page(ctx.session, q, page, (Cluster.name,), (Cluster.created, Cluster.id))


def delete_cluster(ctx: CallContext, cluster_id: str) -> None:
    """deleteCluster: refused while hosts or pools are in it."""
    cluster = get_live(ctx.session, Cluster, cluster_id, "cluster")
    _in_use(
        ctx.session,
        "cluster",
        cluster.name,
        [(Host, Host.cluster_id == cluster.id), (StoragePool, StoragePool.cluster_id == cluster.id)],
    )
    cluster.removed = utcnow()


def names(session: Session, model: Any, ids: set[str | None]) -> dict[str, str]:
    """id → name for rendering related objects in one query."""
    wanted = {i for i in ids if i}
    if not wanted:
        return {}
    return {row.id: row.name for row in session.scalars(select(model).where(model.id.in_(wanted)))}
