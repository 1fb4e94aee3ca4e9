"""Hypervisor hosts: registration through their agents, maintenance, and the pools they can reach."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

from sqlalchemy import or_, select
from sqlalchemy.orm import Session

from strato.db.base import utcnow
from strato.db.models import Cluster, Host, Pod, StoragePool, VirtualMachine, Volume, Zone
from strato.errors import InvalidParameter, InvalidState, ResourceInUse
from strato.protocol.client import AgentClientError
from strato.protocol.messages import AttachPool, GetHostInfo, PoolReport
from strato.services.core.agents import describe_failure, host_client
from strato.services.core.context import CallContext
from strato.services.core.listing import Page, run_page
from strato.services.core.lookup import get_live
from strato.services.core.reach import pool_ref
from strato.services.infra.topology import HYPERVISORS

RESOURCE_STATES = ("Enabled", "Disabled", "PrepareForMaintenance", "Maintenance", "ErrorInMaintenance")


def hosts_for_pool(session: Session, pool: StoragePool) -> list[Host]:
    q = select(Host).where(Host.removed.is_(None))
    if pool.scope == "HOST":
        q = q.where(Host.id == pool.host_id)
    elif pool.scope == "CLUSTER":
        q = q.where(Host.cluster_id == pool.cluster_id)
    else:
        q = q.where(Host.zone_id == pool.zone_id)
    return list(session.scalars(q))


def apply_pool_report(pool: StoragePool, report: PoolReport) -> None:
    if not pool.capacity_fixed:
        pool.capacity_bytes = report.capacity_bytes
    pool.used_bytes = report.used_bytes


def attach_pool(session: Session, pool: StoragePool) -> None:
    """Makes every host in the pool's scope mount (create) its directory; records the capacity.

    The pool's row is committed first, so that the agent calls do not hold the database's lock; if no
    host could attach it, the row is removed again and the error raised. A host that is down is
    skipped: it gets the pool in its next state report."""
    hosts = [(h.name, host_client(h)) for h in hosts_for_pool(session, pool) if h.status == "Up"]
    ref, pool_id = pool_ref(pool), pool.id
    session.commit()
    reports: list[PoolReport] = []
    errors: list[str] = []
    for name, client in hosts:
        try:
            reports.append(client.call(AttachPool(pool=ref, create=True)))
        except AgentClientError as exc:
            errors.append(describe_failure(name, exc).text)
    row = session.get(StoragePool, pool_id)
    assert row is not None
    for report in reports:
        apply_pool_report(row, report)
    if hosts and not reports:
        row.removed, row.state = utcnow(), "Removed"
        session.commit()
        raise describe_failure(hosts[0][0], RuntimeError("; ".join(errors)))


def release_lock(ctx: CallContext) -> None:
    """Ends the request's (read-only so far) transaction before slow agent calls: on SQLite a
    transaction holds the only write lock, and every other request would wait for the agent."""
    ctx.session.commit()


def _hypervisor(value: str) -> str:
    for h in HYPERVISORS:
        if h.lower() == value.lower():
            return h
    raise InvalidParameter(f"Parameter hypervisor must be KVM or Simulator, not {value}")


def add_host(ctx: CallContext, args: dict[str, Any]) -> Host:
    zone = get_live(ctx.session, Zone, args["zoneid"], "zone", "zoneid")
    pod = get_live(ctx.session, Pod, args["podid"], "pod", "podid")
    cluster = (
        get_live(ctx.session, Cluster, args["clusterid"], "cluster", "clusterid") if args.get("clusterid") else None
    )
    if pod.zone_id != zone.id:
        raise InvalidParameter(f"Pod {pod.name} is not in zone {zone.name}")
    if cluster is None:
        raise InvalidParameter("Parameter clusterid is required: a host joins a cluster")
    if cluster.pod_id != pod.id:
        raise InvalidParameter(f"Cluster {cluster.name} is not in pod {pod.name}")
    hypervisor = _hypervisor(args["hypervisor"])
    if hypervisor != cluster.hypervisor:
        raise InvalidParameter(f"Cluster {cluster.name} holds {cluster.hypervisor} hosts, not {hypervisor}")
    url = args["url"].rstrip("/")
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise InvalidParameter(f"Parameter url must be the agent's http(s)://host:port URL, not {url}")
    if ctx.session.scalar(select(Host).where(Host.url == url, Host.removed.is_(None))) is not None:
        raise InvalidParameter(f"A host with url {url} has already been added")
    probe = Host(
        name="",
        zone_id=zone.id,
        pod_id=pod.id,
        cluster_id=cluster.id,
        url=url,
        token=args["password"],
        hypervisor=hypervisor,
    )
    shared = [p for p in ctx.session.scalars(select(StoragePool).where(
        StoragePool.removed.is_(None),
        or_((StoragePool.scope == "CLUSTER") & (StoragePool.cluster_id == cluster.id),
            (StoragePool.scope == "ZONE") & (StoragePool.zone_id == zone.id)),
    ))]  # fmt: skip
    refs = [pool_ref(p) for p in shared]
    release_lock(ctx)  # nothing written yet: the agent calls below must not hold the database's lock
    client = host_client(probe)
    try:
        info = client.call(GetHostInfo())
        reports = [client.call(AttachPool(pool=r, create=True)) for r in refs]
    except AgentClientError as exc:
        raise describe_failure(url, exc) from None
    if info.hypervisor != hypervisor:
        raise InvalidParameter(f"The agent at {url} runs {info.hypervisor}, not {hypervisor}")
    name = info.hostname
    if ctx.session.scalar(select(Host).where(Host.name == name, Host.removed.is_(None))) is not None:
        name = f"{info.hostname}-{parts.port or parts.hostname}{parts.path.replace('/', '-')}"
    host = probe
    host.name = name
    host.hypervisor_version = info.hypervisor_version
    host.cpus, host.cpu_mhz, host.memory_bytes = info.cpus, info.cpu_mhz, info.memory_bytes
    host.host_tags = args.get("hosttags")
    host.status, host.last_ping = "Up", utcnow()
    ctx.session.add(host)
    ctx.session.flush()
    local = info.local_pool
    ctx.session.add(
        StoragePool(
            name=f"{name}-local",
            zone_id=zone.id,
            pod_id=pod.id,
            cluster_id=cluster.id,
            host_id=host.id,
            scope="HOST",
            pool_type="Filesystem",
            url=f"file://localhost{local.path}",
            path=local.path,
            capacity_bytes=local.capacity_bytes,
            used_bytes=local.used_bytes,
        )
    )
    ctx.session.flush()
    for pool, report in zip(shared, reports, strict=True):
        row = ctx.session.get(StoragePool, pool.id)
        if row is not None and row.removed is None:
            apply_pool_report(row, report)
    return host


def list_hosts(ctx: CallContext, args: dict[str, Any], page: Page) -> tuple[list[Host], int]:
    q = select(Host).where(Host.removed.is_(None))
    for param, col in (
        ("id", Host.id),
        ("name", Host.name),
        ("zoneid", Host.zone_id),
        ("podid", Host.pod_id),
        ("clusterid", Host.cluster_id),
        ("hypervisor", Host.hypervisor),
        ("resourcestate", Host.resource_state),
        ("state", Host.status),
    ):
        if args.get(param):
            q = q.where(col == args[param])
    if args.get("type") and args["type"].lower() != "routing":
        q = q.where(Host.id.is_(None))
    return run_page(ctx.session, q, page, (Host.name,), (Host.created, Host.id))


def update_host(ctx: CallContext, args: dict[str, Any]) -> Host:
    host = get_live(ctx.session, Host, args["id"], "host")
    if args.get("hosttags") is not None:
        host.host_tags = ",".join(t.strip() for t in args["hosttags"].split(",") if t.strip()) or None
    if args.get("allocationstate"):
        wanted = {"enable": "Enabled", "disable": "Disabled"}[args["allocationstate"].lower()]
        if host.resource_state not in ("Enabled", "Disabled"):
            raise InvalidState(f"Host {host.name} is in {host.resource_state}; cancel maintenance first")
        host.resource_state = wanted
    if args.get("name"):
        host.name = args["name"]
    return host


def delete_host(ctx: CallContext, host_id: str, forced: bool) -> None:
    host = get_live(ctx.session, Host, host_id, "host")
    if not forced and host.resource_state not in ("Maintenance", "Disabled") and host.status == "Up":
        raise InvalidState(
            f"Host {host.name} must be in maintenance or disabled before it is deleted (or pass forced=true)"
        )
    vm = ctx.session.scalar(select(VirtualMachine).where(
        VirtualMachine.removed.is_(None), (VirtualMachine.host_id == host.id) | (VirtualMachine.last_host_id == host.id)
    ))  # fmt: skip
    local = select(StoragePool.id).where(StoragePool.host_id == host.id, StoragePool.removed.is_(None))
    volume = ctx.session.scalar(select(Volume).where(Volume.pool_id.in_(local), Volume.removed.is_(None)))
    if vm is not None or volume is not None:
        what = f"VM {vm.name}" if vm is not None else f"volume {volume.name}" if volume is not None else ""
        raise ResourceInUse(f"Host {host.name} still has {what} on it; move or expunge its VMs and volumes first")
    now = utcnow()
    for pool in ctx.session.scalars(
        select(StoragePool).where(StoragePool.host_id == host.id, StoragePool.removed.is_(None))
    ):
        pool.removed = now
        pool.state = "Removed"
    host.removed = now
    host.status = "Removed"
