"""Templates and ISOs: register (download to an image store or straight onto a primary pool),
list with CloudStack's filters, update, delete, copy to another store or pool, and multi-disk
templates (data-disk children)."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select

from strato.db.models import (
    Account,
    ImageStore,
    Layer,
    StoragePool,
    Template,
    TemplateStoreCopy,
    VirtualMachine,
    Volume,
    Zone,
)
from strato.db.models.storage import LAYER_TEMPLATE
from strato.errors import InvalidParameter, NotFound, PermissionDenied, ResourceInUse
from strato.services.core import jobs
from strato.services.core.access import check_account_access, get_vm, owner_scope
from strato.services.core.context import CallContext
from strato.services.core.listing import Page, run_page
from strato.services.core.lookup import get_live
from strato.services.storage.volumes import get_volume

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


def _store_in_zone(ctx: CallContext, zone_id: str | None, store_id: str | None) -> ImageStore:
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


def _pool(ctx: CallContext, pool_id: str, param: str) -> StoragePool:
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
    plan = [_destination(ctx, tmpl, zone_id, args.get("imagestoreid"), args.get("storageid"), "")]
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
            _destination(
                ctx,
                child,
                zone_id,
                disk.get("imagestoreid"),
                disk.get("storageid"),
                f"datadisks[{index - 1}].",
            )
        )
    return tmpl, plan


def _destination(
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
        pool = _pool(ctx, pool_id, f"{prefix}storageid")
        if zone_id and pool.zone_id != zone_id:
            raise InvalidParameter(f"Pool {pool.name} is not in the given zone")
        return {
            "template_id": tmpl.id,
            "url": tmpl.url,
            "format": tmpl.format,
            "checksum": tmpl.checksum,
            "pool_id": pool.id,
        }
    store = _store_in_zone(ctx, zone_id, store_id)
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
    ext = "iso" if tmpl.is_iso else "qcow2"
    return f"template/{tmpl.id}/{tmpl.id}.{ext}"


def get_template(ctx: CallContext, template_id: str, iso: bool | None = None, param: str = "id") -> Template:
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
    elif not ctx.is_admin:
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
    return run_page(ctx.session, q, page, (Template.name,), (Template.created, Template.disk_index))


def update_template(ctx: CallContext, args: dict[str, Any], iso: bool) -> Template:
    tmpl = get_template(ctx, args["id"], iso)
    _check_owner(ctx, tmpl)
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


def _check_owner(ctx: CallContext, tmpl: Template) -> None:

    acct = ctx.session.get(Account, tmpl.account_id)
    assert acct is not None
    check_account_access(ctx, acct)


def family(ctx: CallContext, tmpl: Template) -> list[Template]:
    """The template and its data-disk children, root first."""
    children = ctx.session.scalars(
        select(Template).where(Template.parent_id == tmpl.id, Template.removed.is_(None)).order_by(Template.disk_index)
    )
    return [tmpl, *children]


def check_deletable(ctx: CallContext, tmpl: Template) -> None:
    """Refused while a volume's chain rests on one of the template's layers, or a VM uses the ISO."""
    ids = [t.id for t in family(ctx, tmpl)]
    if tmpl.is_iso:
        vm = ctx.session.scalar(
            select(VirtualMachine).where(VirtualMachine.iso_id == tmpl.id, VirtualMachine.removed.is_(None))
        )
        if vm is not None:
            raise ResourceInUse(f"ISO {tmpl.name} is attached to VM {vm.name}; detach it first")
        return
    bases = ctx.session.scalars(
        select(Layer).where(Layer.template_id.in_(ids), Layer.kind == LAYER_TEMPLATE, Layer.removed.is_(None))
    ).all()
    for base in bases:
        child = ctx.session.scalar(select(Layer).where(Layer.parent_id == base.id, Layer.removed.is_(None)))
        if child is not None:
            volume = ctx.session.get(Volume, child.volume_id) if child.volume_id else None
            pool = ctx.session.get(StoragePool, base.pool_id)
            who = f"volume {volume.name}" if volume is not None else f"layer {child.path}"
            raise ResourceInUse(
                f"Template {tmpl.name} cannot be deleted: {who} still depends on its layer on pool "
                f"{pool.name if pool else base.pool_id}"
            )


# --- jobs queued from the API ----------------------------------------------------------------------


def _queue(ctx: CallContext, kind: str, cmd: str, tmpl: Template, params: dict[str, Any], extra: list[str]) -> str:
    return jobs.submit(ctx, kind, cmd, params, [f"template:{tmpl.id}", *extra], "Template", tmpl.id)


def submit_download(ctx: CallContext, tmpl: Template, plan: list[dict[str, Any]]) -> str:
    return _queue(ctx, "template.download", "registerTemplate", tmpl, {"template_id": tmpl.id, "plan": plan}, [])


def copy_to(ctx: CallContext, args: dict[str, Any], iso: bool) -> tuple[Template, str]:
    """copyTemplate: to the image store of another zone, or (Strato) to a given store or pool."""
    tmpl = get_template(ctx, args["id"], iso)
    if not ctx.is_admin:
        _check_owner(ctx, tmpl)  # copies use the cloud's storage: owners and admins only, as CloudStack
    if tmpl.state != "Ready":
        raise InvalidParameter(f"Template {tmpl.name} is not ready ({tmpl.state})")
    targets = [x for x in ("destzoneid", "destimagestoreid", "deststorageid") if args.get(x)]
    if len(targets) != 1:
        raise InvalidParameter("Give exactly one of destzoneid, destimagestoreid or deststorageid")
    members = family(ctx, tmpl)
    if args.get("deststorageid"):
        pool = _pool(ctx, args["deststorageid"], "deststorageid")
        params = {"template_ids": [t.id for t in members], "pool_id": pool.id}
        return tmpl, _queue(ctx, "template.copy", "copyTemplate", tmpl, params, [f"pool:{pool.id}"])
    store = _store_in_zone(ctx, args.get("destzoneid"), args.get("destimagestoreid"))
    for member in members:
        exists = ctx.session.scalar(
            select(TemplateStoreCopy).where(
                TemplateStoreCopy.template_id == member.id,
                TemplateStoreCopy.store_id == store.id,
                TemplateStoreCopy.removed.is_(None),
            )
        )
        if exists is None:
            ctx.session.add(
                TemplateStoreCopy(template_id=member.id, store_id=store.id, path=store_path(member), state="Copying")
            )
    ctx.session.flush()
    params = {"template_ids": [t.id for t in members], "store_id": store.id}
    return tmpl, _queue(ctx, "template.copy", "copyTemplate", tmpl, params, [f"store:{store.id}"])


def prepare(ctx: CallContext, args: dict[str, Any]) -> tuple[Template, str]:
    """prepareTemplate: put the template on a primary pool ahead of use (admins)."""
    tmpl = get_template(ctx, args["templateid"], iso=False, param="templateid")
    if tmpl.state != "Ready":
        raise InvalidParameter(f"Template {tmpl.name} is not ready ({tmpl.state})")
    if not args.get("storageid"):
        raise InvalidParameter("Parameter storageid is required: the pool to put the template on")
    pool = _pool(ctx, args["storageid"], "storageid")
    if pool.zone_id != args["zoneid"]:
        raise InvalidParameter(f"Storage pool {pool.name} is not in the given zone")
    params = {"template_ids": [t.id for t in family(ctx, tmpl)], "pool_id": pool.id}
    return tmpl, _queue(ctx, "template.copy", "prepareTemplate", tmpl, params, [f"pool:{pool.id}"])


def delete(ctx: CallContext, args: dict[str, Any], iso: bool) -> str:
    tmpl = get_template(ctx, args["id"], iso)
    _check_owner(ctx, tmpl)
    if tmpl.parent_id is not None:
        raise InvalidParameter(f"Template {tmpl.name} is a data disk of another template; delete its parent")
    if tmpl.state == "Downloading":
        raise InvalidParameter(f"Template {tmpl.name} is still downloading; wait for it to end")
    check_deletable(ctx, tmpl)
    members = family(ctx, tmpl)
    for member in members:  # no new deploy or copy starts from it; the job checks users again
        member.details = {**(member.details or {}), "state_before_delete": member.state}
        member.state = "Deleting"
    return _queue(
        ctx,
        "template.delete",
        "deleteIso" if iso else "deleteTemplate",
        tmpl,
        {"template_ids": [t.id for t in members]},
        [],
    )


def create_from(ctx: CallContext, args: dict[str, Any]) -> tuple[Template, str]:
    """createTemplate from one volume, or (Strato) from a whole stopped VM: a multi-disk template.
    Each disk goes to the chosen image store or pool (default: the zone's image store)."""

    if bool(args.get("volumeid")) == bool(args.get("virtualmachineid")):
        raise InvalidParameter("Give exactly one of volumeid or virtualmachineid")
    if args.get("snapshotid"):
        raise InvalidParameter("Templates from volume snapshots are not offered yet; use volumeid")
    if args.get("volumeid"):
        volumes = [get_volume(ctx, args["volumeid"], "volumeid")]
    else:
        vm = get_vm(ctx, args["virtualmachineid"], "virtualmachineid")
        volumes = list(
            ctx.session.scalars(
                select(Volume).where(Volume.vm_id == vm.id, Volume.removed.is_(None)).order_by(Volume.device_id)
            )
        )
    for vol in volumes:
        if vol.state != "Ready" or not vol.top_layer_id:
            raise InvalidParameter(f"Volume {vol.name} is {vol.state}; it must be Ready")
        if vol.vm_id:
            owner_vm = ctx.session.get(VirtualMachine, vol.vm_id)
            if owner_vm is not None and owner_vm.state != "Stopped":
                raise InvalidParameter(
                    f"VM {owner_vm.name} is {owner_vm.state}: stop it first, so that the "
                    "template is a consistent copy of its disks"
                )
    overrides = {d.get("volumeid"): d for d in args.get("datadisks") or []}
    zone_id = volumes[0].zone_id
    root: Template | None = None
    disks: list[dict[str, Any]] = []
    for index, vol in enumerate(volumes):
        tmpl = Template(
            name=args["name"] if index == 0 else f"{args['name']}-disk{index}",
            display_text=(args.get("displaytext") or args["name"]) if index == 0 else f"Data disk {index}",
            zone_id=zone_id,
            format="QCOW2",
            os_type=args.get("ostypeid") or "Other Linux (64-bit)",
            is_public=bool(args.get("ispublic")) and ctx.is_admin,
            is_featured=bool(args.get("isfeatured")) and ctx.is_admin,
            bootable=index == 0,
            password_enabled=bool(args.get("passwordenabled")),
            template_type="USER" if index == 0 else "DATADISK",
            parent_id=root.id if root else None,
            disk_index=index,
            state="Creating",
            virtual_size=vol.size,
            account_id=ctx.account.id,
            domain_id=ctx.account.domain_id,
        )
        ctx.session.add(tmpl)
        ctx.session.flush()
        root = root or tmpl
        choice = overrides.get(vol.id, {})
        store_id = choice.get("imagestoreid") or (None if choice.get("storageid") else args.get("imagestoreid"))
        pool_id = choice.get("storageid") or (None if choice.get("imagestoreid") else args.get("storageid"))
        dest = _destination(ctx, tmpl, zone_id, store_id, pool_id, "")
        disks.append({**dest, "volume_id": vol.id})
    assert root is not None
    locks = [f"volume:{v.id}" for v in volumes] + ([f"vm:{volumes[0].vm_id}"] if volumes[0].vm_id else [])
    return root, _queue(ctx, "template.create", "createTemplate", root, {"disks": disks}, locks)
