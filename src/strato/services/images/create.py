"""createTemplate: from one volume, or (Strato) from every disk of a stopped VM, each disk flattened by an
agent into the new template's file on an image store or pool. The template rows are made at the request
(state Creating); until every disk is written nothing stands, and a failure or crash removes them."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, ClassVar

from pydantic import BaseModel
from sqlalchemy import select
from sqlalchemy.orm import Session

from strato.db.base import utcnow
from strato.db.models import ImageStore, Layer, StoragePool, Template, TemplateStoreCopy, VirtualMachine, Volume
from strato.engine.jobkinds import JobResult
from strato.engine.operation import Operation, Step, StepData
from strato.errors import InvalidParameter, NotFound
from strato.protocol.messages import ConvertLayer, LayerRef
from strato.services.core import jobs
from strato.services.core.access import get_vm
from strato.services.core.agents import agent_errors, host_client
from strato.services.core.context import CallContext
from strato.services.core.reach import host_for, store_ref
from strato.services.images.placement import Destination, job_error_text, live_template, record_ready, unplace
from strato.services.images.templates import destination
from strato.services.storage.layers import ref, template_layer_path
from strato.services.storage.snapshots import backed_up, get_snapshot, snapshot_file
from strato.services.storage.volumes import get_volume


class CreateParams(BaseModel):
    disks: list[Destination]  # each with its volume_id; the root disk first
    vm_id: str | None = None
    snapshot_id: str | None = None
    """From a volume snapshot (one disk, no volume): its file on the image store is the source."""


class CreateTemplate(Operation[CreateParams]):
    """One "convert" step per volume; "ready" (every disk written) is the commit."""

    kind: ClassVar[str] = "template.create"
    cmd: ClassVar[str] = "createTemplate"
    event: ClassVar[str | None] = "TEMPLATE.CREATE"
    params_model = CreateParams

    @classmethod
    def resources(cls, params: CreateParams) -> list[str]:
        locks = [f"template:{params.disks[0].template_id}"]
        locks += [f"volume:{d.volume_id}" for d in params.disks if d.volume_id]
        locks += [f"snapshot:{params.snapshot_id}"] if params.snapshot_id else []
        return locks + ([f"vm:{params.vm_id}"] if params.vm_id else [])

    @classmethod
    def check(cls, session: Session, params: CreateParams) -> None:
        if params.snapshot_id:
            live_template(session, params.disks[0].template_id)
            backed_up(session, params.snapshot_id)
            return
        for disk in params.disks:
            live_template(session, disk.template_id)
            vol = session.get(Volume, disk.volume_id)
            if vol is None or vol.removed is not None:
                raise NotFound(f"Unable to find volume with volumeid={disk.volume_id}")
            check_volume(session, vol)

    def steps(self) -> Sequence[Step]:
        out = [Step(f"convert disk {i}", self._converter(i, d), undo=self._unplacer(d))
               for i, d in enumerate(self.params.disks)]  # fmt: skip
        out.append(Step("ready", self._ready, commit=True))
        return out

    def _converter(self, index: int, disk: Destination) -> Callable[[], StepData]:
        def run() -> StepData:
            with self.db.session() as s:
                src_pools: list[StoragePool] = []
                src_stores: list[ImageStore] = []
                if self.params.snapshot_id:
                    source, snap_store = snapshot_file(s, backed_up(s, self.params.snapshot_id))
                    src_stores.append(snap_store)
                else:
                    volume = s.get(Volume, disk.volume_id)
                    assert volume is not None and volume.top_layer_id and volume.pool_id
                    top = s.get(Layer, volume.top_layer_id)
                    src_pool = s.get(StoragePool, volume.pool_id)
                    assert top is not None and src_pool is not None
                    source = ref(src_pool, top.path)
                    src_pools.append(src_pool)
                if disk.store_copy_id:
                    dest = s.get(TemplateStoreCopy, disk.store_copy_id)
                    assert dest is not None
                    store = s.get(ImageStore, dest.store_id)
                    assert store is not None
                    host = host_for(s, src_pools, [*src_stores, store])
                    target = LayerRef(pool=store_ref(store), name=dest.path)
                else:
                    pool = s.get(StoragePool, disk.pool_id)
                    assert pool is not None
                    host = host_for(s, [*src_pools, pool], src_stores)
                    target = ref(pool, template_layer_path(disk.template_id))
                client, host_name = host_client(host), host.name
            progress = self.job.part_progress(index, len(self.params.disks))
            with agent_errors(host_name):
                info = client.run_long(ConvertLayer(source=source, target=target), on_progress=progress)
            record_ready(self.db, disk, info)
            return {"virtual_size": info.virtual_size, "physical_size": info.physical_size}

        return run

    def _unplacer(self, disk: Destination) -> Callable[[], None]:
        return lambda: unplace(self.db, disk)

    def _ready(self) -> None:
        with self.db.session() as s:
            for disk in self.params.disks:
                tmpl = s.get(Template, disk.template_id)
                assert tmpl is not None
                tmpl.state, tmpl.status_text = "Ready", "Download Complete"

    def result(self) -> JobResult:
        return {"type": "template", "id": self.params.disks[0].template_id}

    @classmethod
    def failed(cls, session: Session, params: CreateParams) -> None:
        text = job_error_text(session, cls.kind, params.disks[0].template_id, "failed")
        for disk in params.disks:
            tmpl = session.get(Template, disk.template_id)
            if tmpl is not None:
                tmpl.state, tmpl.status_text = "Error", text
                tmpl.removed = tmpl.removed or utcnow()
            if disk.store_copy_id:
                row = session.get(TemplateStoreCopy, disk.store_copy_id)
                if row is not None:
                    row.state, row.removed = "Error", row.removed or utcnow()


def check_volume(session: Session, vol: Volume) -> None:
    """A template is a consistent copy of a Ready volume whose VM (if any) is stopped."""
    if vol.state != "Ready" or not vol.top_layer_id:
        raise InvalidParameter(f"Volume {vol.name} is {vol.state}; it must be Ready")
    if vol.vm_id:
        owner_vm = session.get(VirtualMachine, vol.vm_id)
        if owner_vm is not None and owner_vm.state != "Stopped":
            raise InvalidParameter(
                f"VM {owner_vm.name} is {owner_vm.state}: stop it first, so that the "
                "template is a consistent copy of its disks"
            )


def create_from(ctx: CallContext, args: dict[str, Any]) -> tuple[Template, str]:
    """createTemplate from one volume, or (Strato) from a whole stopped VM: a multi-disk template.
    Each disk goes to the chosen image store or pool (default: the zone's image store)."""

    if sum(bool(args.get(p)) for p in ("volumeid", "virtualmachineid", "snapshotid")) != 1:
        raise InvalidParameter("Give exactly one of volumeid, snapshotid or virtualmachineid")
    if args.get("snapshotid"):
        return _from_snapshot(ctx, args)
    if args.get("volumeid"):
        volumes = [get_volume(ctx, args["volumeid"], "volumeid")]
    else:
        vm = get_vm(ctx, args["virtualmachineid"], "virtualmachineid")
        volumes = list(
            ctx.session.scalars(
                select(Volume).where(Volume.vm_id == vm.id, Volume.removed.is_(None)).order_by(Volume.device_id)
            )
        )
    if not volumes:
        raise InvalidParameter("The VM has no volumes to make a template of")
    for vol in volumes:
        check_volume(ctx.session, vol)  # before any row is made; the operation's check runs it again
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
        dest = destination(ctx, tmpl, zone_id, store_id, pool_id, "")
        disks.append({**dest, "volume_id": vol.id})
    assert root is not None
    params = CreateParams(disks=[Destination.model_validate(d) for d in disks], vm_id=volumes[0].vm_id)
    return root, jobs.submit_operation(ctx, CreateTemplate, params, "Template", root.id)


def _from_snapshot(ctx: CallContext, args: dict[str, Any]) -> tuple[Template, str]:
    """createTemplate with snapshotid: one disk, from the snapshot's file on its image store."""
    snap = get_snapshot(ctx, args["snapshotid"], "snapshotid")
    backed_up(ctx.session, snap.id)
    tmpl = Template(
        name=args["name"],
        display_text=args.get("displaytext") or args["name"],
        zone_id=snap.zone_id,
        format="QCOW2",
        os_type=args.get("ostypeid") or "Other Linux (64-bit)",
        is_public=bool(args.get("ispublic")) and ctx.is_admin,
        is_featured=bool(args.get("isfeatured")) and ctx.is_admin,
        bootable=True,
        password_enabled=bool(args.get("passwordenabled")),
        template_type="USER",
        state="Creating",
        virtual_size=snap.virtual_size,
        account_id=ctx.account.id,
        domain_id=ctx.account.domain_id,
    )
    ctx.session.add(tmpl)
    ctx.session.flush()
    dest = destination(ctx, tmpl, snap.zone_id, args.get("imagestoreid"), args.get("storageid"), "")
    params = CreateParams(disks=[Destination.model_validate(dest)], snapshot_id=snap.id)
    return tmpl, jobs.submit_operation(ctx, CreateTemplate, params, "Template", tmpl.id)
