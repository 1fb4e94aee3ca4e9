"""Renders database rows as CloudStack response objects (field names and formats as CloudStack's)."""

from __future__ import annotations

from collections.abc import Collection, Iterable, Sequence
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from strato.api.pageload import Loader, add_to_page, page_load, related
from strato.api.viewkit import (
    RESULT_MODELS,
    RESULT_RENDERERS,
    clean,
    cs_date,
    domain_fields,
    fetch,
    name_of,
    owner_fields,
    register_result,
    tags,
)
from strato.api.views_limits import account_limits, domain_limits
from strato.db import rows as dbrows
from strato.db.models import (
    Account,
    Cluster,
    DiskOffering,
    Domain,
    Event,
    Host,
    HypervisorCapability,
    ImageStore,
    Job,
    Pod,
    ServiceOffering,
    StoragePool,
    User,
    Zone,
)
from strato.db.models.identity import ACCOUNT_TYPE_ADMIN, ACCOUNT_TYPE_DOMAIN_ADMIN
from strato.services.core import settings
from strato.services.core.settings import HostsCanDo
from strato.services.infra.storagepools import allocated_bytes_of
from strato.units import GIB

ROLE_NAMES = {0: "User", ACCOUNT_TYPE_ADMIN: "Admin", ACCOUNT_TYPE_DOMAIN_ADMIN: "DomainAdmin"}


def _child_counts(session: Session) -> Loader:
    def load(ids: Collection[Any]) -> Iterable[tuple[Any, Any]]:
        return session.execute(
            select(Domain.parent_id, func.count())
            .where(dbrows.among(session, Domain.parent_id, ids), Domain.removed.is_(None))
            .group_by(Domain.parent_id)
        ).tuples()

    return load


def _users_of(session: Session) -> Loader:
    def load(ids: Collection[Any]) -> Iterable[tuple[Any, Any]]:
        rows = dbrows.load(
            session,
            User,
            select(User)
            .where(dbrows.among(session, User.account_id, ids), User.removed.is_(None))
            .order_by(User.created, User.id),
        )
        return [(u.account_id, u) for u in rows]

    return load


def domain(session: Session, d: Domain) -> dict[str, Any]:
    children = sum(related(session, "domain.children", d.id, _child_counts(session)))
    parent = fetch(session, Domain, d.parent_id) if d.parent_id else None
    return clean(
        {
            "id": d.id,
            "name": d.name,
            "level": d.level,
            "path": "/" + d.path if parent else "ROOT",
            "parentdomainid": parent.id if parent else None,
            "parentdomainname": parent.name if parent else None,
            "haschild": bool(children),
            "networkdomain": d.network_domain,
            "state": "Active",
            "created": cs_date(d.created),
            **domain_limits(session, d),
        }
    )


def user(session: Session, u: User, with_keys: bool = False) -> dict[str, Any]:
    acct = fetch(session, Account, u.account_id)
    assert acct is not None
    out = {
        "id": u.id,
        "username": u.username,
        "firstname": u.firstname,
        "lastname": u.lastname,
        "email": u.email,
        "timezone": u.timezone,
        "created": cs_date(u.created),
        "state": u.state,
        "account": acct.name,
        "accountid": acct.id,
        "accounttype": acct.type,
        "roletype": ROLE_NAMES.get(acct.type),
        "rolename": ROLE_NAMES.get(acct.type),
        "iscallerchilddomain": False,
        "isdefault": acct.name == "admin" and acct.type == ACCOUNT_TYPE_ADMIN,
        **domain_fields(session, acct.domain_id),
    }
    if with_keys:
        out["apikey"] = u.api_key
        out["secretkey"] = u.secret_key
    return clean(out)


def account(session: Session, a: Account) -> dict[str, Any]:
    users = related(session, "account.users", a.id, _users_of(session))
    return clean(
        {
            "id": a.id,
            "name": a.name,
            "accounttype": a.type,
            "roletype": ROLE_NAMES.get(a.type),
            "rolename": ROLE_NAMES.get(a.type),
            "state": a.state,
            "networkdomain": a.network_domain,
            "created": cs_date(a.created),
            "isdefault": a.name == "admin" and a.type == ACCOUNT_TYPE_ADMIN,
            "user": [user(session, u) for u in users],
            **account_limits(session, a),
            **domain_fields(session, a.domain_id),
        }
    )


def zone(session: Session, z: Zone) -> dict[str, Any]:
    return clean(
        {
            "id": z.id,
            "name": z.name,
            "description": z.description,
            "dns1": z.dns1,
            "internaldns1": z.internal_dns1,
            "networktype": z.network_type,
            "allocationstate": z.allocation_state,
            "localstorageenabled": z.local_storage_enabled,
            "securitygroupsenabled": z.security_group_enabled,
            "zonetoken": z.id,
            "tags": tags(session, z.id),
            "created": cs_date(z.created),
            **domain_fields(session, z.domain_id),
        }
    )


def pod(session: Session, p: Pod) -> dict[str, Any]:
    return clean(
        {
            "id": p.id,
            "name": p.name,
            "zoneid": p.zone_id,
            "zonename": name_of(session, Zone, p.zone_id),
            "gateway": p.gateway,
            "netmask": p.netmask,
            "startip": [p.start_ip] if p.start_ip else None,
            "endip": [p.end_ip] if p.end_ip else None,
            "allocationstate": p.allocation_state,
        }
    )


def cluster(session: Session, c: Cluster) -> dict[str, Any]:
    return clean(
        {
            "id": c.id,
            "name": c.name,
            "zoneid": c.zone_id,
            "zonename": name_of(session, Zone, c.zone_id),
            "podid": c.pod_id,
            "podname": name_of(session, Pod, c.pod_id),
            "hypervisortype": c.hypervisor,
            "clustertype": c.cluster_type,
            "allocationstate": c.allocation_state,
            "managedstate": "Managed",
        }
    )


def storage_pool(session: Session, p: StoragePool, overprovision: float = 2.0) -> dict[str, Any]:
    allocated = sum(related(session, "pool.allocated", p.id, lambda ids: allocated_bytes_of(session, ids).items()))
    return clean(
        {
            "id": p.id,
            "name": p.name,
            "zoneid": p.zone_id,
            "zonename": name_of(session, Zone, p.zone_id),
            "podid": p.pod_id,
            "podname": name_of(session, Pod, p.pod_id),
            "clusterid": p.cluster_id,
            "clustername": name_of(session, Cluster, p.cluster_id),
            "hostid": p.host_id,
            "scope": p.scope,
            "type": p.pool_type,
            "path": p.path,
            "ipaddress": "localhost",
            "tags": p.tags,
            "state": p.state,
            "disksizetotal": p.capacity_bytes,
            "disksizeused": p.used_bytes,
            "disksizeallocated": allocated,
            "capacityiops": p.capacity_iops,
            "overprovisionfactor": str(overprovision),
            "provider": "DefaultPrimary",
            "hypervisor": "KVM",
            "storagecapabilities": {"VOLUME_SNAPSHOT_QUIESCEVM": "false"},
            "created": cs_date(p.created),
            "istagarule": False,
            "managed": False,
        }
    )


def image_store(session: Session, s: ImageStore) -> dict[str, Any]:
    return clean(
        {
            "id": s.id,
            "name": s.name,
            "zoneid": s.zone_id,
            "zonename": name_of(session, Zone, s.zone_id),
            "url": s.url,
            "protocol": s.protocol,
            "providername": s.provider,
            "scope": s.scope,
            "readonly": s.readonly,
        }
    )


def service_offering(session: Session, o: ServiceOffering) -> dict[str, Any]:
    return clean(
        {
            "id": o.id,
            "name": o.name,
            "displaytext": o.display_text,
            "cpunumber": o.cpu_number,
            "cpuspeed": o.cpu_speed,
            "memory": o.memory_mib,
            "storagetype": o.storage_type,
            "storagetags": o.tags,
            "hosttags": o.host_tags,
            "offerha": o.offer_ha,
            "limitcpuuse": o.limit_cpu_use,
            "issystem": o.is_system,
            "iscustomized": o.cpu_number is None,
            "rootdisksize": o.root_disk_size_bytes // GIB if o.root_disk_size_bytes else None,
            "created": cs_date(o.created),
            "state": o.state,
            **domain_fields(session, o.domain_id),
        }
    )


def disk_offering(session: Session, o: DiskOffering) -> dict[str, Any]:
    return clean(
        {
            "id": o.id,
            "name": o.name,
            "displaytext": o.display_text,
            "disksize": o.disk_size_bytes // GIB,
            "iscustomized": o.customized,
            "customizedminsize": o.min_size_bytes // GIB if o.min_size_bytes else None,
            "customizedmaxsize": o.max_size_bytes // GIB if o.max_size_bytes else None,
            "tags": o.tags,
            "storagetype": o.storage_type,
            "provisioningtype": o.provisioning_type,
            "created": cs_date(o.created),
            "state": o.state,
            **domain_fields(session, o.domain_id),
        }
    )


def hypervisor_capability(h: HypervisorCapability, can: HostsCanDo) -> dict[str, Any]:
    """The flags the hosts really have (`can`, from what their agents reported) within the administrator's."""
    return clean(
        {
            "id": h.id,
            "hypervisor": h.hypervisor,
            "hypervisorversion": h.hypervisor_version,
            "maxguestslimit": h.max_guests_limit,
            "maxdatavolumeslimit": can.max_data_volumes_limit,
            "maxhostspercluster": h.max_hosts_per_cluster,
            "storagemotionenabled": can.storage_motion_enabled,
            "vmsnapshotenabled": can.vm_snapshot_enabled,
            "securitygroupenabled": h.security_group_enabled,
        }
    )


def event(session: Session, e: Event) -> dict[str, Any]:
    u = fetch(session, User, e.user_id) if e.user_id else None
    return clean(
        {
            "id": e.id,
            "type": e.type,
            "level": e.level,
            "state": e.state,
            "description": e.description,
            "created": cs_date(e.created),
            "username": u.username if u else None,
            "resourceid": e.resource_id,
            "resourcetype": e.resource_type,
            **owner_fields(session, e.account_id),
        }
    )


JOB_STATUS = {"queued": 0, "running": 0, "succeeded": 1, "failed": 2, "cancelled": 3}


def job(session: Session, j: Job, admin: bool = False) -> dict[str, Any]:
    status = JOB_STATUS.get(j.status, 0)
    percent = int(100 * j.progress_done / j.progress_total) if j.progress_total else (100 if status else 0)
    out: dict[str, Any] = {
        "jobid": j.id,
        "cmd": j.cmd,
        "jobstatus": status,
        "jobprocstatus": j.proc_status,
        "jobresultcode": j.result_code,
        "jobresulttype": "object",
        "created": cs_date(j.created),
        "completed": cs_date(j.completed),
        "jobinstancetype": j.instance_type,
        "jobinstanceid": j.instance_id,
        "userid": j.user_id,
        "accountid": j.account_id,
        # Strato additions: progress as a percentage and in units, and the step log.
        "jobprogress": percent,
        "jobprogressdone": j.progress_done,
        "jobprogresstotal": j.progress_total,
        "jobsteps": j.steps or [],
        # Strato: the parts the progress adds up from (each disk moved, the RAM of a migration) and
        # what the job is doing now.
        "jobprogressparts": _progress_parts(j) or None,
        "jobprogressphase": (j.progress_detail or {}).get("phase") if j.status == "running" else None,
    }
    if j.status in ("succeeded", "failed", "cancelled"):
        out["jobresult"] = _job_result(session, j, admin)
    acct = fetch(session, Account, j.account_id) if j.account_id else None
    if acct is not None:
        out["account"] = acct.name
        out.update(domain_fields(session, acct.domain_id))
    return clean(out)


def jobs_page(session: Session, rows: Sequence[Job], admin: bool) -> list[dict[str, Any]]:
    """A page of jobs, their result objects loaded with the page (one query per object type)."""
    with page_load(session, rows):
        wanted: dict[type, set[str]] = {}
        for j in rows:
            result = j.result or {}
            model = RESULT_MODELS.get(str(result.get("type"))) if j.status == "succeeded" else None
            if model is not None and isinstance(result.get("id"), str):
                wanted.setdefault(model, set()).add(result["id"])
        for model, ids in wanted.items():
            pk = getattr(model, "id")  # noqa: B009 (any registered model)
            add_to_page(
                session, list(dbrows.load(session, model, select(model).where(dbrows.among(session, pk, sorted(ids)))))
            )
        return [job(session, j, admin) for j in rows]


def _progress_parts(j: Job) -> list[dict[str, Any]]:
    """The parts as recorded; a succeeded job's all done (the runner completes its totals too)."""
    parts = [dict(p) for p in (j.progress_detail or {}).get("parts") or [] if isinstance(p, dict)]
    if j.status == "succeeded":
        for part in parts:
            part["done"] = part.get("total", 0)
    return parts


def _job_result(session: Session, j: Job, admin: bool) -> dict[str, Any]:
    result = dict(j.result or {})
    if j.status != "succeeded":
        return result
    obj_type, obj_id = result.get("type"), result.get("id")
    if isinstance(obj_type, str) and isinstance(obj_id, str) and obj_type in RESULT_RENDERERS:
        rendered = RESULT_RENDERERS[obj_type](session, obj_id, admin)
        return {obj_type: rendered} if rendered is not None else {}
    return result


def host(session: Session, h: Host) -> dict[str, Any]:
    return clean(
        {
            "id": h.id,
            "name": h.name,
            "type": "Routing",
            "state": h.status,
            "resourcestate": h.resource_state,
            "hypervisor": h.hypervisor,
            "hypervisorversion": h.hypervisor_version,
            "zoneid": h.zone_id,
            "zonename": name_of(session, Zone, h.zone_id),
            "podid": h.pod_id,
            "podname": name_of(session, Pod, h.pod_id),
            "clusterid": h.cluster_id,
            "clustername": name_of(session, Cluster, h.cluster_id),
            "clustertype": "CloudManaged",
            "ipaddress": _host_address(h.url),
            "url": h.url,
            "cpunumber": h.cpus,
            "cpuspeed": h.cpu_mhz,
            "memorytotal": h.memory_bytes,
            "hosttags": h.host_tags,
            "lastpinged": cs_date(h.last_ping),
            "created": cs_date(h.created),
            "disconnected": cs_date(h.disconnected_since),
            "islocalstorageactive": True,
            "events": "AgentConnected; AgentDisconnected; "
            "Ping; PingTimeout; ManagementServerDown; StartAgentRebalance; Remove",
        }
    )


def _host_address(url: str) -> str:
    from urllib.parse import urlsplit

    return urlsplit(url).hostname or url


register_result("host", lambda s, i, _admin: host(s, h) if (h := fetch(s, Host, i)) is not None else None, Host)


def _pool_result(session: Session, pool_id: str) -> dict[str, Any] | None:
    pool = fetch(session, StoragePool, pool_id)
    if pool is None:
        return None
    factor = float(settings.get(session, "storage.overprovisioning.factor"))
    return storage_pool(session, pool, factor)


register_result("storagepool", lambda s, i, _admin: _pool_result(s, i), StoragePool)
