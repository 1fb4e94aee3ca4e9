"""Primary storage pools (directories: host-local, or a shared mount point on every host of a cluster
or zone) and image stores (secondary storage)."""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote, urlsplit

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from strato.db.base import utcnow
from strato.db.models import Cluster, Host, ImageStore, Layer, Pod, StoragePool, Volume, Zone
from strato.engine.allocator import pool_allocated, pools_allocated
from strato.errors import InvalidParameter, ResourceInUse
from strato.services.core.context import CallContext
from strato.services.core.listing import Page, run_page
from strato.services.core.lookup import get_live

SCOPES = ("HOST", "CLUSTER", "ZONE")
POOL_STATES = ("Up", "Disabled", "Maintenance", "PrepareForMaintenance", "ErrorInMaintenance")


@dataclass(frozen=True)
class PoolLocation:
    """What a pool URL names: its type and local path."""

    pool_type: str
    path: str


def parse_pool_url(url: str, scope: str) -> PoolLocation:
    """file://localhost/<path> for host-local pools; SharedMountPoint://localhost/<path> for shared."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    path = unquote(parts.path)
    if scheme == "nfs":
        raise InvalidParameter(
            "Parameter url: nfs:// pools are not mounted by Strato; mount the share at the same path on "
            "every host and use SharedMountPoint://localhost/<mount point>"
        )
    if scheme not in ("file", "sharedmountpoint"):
        raise InvalidParameter(
            f"Parameter url has an unsupported scheme '{parts.scheme}': use file://localhost/<path> or "
            "SharedMountPoint://localhost/<path>"
        )
    if parts.hostname not in (None, "", "localhost"):
        raise InvalidParameter("Parameter url must name the host as 'localhost': the path is on the hypervisor")
    if not path.startswith("/") or "/../" in path + "/" or len(path) < 2:
        raise InvalidParameter(f"Parameter url must carry an absolute path, got '{path}'")
    if scheme == "file" and scope != "HOST":
        raise InvalidParameter(
            "A file:// pool is local to one host: use scope=host with hostid, or a "
            "SharedMountPoint:// url for cluster or zone scope"
        )
    return PoolLocation("Filesystem" if scheme == "file" else "SharedMountPoint", path.rstrip("/"))


def create_pool(ctx: CallContext, args: dict[str, Any]) -> StoragePool:
    """createStoragePool: records the pool in its scope; its hosts attach it outside this transaction."""
    zone = get_live(ctx.session, Zone, args["zoneid"], "zone", "zoneid")
    scope = (args.get("scope") or ("CLUSTER" if args.get("clusterid") else "ZONE")).upper()
    if scope not in SCOPES:
        raise InvalidParameter(f"Parameter scope must be one of host, cluster, zone, not {args.get('scope')}")
    loc = parse_pool_url(args["url"], scope)
    pod_id = cluster_id = host_id = None
    if scope == "HOST":
        if not args.get("hostid"):
            raise InvalidParameter("Parameter hostid is required for a pool of scope host")
        host = get_live(ctx.session, Host, args["hostid"], "host", "hostid")
        pod_id, cluster_id, host_id = host.pod_id, host.cluster_id, host.id
    elif scope == "CLUSTER":
        if not args.get("clusterid"):
            raise InvalidParameter("Parameter clusterid is required for a pool of scope cluster")
        cluster = get_live(ctx.session, Cluster, args["clusterid"], "cluster", "clusterid")
        if args.get("podid") and args["podid"] != cluster.pod_id:
            raise InvalidParameter("Parameter podid does not match the cluster's pod")
        pod_id, cluster_id = cluster.pod_id, cluster.id
    if pod_id is not None:
        pod = get_live(ctx.session, Pod, pod_id, "pod", "podid")
        if pod.zone_id != zone.id:
            raise InvalidParameter("The pool's pod/cluster/host is not in the given zone")
    same = ctx.session.scalar(
        select(StoragePool).where(
            StoragePool.removed.is_(None),
            StoragePool.path == loc.path,
            StoragePool.zone_id == zone.id,
            StoragePool.host_id == host_id if host_id else StoragePool.host_id.is_(None),
        )
    )
    if same is not None:
        raise InvalidParameter(f"Storage pool {same.name} already uses the path {loc.path}")
    if (
        ctx.session.scalar(select(StoragePool).where(StoragePool.removed.is_(None), StoragePool.name == args["name"]))
        is not None
    ):
        raise InvalidParameter(f"A storage pool with name {args['name']} already exists")
    pool = StoragePool(
        name=args["name"],
        zone_id=zone.id,
        pod_id=pod_id,
        cluster_id=cluster_id,
        host_id=host_id,
        scope=scope,
        pool_type=loc.pool_type,
        url=args["url"],
        path=loc.path,
        tags=normalize_tags(args.get("tags")),
        capacity_bytes=args.get("capacitybytes") or 0,
        capacity_fixed=args.get("capacitybytes") is not None,
        capacity_iops=args.get("capacityiops"),
    )
    ctx.session.add(pool)
    ctx.session.flush()
    return pool


def normalize_tags(tags: str | list[str] | None) -> str | None:
    """Storage tags as one sorted, comma-separated string, so that matching compares like with like."""
    if tags is None:
        return None
    items = tags if isinstance(tags, list) else tags.split(",")
    cleaned = sorted({t.strip() for t in items if t.strip()})
    return ",".join(cleaned) or None


def list_pools(ctx: CallContext, args: dict[str, Any], page: Page) -> tuple[list[StoragePool], int]:
    """listStoragePools: the pools, filtered and paged."""
    q = select(StoragePool).where(StoragePool.removed.is_(None))
    for param, col in (
        ("id", StoragePool.id),
        ("name", StoragePool.name),
        ("zoneid", StoragePool.zone_id),
        ("podid", StoragePool.pod_id),
        ("clusterid", StoragePool.cluster_id),
        ("hostid", StoragePool.host_id),
        ("path", StoragePool.path),
    ):
        if args.get(param):
            q = q.where(col == args[param])
    if args.get("scope"):
        q = q.where(StoragePool.scope == args["scope"].upper())
    if args.get("status"):
        q = q.where(StoragePool.state == args["status"])
    return run_page(ctx.session, q, page, (StoragePool.name,), (StoragePool.created, StoragePool.id))


def update_pool(ctx: CallContext, args: dict[str, Any]) -> StoragePool:
    """updateStoragePool: name, tags, capacity and enabled state."""
    pool = get_live(ctx.session, StoragePool, args["id"], "storage pool")
    if args.get("name"):
        pool.name = args["name"]
    if args.get("tags") is not None:
        pool.tags = normalize_tags(args["tags"])
    if args.get("capacitybytes") is not None:
        pool.capacity_bytes, pool.capacity_fixed = args["capacitybytes"], True
    if args.get("capacityiops") is not None:
        pool.capacity_iops = args["capacityiops"]
    if args.get("enabled") is not None:
        if pool.state not in ("Up", "Disabled"):
            raise InvalidParameter(
                f"Storage pool {pool.name} is in state {pool.state}; "
                "only Up or Disabled pools can be enabled or disabled"
            )
        pool.state = "Up" if args["enabled"] else "Disabled"
    return pool


def allocated_bytes(session: Session, pool: StoragePool) -> int:
    """Bytes promised on the pool to volumes and template copies (listStoragePools' disksizeallocated)."""
    return pool_allocated(session, pool.id)


def allocated_bytes_of(session: Session, pool_ids: Collection[str]) -> dict[str, int]:
    """allocated_bytes of many pools at once (a page of listStoragePools)."""
    return pools_allocated(session, pool_ids)


def delete_pool(ctx: CallContext, pool_id: str, forced: bool) -> None:
    """deleteStoragePool: refused while volumes are on it; template copies only with forced."""
    pool = get_live(ctx.session, StoragePool, pool_id, "storage pool")
    volumes = ctx.session.scalar(
        select(func.count()).select_from(Volume).where(Volume.pool_id == pool.id, Volume.removed.is_(None))
    )
    if volumes:
        raise ResourceInUse(f"Storage pool {pool.name} still holds {volumes} volume(s); move or delete them first")
    cached = ctx.session.scalars(select(Layer).where(Layer.pool_id == pool.id, Layer.removed.is_(None))).all()
    if cached and not forced:
        raise ResourceInUse(f"Storage pool {pool.name} still holds {len(cached)} template copies; pass forced=true "
                            "to forget them (their files stay in the pool's directory)")  # fmt: skip
    for layer in cached:
        layer.removed, layer.state = utcnow(), "Removed"
    pool.removed = utcnow()
    pool.state = "Removed"


# --- image stores ----------------------------------------------------------------------------------


def add_image_store(ctx: CallContext, args: dict[str, Any]) -> ImageStore:
    """addImageStore: a local or mounted directory (file:// URL) that holds templates and ISOs."""
    url = args["url"]
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in ("file", "nfs"):
        raise InvalidParameter(
            f"Parameter url has an unsupported scheme '{parts.scheme}' for an image store: "
            "use file://localhost/<path> (a local or already mounted directory)"
        )
    path = unquote(parts.path)
    if not path.startswith("/"):
        raise InvalidParameter(f"Parameter url must carry an absolute path, got '{path}'")
    if scheme == "file" and parts.hostname not in (None, "", "localhost"):
        raise InvalidParameter("Parameter url must name the host as 'localhost'")
    zone_id = args.get("zoneid")
    if zone_id:
        get_live(ctx.session, Zone, zone_id, "zone", "zoneid")
    provider = args.get("provider") or "NFS"
    if provider.upper() not in ("NFS", "LOCAL"):
        raise InvalidParameter(f"Parameter provider must be NFS (a directory), not {provider}")
    name = args.get("name") or url
    store = ImageStore(
        name=name,
        zone_id=zone_id,
        provider=provider.upper(),
        protocol=scheme,
        url=url,
        path=path.rstrip("/") or "/",
        scope="ZONE" if zone_id else "REGION",
    )
    ctx.session.add(store)
    ctx.session.flush()
    return store


def list_image_stores(ctx: CallContext, args: dict[str, Any], page: Page) -> tuple[list[ImageStore], int]:
    """listImageStores: the image stores, filtered and paged."""
    q = select(ImageStore).where(ImageStore.removed.is_(None))
    for param, col in (
        ("id", ImageStore.id),
        ("name", ImageStore.name),
        ("zoneid", ImageStore.zone_id),
        ("provider", ImageStore.provider),
        ("protocol", ImageStore.protocol),
    ):
        if args.get(param):
            q = q.where(col == args[param])
    return run_page(ctx.session, q, page, (ImageStore.name,), (ImageStore.created, ImageStore.id))


def delete_image_store(ctx: CallContext, store_id: str) -> None:
    """deleteImageStore: the store is forgotten; its files stay."""
    store = get_live(ctx.session, ImageStore, store_id, "image store")
    store.removed = utcnow()
