"""Service offerings (CPU, memory, storage tags for the root disk) and disk offerings."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select

from strato.db.base import utcnow
from strato.db.models import DiskOffering, Domain, ServiceOffering
from strato.errors import InvalidParameter, PermissionDenied
from strato.services.core.access import get_domain, in_subtree
from strato.services.core.context import CallContext
from strato.services.core.listing import Page, paginate_rows, run_page
from strato.services.core.lookup import get_live
from strato.services.infra.storagepools import normalize_tags
from strato.units import GIB


def _storage_type(value: str | None) -> str:
    st = (value or "shared").lower()
    if st not in ("shared", "local"):
        raise InvalidParameter(f"Parameter storagetype must be shared or local, not {value}")
    return st


def _offering_domain(ctx: CallContext, domain_id: str | None) -> str | None:
    """Public offerings have no domain; a domain admin may only create offerings of its subtree."""
    if domain_id:
        return get_domain(ctx, domain_id).id
    if not ctx.is_root_admin:
        raise InvalidParameter("Domain admins must give domainid when creating an offering")
    return None


def _check_manages(ctx: CallContext, domain_id: str | None, name: str) -> None:
    """Public offerings belong to the root admin; a domain admin changes only its subtree's offerings."""
    if ctx.is_root_admin:
        return
    if domain_id is None:
        raise PermissionDenied(f"Offering {name} is public: only the root admin may change it")
    get_domain(ctx, domain_id)


def _visible(ctx: CallContext, domain_id: str | None) -> bool:
    """Offerings of a domain serve that domain's subtree; its admins above see them too."""
    if domain_id is None or ctx.is_root_admin:
        return True
    domain = ctx.session.get(Domain, domain_id)
    if domain is None:
        return False
    return in_subtree(ctx.domain, domain) or (ctx.is_domain_admin and in_subtree(domain, ctx.domain))


def create_service_offering(ctx: CallContext, args: dict[str, Any]) -> ServiceOffering:
    """createServiceOffering: a fixed shape, or a custom one whose shape the deploy gives."""
    customized = args.get("customized") or args.get("cpunumber") is None
    if not customized and (args.get("memory") is None):
        raise InvalidParameter("Parameter memory is required for a fixed offering (or set customized=true)")
    offering = ServiceOffering(
        name=args["name"],
        display_text=args.get("displaytext") or args["name"],
        cpu_number=args.get("cpunumber"),
        cpu_speed=args.get("cpuspeed"),
        memory_mib=args.get("memory"),
        storage_type=_storage_type(args.get("storagetype")),
        tags=normalize_tags(args.get("tags")),
        host_tags=normalize_tags(args.get("hosttags")),
        offer_ha=bool(args.get("offerha")),
        limit_cpu_use=bool(args.get("limitcpuuse")),
        root_disk_size_bytes=args["rootdisksize"] * GIB if args.get("rootdisksize") else None,
        domain_id=_offering_domain(ctx, args.get("domainid")),
    )
    ctx.session.add(offering)
    ctx.session.flush()
    return offering


def list_service_offerings(ctx: CallContext, args: dict[str, Any], page: Page) -> tuple[list[ServiceOffering], int]:
    """listServiceOfferings: the offerings of the caller's domains."""
    q = select(ServiceOffering).where(ServiceOffering.removed.is_(None), ServiceOffering.is_system.is_(False))
    for param, col in (("id", ServiceOffering.id), ("name", ServiceOffering.name)):
        if args.get(param):
            q = q.where(col == args[param])
    rows, _ = run_page(
        ctx.session,
        q,
        Page(keyword=page.keyword),
        (ServiceOffering.name,),
        (ServiceOffering.created, ServiceOffering.id),
    )
    return paginate_rows([r for r in rows if _visible(ctx, r.domain_id)], page)


def update_service_offering(ctx: CallContext, args: dict[str, Any]) -> ServiceOffering:
    """updateServiceOffering: names and storage tags, by whoever manages its domain."""
    offering = get_live(ctx.session, ServiceOffering, args["id"], "service offering")
    _check_manages(ctx, offering.domain_id, offering.name)
    if args.get("name"):
        offering.name = args["name"]
    if args.get("displaytext"):
        offering.display_text = args["displaytext"]
    if args.get("storagetags") is not None:
        offering.tags = normalize_tags(args["storagetags"])
    if args.get("hosttags") is not None:
        offering.host_tags = normalize_tags(args["hosttags"])
    return offering


def delete_service_offering(ctx: CallContext, offering_id: str) -> None:
    """deleteServiceOffering: existing VMs keep their shape."""
    offering = get_live(ctx.session, ServiceOffering, offering_id, "service offering")
    _check_manages(ctx, offering.domain_id, offering.name)
    offering.removed = utcnow()
    offering.state = "Inactive"


def create_disk_offering(ctx: CallContext, args: dict[str, Any]) -> DiskOffering:
    """createDiskOffering: a fixed size, or a custom one within optional bounds."""
    size_gib = args.get("disksize")
    customized = bool(args.get("customized"))
    if size_gib is None and not customized:
        raise InvalidParameter("Parameter disksize is required unless customized=true")
    if size_gib is not None and size_gib <= 0:
        raise InvalidParameter("Parameter disksize must be a positive number of GiB")
    low, high = args.get("customizedminsize"), args.get("customizedmaxsize")
    if low is not None and high is not None and low > high:
        raise InvalidParameter(f"Parameter customizedminsize ({low}) is greater than customizedmaxsize ({high})")
    offering = DiskOffering(
        name=args["name"],
        display_text=args.get("displaytext") or args["name"],
        disk_size_bytes=(size_gib or 0) * GIB,
        customized=customized,
        min_size_bytes=args["customizedminsize"] * GIB if args.get("customizedminsize") else None,
        max_size_bytes=args["customizedmaxsize"] * GIB if args.get("customizedmaxsize") else None,
        tags=normalize_tags(args.get("tags")),
        storage_type=_storage_type(args.get("storagetype")),
        provisioning_type=(args.get("provisioningtype") or "thin").lower(),
        domain_id=_offering_domain(ctx, args.get("domainid")),
    )
    ctx.session.add(offering)
    ctx.session.flush()
    return offering


def list_disk_offerings(ctx: CallContext, args: dict[str, Any], page: Page) -> tuple[list[DiskOffering], int]:
    """listDiskOfferings: the offerings of the caller's domains."""
    q = select(DiskOffering).where(DiskOffering.removed.is_(None))
    for param, col in (("id", DiskOffering.id), ("name", DiskOffering.name)):
        if args.get(param):
            q = q.where(col == args[param])
    rows, _ = run_page(
        ctx.session,
        q,
        Page(keyword=page.keyword),
        (DiskOffering.name,),
        (DiskOffering.created, DiskOffering.id),
    )
    return paginate_rows([r for r in rows if _visible(ctx, r.domain_id)], page)


def delete_disk_offering(ctx: CallContext, offering_id: str) -> None:
    """deleteDiskOffering: existing volumes keep their size."""
    offering = get_live(ctx.session, DiskOffering, offering_id, "disk offering")
    _check_manages(ctx, offering.domain_id, offering.name)
    offering.removed = utcnow()
    offering.state = "Inactive"


def compute_shape(ctx: CallContext, offering: ServiceOffering, details: dict[str, str]) -> tuple[int, int, int]:
    """(cpus, MHz, MiB) of the VM: the offering's, or the details' for a custom offering."""
    cpus, speed, memory = offering.cpu_number, offering.cpu_speed, offering.memory_mib
    if cpus is None or memory is None:
        try:
            cpus = int(details.get("cpuNumber") or details.get("cpunumber") or 0)
            memory = int(details.get("memory") or 0)
            speed = int(details.get("cpuSpeed") or details.get("cpuspeed") or 1000)
        except ValueError:
            raise InvalidParameter("details[0].cpuNumber, memory and cpuSpeed must be numbers") from None
        if cpus < 1 or memory < 16:
            raise InvalidParameter(
                f"Service offering {offering.name} is custom: give details[0].cpuNumber and details[0].memory (MiB)"
            )
    return cpus, speed or 1000, memory
