"""Async jobs of templates: download (register), copy to a store or pool, create from volumes, delete.

Each job cleans up what it wrote when it fails: a template that could not be fetched leaves no file on
any store or pool, and its rows end in Error (never Downloading) with the reason in its status.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from strato.db.base import utcnow
from strato.db.engine import Database
from strato.db.models import (
    Host,
    ImageStore,
    Job,
    Layer,
    StoragePool,
    Template,
    TemplateStoreCopy,
    VirtualMachine,
    Volume,
)
from strato.db.models.storage import LAYER_TEMPLATE
from strato.engine.context import JobContext
from strato.engine.jobkinds import JobResult, job_kind
from strato.errors import ResourceInUse, ResourceUnavailable
from strato.protocol.client import AgentClient, AgentClientError
from strato.protocol.messages import ConvertLayer, CopyLayer, FetchImage, LayerInfo, LayerRef, RemoveLayer
from strato.services.core.agents import agent_errors, host_client
from strato.services.core.reach import host_for, store_ref, up_hosts
from strato.services.storage.layers import (
    ensure_template_on_pool,
    ref,
    template_layer_path,
    template_source,
)


def _store_host(s: Session, store: ImageStore) -> Host:
    hosts = up_hosts(s, store.zone_id)
    if not hosts:
        raise ResourceUnavailable(f"No host that is Up can reach image store {store.name}")
    return hosts[0]


def _target(db: Database, entry: dict[str, Any]) -> tuple[LayerRef, AgentClient, str]:
    """Where one disk of a template goes, and the agent that writes it."""
    with db.session() as s:
        if entry.get("store_copy_id"):
            copy = s.get(TemplateStoreCopy, entry["store_copy_id"])
            assert copy is not None
            store = s.get(ImageStore, copy.store_id)
            assert store is not None
            host = _store_host(s, store)
            return LayerRef(pool=store_ref(store), name=copy.path), host_client(host), host.name
        pool = s.get(StoragePool, entry["pool_id"])
        assert pool is not None
        host = host_for(s, [pool])
        return ref(pool, template_layer_path(entry["template_id"])), host_client(host), host.name


def _record_ready(db: Database, entry: dict[str, Any], info: LayerInfo) -> None:
    with db.session() as s:
        tmpl = s.get(Template, entry["template_id"])
        assert tmpl is not None
        tmpl.virtual_size, tmpl.physical_size = info.virtual_size, info.physical_size
        if entry.get("store_copy_id"):
            copy = s.get(TemplateStoreCopy, entry["store_copy_id"])
            assert copy is not None
            copy.state, copy.download_percent, copy.physical_size = "Ready", 100, info.physical_size
        else:
            s.add(
                Layer(
                    pool_id=entry["pool_id"],
                    path=template_layer_path(entry["template_id"]),
                    kind=LAYER_TEMPLATE,
                    frozen=True,
                    template_id=entry["template_id"],
                    virtual_size=info.virtual_size,
                    physical_size=info.physical_size,
                    state="Ready",
                )
            )


def _remover(client: AgentClient, target: LayerRef) -> Callable[[], None]:
    def undo() -> None:
        client.call(RemoveLayer(layer=target, missing_ok=True))

    return undo


def download(job: JobContext) -> JobResult:
    plan: list[dict[str, Any]] = job.params["plan"]
    for index, entry in enumerate(plan):
        target, client, host_name = _target(job.db, entry)
        cmd = FetchImage(url=entry["url"], target=target, format=entry["format"].lower(), checksum=entry["checksum"])
        with job.step(f"fetch {entry['template_id']}", undo=_remover(client, target)):
            with agent_errors(host_name):
                info = client.run_long(cmd, on_progress=job.part_progress(index, len(plan)))
            _record_ready(job.db, entry, info)
    with job.db.session() as s:
        for entry in plan:
            tmpl = s.get(Template, entry["template_id"])
            assert tmpl is not None
            tmpl.state, tmpl.status_text = "Ready", "Download Complete"
    return {"type": "template", "id": job.params["template_id"]}


def _download_failed(session: Session, job: Job) -> None:
    text = (job.result or {}).get("errortext", "download failed")
    for entry in job.params.get("plan", []):
        tmpl = session.get(Template, entry["template_id"])
        if tmpl is not None:
            tmpl.state, tmpl.status_text = "Error", str(text)[:1024]
        if entry.get("store_copy_id"):
            copy = session.get(TemplateStoreCopy, entry["store_copy_id"])
            if copy is not None:
                copy.state, copy.error_text, copy.removed = "Error", str(text)[:1024], utcnow()
        for layer in session.scalars(
            select(Layer).where(
                Layer.template_id == entry["template_id"],
                Layer.kind == LAYER_TEMPLATE,
                Layer.removed.is_(None),
            )
        ):
            if entry.get("pool_id") == layer.pool_id:
                layer.removed, layer.state = utcnow(), "Removed"


def _download_recover(job: JobContext) -> JobResult:
    """After a crash the download's outcome is unknown: remove whatever it may have written, then fail."""
    for entry in job.params["plan"]:
        try:
            target, client, _ = _target(job.db, entry)
            client.call(RemoveLayer(layer=target, missing_ok=True))
        except (AgentClientError, ResourceUnavailable):
            pass
    raise ResourceUnavailable(
        "The template download was interrupted by a management server restart; "
        "its partial files were removed; register the template again"
    )


job_kind("template.download", recover=_download_recover, on_fail=_download_failed, event="TEMPLATE.CREATE")(download)


# --- copies ----------------------------------------------------------------------------------------


def copy(job: JobContext) -> JobResult:
    """copyTemplate / prepareTemplate: every disk of the template to a store or a pool."""
    ids: list[str] = job.params["template_ids"]
    for index, template_id in enumerate(ids):
        progress = job.part_progress(index, len(ids))
        if job.params.get("pool_id"):
            with job.step(f"prepare {template_id}"):
                ensure_template_on_pool(job.db, template_id, job.params["pool_id"], progress, job_id=job.job_id)
            continue
        with job.db.session() as s:
            store = s.get(ImageStore, job.params["store_id"])
            assert store is not None
            dest = s.scalar(
                select(TemplateStoreCopy).where(
                    TemplateStoreCopy.template_id == template_id,
                    TemplateStoreCopy.store_id == store.id,
                    TemplateStoreCopy.removed.is_(None),
                )
            )
            assert dest is not None
            if dest.state == "Ready":
                continue
            source, host = template_source(s, template_id, [], [store])
            target = LayerRef(pool=store_ref(store), name=dest.path)
            client, host_name, dest_id = host_client(host), host.name, dest.id
        with job.step(f"copy {template_id}", undo=_remover(client, target)):
            with agent_errors(host_name):
                info = client.run_long(CopyLayer(source=source, target=target), on_progress=progress)
            with job.db.session() as s:
                row = s.get(TemplateStoreCopy, dest_id)
                assert row is not None
                row.state, row.download_percent, row.physical_size = "Ready", 100, info.physical_size
    return {"type": "template", "id": ids[0]}


def _copy_failed(session: Session, job: Job) -> None:
    if not job.params.get("store_id"):
        return
    for template_id in job.params["template_ids"]:
        for row in session.scalars(
            select(TemplateStoreCopy).where(
                TemplateStoreCopy.template_id == template_id,
                TemplateStoreCopy.store_id == job.params["store_id"],
                TemplateStoreCopy.state != "Ready",
                TemplateStoreCopy.removed.is_(None),
            )
        ):
            row.state, row.removed = "Error", utcnow()


job_kind("template.copy", recover=copy, on_fail=_copy_failed, event="TEMPLATE.COPY")(copy)


# --- create from volumes ---------------------------------------------------------------------------


def create_from_volumes(job: JobContext) -> JobResult:
    """Flattens each volume's chain into the new template's file on the chosen store or pool."""
    disks: list[dict[str, Any]] = job.params["disks"]
    for index, disk in enumerate(disks):
        with job.db.session() as s:
            volume = s.get(Volume, disk["volume_id"])
            assert volume is not None and volume.top_layer_id and volume.pool_id
            top = s.get(Layer, volume.top_layer_id)
            src_pool = s.get(StoragePool, volume.pool_id)
            assert top is not None and src_pool is not None
            source = ref(src_pool, top.path)
            if disk.get("store_copy_id"):
                dest = s.get(TemplateStoreCopy, disk["store_copy_id"])
                assert dest is not None
                store = s.get(ImageStore, dest.store_id)
                assert store is not None
                host = host_for(s, [src_pool], [store])
                target = LayerRef(pool=store_ref(store), name=dest.path)
            else:
                pool = s.get(StoragePool, disk["pool_id"])
                assert pool is not None
                host = host_for(s, [src_pool, pool])
                target = ref(pool, template_layer_path(disk["template_id"]))
            client, host_name = host_client(host), host.name
        with job.step(f"convert {disk['volume_id']}", undo=_remover(client, target)):
            with agent_errors(host_name):
                info = client.run_long(
                    ConvertLayer(source=source, target=target), on_progress=job.part_progress(index, len(disks))
                )
            _record_ready(job.db, disk, info)
    with job.db.session() as s:
        for disk in disks:
            tmpl = s.get(Template, disk["template_id"])
            assert tmpl is not None
            tmpl.state, tmpl.status_text = "Ready", "Download Complete"
    return {"type": "template", "id": disks[0]["template_id"]}


def _create_failed(session: Session, job: Job) -> None:
    text = str((job.result or {}).get("errortext", "failed"))[:1024]
    for disk in job.params.get("disks", []):
        tmpl = session.get(Template, disk["template_id"])
        if tmpl is not None:
            tmpl.state, tmpl.status_text, tmpl.removed = "Error", text, utcnow()
        if disk.get("store_copy_id"):
            row = session.get(TemplateStoreCopy, disk["store_copy_id"])
            if row is not None:
                row.state, row.removed = "Error", utcnow()


job_kind("template.create", on_fail=_create_failed, event="TEMPLATE.CREATE")(create_from_volumes)


# --- delete ----------------------------------------------------------------------------------------


def delete(job: JobContext) -> JobResult:
    """Removes every file of the template (and its data-disk children) from stores and pools."""
    ids: list[str] = job.params["template_ids"]
    for template_id in ids:
        with job.db.session() as s:
            work: list[tuple[LayerRef, Host, str, str]] = []
            for copy_row in s.scalars(
                select(TemplateStoreCopy).where(
                    TemplateStoreCopy.template_id == template_id, TemplateStoreCopy.removed.is_(None)
                )
            ):
                store = s.get(ImageStore, copy_row.store_id)
                assert store is not None
                work.append(
                    (
                        LayerRef(pool=store_ref(store), name=copy_row.path),
                        _store_host(s, store),
                        "copy",
                        copy_row.id,
                    )
                )
            _check_still_unused(s, template_id)
            for layer in s.scalars(
                select(Layer).where(
                    Layer.template_id == template_id, Layer.kind == LAYER_TEMPLATE, Layer.removed.is_(None)
                )
            ):
                pool = s.get(StoragePool, layer.pool_id)
                assert pool is not None
                work.append((ref(pool, layer.path), host_for(s, [pool]), "layer", layer.id))
        for target, host, kind, row_id in work:
            with job.step(f"remove {target.name}"):
                with agent_errors(host.name):
                    host_client(host).call(RemoveLayer(layer=target, missing_ok=True))
                with job.db.session() as s:
                    row = s.get(TemplateStoreCopy if kind == "copy" else Layer, row_id)
                    if row is not None:
                        row.removed = utcnow()
        with job.db.session() as s:
            tmpl = s.get(Template, template_id)
            if tmpl is not None:
                tmpl.removed, tmpl.state = utcnow(), "Removed"
    return {"success": True}


def _check_still_unused(s: Session, template_id: str) -> None:
    """Checked again in the job: a disk may have been cloned from it, or an ISO attached, since the
    request was accepted."""
    tmpl = s.get(Template, template_id)
    assert tmpl is not None
    if tmpl.is_iso:
        vm = s.scalar(select(VirtualMachine).where(VirtualMachine.iso_id == template_id,
                                                   VirtualMachine.removed.is_(None)))  # fmt: skip
        if vm is not None:
            raise ResourceInUse(f"ISO {tmpl.name} is attached to VM {vm.name}; detach it first")
        return
    bases = select(Layer.id).where(Layer.template_id == template_id, Layer.kind == LAYER_TEMPLATE,
                                   Layer.removed.is_(None))  # fmt: skip
    child = s.scalar(select(Layer).where(Layer.parent_id.in_(bases), Layer.removed.is_(None)))
    if child is not None:
        raise ResourceInUse(f"Template {tmpl.name} cannot be deleted: layer {child.path} still depends on it")


def _delete_failed(session: Session, job: Job) -> None:
    """The template stays usable (whatever was not removed yet is still there)."""
    for template_id in job.params.get("template_ids", []):
        tmpl = session.get(Template, template_id)
        if tmpl is not None and tmpl.removed is None and tmpl.state == "Deleting":
            tmpl.state = str((tmpl.details or {}).get("state_before_delete", "Ready"))


job_kind("template.delete", recover=delete, on_fail=_delete_failed, event="TEMPLATE.DELETE")(delete)
