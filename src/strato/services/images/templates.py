"""Templates and ISOs: register (download to an image store or straight onto a primary pool),
list with CloudStack's filters, update, delete, copy to another store or pool, and multi-disk
templates (data-disk children)."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select

from strato.db.models import (
    Account,
    ImageStore,
    StoragePool,
    Template,
    TemplateStoreCopy,
    Zone,
)
from strato.errors import InvalidParameter, NotFound, PermissionDenied
from strato.services.core.access import check_account_access, owner_scope
from strato.services.core.context import CallContext
from strato.services.core.listing import Page, run_page
from strato.services.core.lookup import get_live
from strato.services.core.tags import tagged

DISK_FORMATS = ("QCOW2", "RAW")
FILTERS = ("featured", "self", "selfexecutable", "sharedexecutable", "executable", "community", "all")


def url_ok(ctx: CallContext, url: str, param: str) -> str:
    """http(s) for everyone; file:// (a path read by the hosts' agents) only for root admins, since the
    agent would read any file it can, and a user could turn a host's file into a disk it can read."""
    low = url.lower()
    if not (low.startswith("http://") or low.startswith("https://") or low.startswith("file://")):
        raise InvalidParameter(f"Parameter {param} must be an http://, https:// or file:// URL, not '{url[:80]}'")
    if low.startswith("file://") and not ctx.is_root_admin:
        raise PermissionDenied(f"Parameter {param}: only root admins may register images from file:// URLs")
    return url


def store_in_zone(ctx: CallContext, zone_id: str | None, store_id: str | None) -> ImageStore:
    if store_id:
        store = get_live(ctx.session, ImageStore, store_id, "image store", "imagestoreid")
        if zone_id and store.zone_id not in (None, zone_id):
            raise InvalidParameter(f"Image store {store.name} is not in the given zone")
        return store
    q = select(ImageStore).where(ImageStore.removed.is_(None), ImageStore.readonly.is_(False))
    if zone_id:
        q = q.where((ImageStore.zone_id == zone_id) | ImageStore.zone_id.is_(None))
    found = ctx.session.scalar(q.order_by(ImageStore.created))
    if found is None:
        raise InvalidParameter(
            "There is no image store in the zone; add one with addImageStore, or register "
            "the template straight onto a pool with storageid"
        )
    return found


def choose_pool(ctx: CallContext, pool_id: str, param: str) -> StoragePool:
    if not ctx.is_root_admin:
        raise PermissionDenied(f"Only admins may choose a storage pool ({param})")
    return get_live(ctx.session, StoragePool, pool_id, "storage pool", param)


def _zone_id(ctx: CallContext, args: dict[str, Any]) -> str | None:
    zone = args.get("zoneid")
    if zone in (None, "-1"):
        return None
    get_live(ctx.session, Zone, zone, "zone", "zoneid")
    return str(zone)


def _owner(ctx: CallContext) -> dict[str, str]:
    return {"account_id": ctx.account.id, "domain_id": ctx.account.domain_id}


def register(ctx: CallContext, args: dict[str, Any], iso: bool) -> tuple[Template, list[dict[str, Any]]]:
    """Creates the template rows and returns the download plan: one entry per disk (root first), each
    with its destination (an image store or a primary pool). The caller queues the download job."""
    zone_id = _zone_id(ctx, args)
    fmt = "ISO" if iso else args["format"].upper()
    if not iso and fmt not in DISK_FORMATS:
        raise InvalidParameter(f"Parameter format must be one of {', '.join(DISK_FORMATS)}, not {args['format']}")
    if (args.get("ispublic") or args.get("isfeatured")) and not ctx.is_admin:
        raise PermissionDenied("Only admins may register public or featured templates")
    tmpl = Template(
        name=args["name"],
        display_text=args.get("displaytext") or args["name"],
        zone_id=zone_id,
        format=fmt,
        is_iso=iso,
        url=url_ok(ctx, args["url"], "url"),
        checksum=args.get("checksum"),
        os_type=args.get("ostypeid") or "Other Linux (64-bit)",
        hypervisor=args.get("hypervisor") or "KVM",
        is_public=bool(args.get("ispublic")),
        is_featured=bool(args.get("isfeatured")),
        is_extractable=bool(args.get("isextractable")),
        bootable=args.get("bootable", True) is not False,
        password_enabled=bool(args.get("passwordenabled")),
        state="Downloading",
        **_owner(ctx),
    )
    ctx.session.add(tmpl)
    ctx.session.flush()
    plan = [destination(ctx, tmpl, zone_id, args.get("imagestoreid"), args.get("storageid"), "")]
    for index, disk in enumerate(args.get("datadisks") or [], start=1):
        if iso:
            raise InvalidParameter("ISOs have no data disks")
        if not disk.get("url"):
            raise InvalidParameter(f"Parameter datadisks[{index - 1}].url is required")
        dfmt = (disk.get("format") or "QCOW2").upper()
        if dfmt not in DISK_FORMATS:
            raise InvalidParameter(f"Parameter datadisks[{index - 1}].format must be QCOW2 or RAW")
        child = Template(
            name=disk.get("name") or f"{tmpl.name}-disk{index}",
            display_text=f"Data disk {index} of {tmpl.name}",
            zone_id=zone_id,
            format=dfmt,
            url=url_ok(ctx, disk["url"], f"datadisks[{index - 1}].url"),
            checksum=disk.get("checksum"),
            os_type=tmpl.os_type,
            hypervisor=tmpl.hypervisor,
            is_public=tmpl.is_public,
            is_featured=False,
            bootable=False,
            template_type="DATADISK",
            parent_id=tmpl.id,
            disk_index=index,
            state="Downloading",
            **_owner(ctx),
        )
        ctx.session.add(child)
        ctx.session.flush()
        plan.append(
            destination(
                ctx,
                child,
                zone_id,
                disk.get("imagestoreid"),
                disk.get("storageid"),
                f"datadisks[{index - 1}].",
            )
        )
    return tmpl, plan


def destination(
    ctx: CallContext,
    tmpl: Template,
    zone_id: str | None,
    store_id: str | None,
    pool_id: str | None,
    prefix: str,
) -> dict[str, Any]:
    if store_id and pool_id:
        raise InvalidParameter(f"Give either {prefix}imagestoreid or {prefix}storageid, not both")
    if pool_id:
        if tmpl.is_iso:
            raise InvalidParameter("ISOs are kept on image stores, not on primary pools")
        pool = choose_pool(ctx, pool_id, f"{prefix}storageid")
        if zone_id and pool.zone_id != zone_id:
            raise InvalidParameter(f"Pool {pool.name} is not in the given zone")
        return {
            "template_id": tmpl.id,
            "url": tmpl.url,
            "format": tmpl.format,
            "checksum": tmpl.checksum,
            "pool_id": pool.id,
        }
    store = store_in_zone(ctx, zone_id, store_id)
    copy = TemplateStoreCopy(template_id=tmpl.id, store_id=store.id, path=store_path(tmpl), state="Downloading")
    ctx.session.add(copy)
    ctx.session.flush()
    return {
        "template_id": tmpl.id,
        "url": tmpl.url,
        "format": tmpl.format,
        "checksum": tmpl.checksum,
        "store_copy_id": copy.id,
    }


def store_path(tmpl: Template) -> str:
    """Where a template's file lives on an image store, derived from its id."""
    ext = "iso" if tmpl.is_iso else "qcow2"
    return f"template/{tmpl.id}/{tmpl.id}.{ext}"


def get_template(ctx: CallContext, template_id: str, iso: bool | None = None, param: str = "id") -> Template:
    """A template or ISO the caller may use: public, or of an account it may act on."""
    tmpl = ctx.session.get(Template, template_id)
    label = "ISO" if iso else "template"
    if tmpl is None or tmpl.removed is not None or (iso is not None and tmpl.is_iso != iso):
        raise NotFound(f"Unable to find {label} with {param}={template_id}")
    if not tmpl.is_public and not ctx.is_root_admin:
        acct = ctx.session.get(Account, tmpl.account_id)
        assert acct is not None
        try:
            check_account_access(ctx, acct)
        except PermissionDenied:
            raise NotFound(f"Unable to find {label} with {param}={template_id}") from None
    return tmpl


def list_templates(ctx: CallContext, args: dict[str, Any], page: Page, iso: bool) -> tuple[list[Template], int]:
    """listTemplates/listIsos with CloudStack's filters (featured, self, executable...)."""
    flt = (args.get("templatefilter") or args.get("isofilter") or "executable").lower()
    if flt not in FILTERS:
        raise InvalidParameter(f"Parameter templatefilter must be one of {', '.join(FILTERS)}")
    q = select(Template).where(Template.removed.is_(None), Template.is_iso.is_(iso))
    if not args.get("parenttemplateid") and not args.get("id"):
        q = q.where(Template.parent_id.is_(None))
    mine = owner_scope(ctx, {**args, "listall": flt == "all" and ctx.is_admin}).condition(Template.account_id)
    ready = Template.state == "Ready"
    if flt == "featured":
        q = q.where(Template.is_featured.is_(True), Template.is_public.is_(True))
    elif flt == "self":
        q = q.where(mine)
    elif flt == "selfexecutable":
        q = q.where(mine, ready)
    elif flt == "sharedexecutable":
        q = q.where(Template.id.is_(None))  # sharing with other accounts is not offered yet
    elif flt == "executable":
        q = q.where((mine | Template.is_public.is_(True)), ready)
    elif flt == "community":
        q = q.where(Template.is_public.is_(True), Template.is_featured.is_(False))
    elif not ctx.is_root_admin:
        # "all" for a domain admin: its domain tree's templates (and the public ones everyone sees).
        q = q.where(mine | Template.is_public.is_(True))
    for param, col in (
        ("id", Template.id),
        ("name", Template.name),
        ("hypervisor", Template.hypervisor),
        ("parenttemplateid", Template.parent_id),
    ):
        if args.get(param):
            q = q.where(col == args[param])
    if args.get("zoneid"):
        q = q.where((Template.zone_id == args["zoneid"]) | Template.zone_id.is_(None))
    q = q.where(*tagged(Template.id, args.get("tags")))
    return run_page(ctx.session, q, page, (Template.name,), (Template.created, Template.disk_index))


def update_template(ctx: CallContext, args: dict[str, Any], iso: bool) -> Template:
    """updateTemplate/updateIso: the owner changes names and flags."""
    tmpl = get_template(ctx, args["id"], iso)
    check_owner(ctx, tmpl)
    for param, attr in (
        ("name", "name"),
        ("displaytext", "display_text"),
        ("bootable", "bootable"),
        ("ostypeid", "os_type"),
        ("passwordenabled", "password_enabled"),
        ("isfeatured", "is_featured"),
        ("ispublic", "is_public"),
        ("isextractable", "is_extractable"),
    ):
        if args.get(param) is not None:
            if param in ("isfeatured", "ispublic") and not ctx.is_admin:
                raise PermissionDenied(f"Only admins may change {param}")
            setattr(tmpl, attr, args[param])
    return tmpl


def check_owner(ctx: CallContext, tmpl: Template) -> None:

    acct = ctx.session.get(Account, tmpl.account_id)
    assert acct is not None
    check_account_access(ctx, acct)


def family(ctx: CallContext, tmpl: Template) -> list[Template]:
    """The template and its data-disk children, root first."""
    children = ctx.session.scalars(
        select(Template).where(Template.parent_id == tmpl.id, Template.removed.is_(None)).order_by(Template.disk_index)
    )
    return [tmpl, *children]
