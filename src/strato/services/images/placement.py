"""Where a template's disk goes (an image store or a primary pool), shared by the operations that write
template files: register (download), create (from a volume), copy. Each helper is safe to run twice."""

from __future__ import annotations

from pydantic import BaseModel
from sqlalchemy import select
from sqlalchemy.orm import Session

from strato.db.base import utcnow
from strato.db.engine import Database
from strato.db.models import Host, ImageStore, Job, Layer, StoragePool, Template, TemplateStoreCopy
from strato.db.models.storage import LAYER_TEMPLATE
from strato.errors import NotFound, ResourceUnavailable
from strato.protocol.client import AgentClient
from strato.protocol.messages import LayerInfo, LayerRef, RemoveLayer
from strato.services.core.agents import agent_errors, host_client
from strato.services.core.reach import host_for, store_ref, up_hosts
from strato.services.storage.layers import ref, template_layer_path


class Destination(BaseModel):
    """One disk of a template and where it goes: a store copy row (made at the request) or a pool."""

    template_id: str
    url: str | None = None
    format: str = "QCOW2"
    checksum: str | None = None
    store_copy_id: str | None = None
    pool_id: str | None = None
    volume_id: str | None = None  # createTemplate: the volume it is made from


def store_host(s: Session, store: ImageStore) -> Host:
    """An Up host of the store's zone (any of them mounts the store)."""
    hosts = up_hosts(s, store.zone_id)
    if not hosts:
        raise ResourceUnavailable(f"No host that is Up can reach image store {store.name}")
    return hosts[0]


def target(db: Database, dest: Destination) -> tuple[LayerRef, AgentClient, str]:
    """The file of one disk, and the agent (and its host's name) that writes it."""
    with db.session() as s:
        if dest.store_copy_id:
            copy = s.get(TemplateStoreCopy, dest.store_copy_id)
            assert copy is not None
            store = s.get(ImageStore, copy.store_id)
            assert store is not None
            host = store_host(s, store)
            return LayerRef(pool=store_ref(store), name=copy.path), host_client(host), host.name
        pool = s.get(StoragePool, dest.pool_id)
        assert pool is not None
        host = host_for(s, [pool])
        return ref(pool, template_layer_path(dest.template_id)), host_client(host), host.name


def record_ready(db: Database, dest: Destination, info: LayerInfo) -> None:
    """The disk's file is complete: its store copy is Ready, or its pool layer row exists Ready (once)."""
    with db.session() as s:
        tmpl = s.get(Template, dest.template_id)
        assert tmpl is not None
        tmpl.virtual_size, tmpl.physical_size = info.virtual_size, info.physical_size
        if dest.store_copy_id:
            copy = s.get(TemplateStoreCopy, dest.store_copy_id)
            assert copy is not None
            copy.state, copy.download_percent, copy.physical_size = "Ready", 100, info.physical_size
            return
        assert dest.pool_id is not None
        layer = _pool_layer(s, dest.template_id, dest.pool_id)
        if layer is None:
            layer = Layer(pool_id=dest.pool_id, path=template_layer_path(dest.template_id), kind=LAYER_TEMPLATE,
                          frozen=True, template_id=dest.template_id)  # fmt: skip
            s.add(layer)
        layer.virtual_size, layer.physical_size, layer.state = info.virtual_size, info.physical_size, "Ready"


def unplace(db: Database, dest: Destination) -> None:
    """Takes one disk's placement back, also half done: its file is removed (if any) and its row ends."""
    where, client, host_name = target(db, dest)
    with agent_errors(host_name):
        client.call(RemoveLayer(layer=where, missing_ok=True))
    with db.session() as s:
        if dest.store_copy_id:
            copy = s.get(TemplateStoreCopy, dest.store_copy_id)
            if copy is not None and copy.removed is None:
                copy.state, copy.removed = "Error", utcnow()
        elif dest.pool_id is not None:
            layer = _pool_layer(s, dest.template_id, dest.pool_id)
            if layer is not None:
                layer.state, layer.removed = "Removed", utcnow()


def _pool_layer(s: Session, template_id: str, pool_id: str) -> Layer | None:
    return s.scalar(select(Layer).where(Layer.pool_id == pool_id, Layer.path == template_layer_path(template_id),
                                        Layer.removed.is_(None)))  # fmt: skip


def live_template(s: Session, template_id: str) -> Template:
    """The template row, refused once it is removed (a job queued before a deletion)."""
    tmpl = s.get(Template, template_id)
    if tmpl is None or tmpl.removed is not None:
        raise NotFound(f"Unable to find template with id={template_id}")
    return tmpl


def job_error_text(s: Session, kind: str, instance_id: str, default: str) -> str:
    """The error text of the newest job of `kind` on the resource (the one being failed: `failed` hooks
    get only the parameters, and a template's status shows the reason)."""
    job = s.scalar(select(Job).where(Job.kind == kind, Job.instance_id == instance_id).order_by(Job.seq.desc()))
    text = (job.result or {}).get("errortext") if job is not None else None
    return str(text or default)[:1024]
