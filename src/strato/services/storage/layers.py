"""Layers on pools: template copies cached per pool, linked-clone top layers, and their removal.

Agent calls run outside database sessions (SQLite has a single writer; a long copy must not hold it).
"""

from __future__ import annotations

import time
from collections.abc import Callable

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from strato.db.base import utcnow
from strato.db.engine import Database
from strato.db.models import Host, ImageStore, Job, Layer, StoragePool, Template, TemplateStoreCopy, Volume
from strato.db.models.jobs import JOB_ACTIVE
from strato.db.models.storage import LAYER_TEMPLATE, LAYER_VOLUME
from strato.engine.context import JobContext
from strato.errors import InvalidState, ResourceInUse, ResourceUnavailable
from strato.protocol.messages import CopyLayer, CreateLayer, LayerInfo, LayerRef, RemoveLayer
from strato.services.core.agents import agent_errors, host_client
from strato.services.core.reach import host_for, host_for_cleanup, pool_ref, store_ref

ProgressFn = Callable[[int, int], None]


def template_layer_path(template_id: str) -> str:
    """Where a template's base layer lives on a pool, derived from its id."""
    return f"templates/{template_id}.qcow2"


def volume_layer_path(volume_id: str, layer_id: str) -> str:
    """Where a volume's layer lives on a pool, one directory per volume."""
    return f"volumes/{volume_id}/{layer_id}.qcow2"


def ref(pool: StoragePool, path: str) -> LayerRef:
    """A file on a pool as the agent addresses it."""
    return LayerRef(pool=pool_ref(pool), name=path)


def ensure_template_on_pool(
    db: Database,
    template_id: str,
    pool_id: str,
    progress: ProgressFn | None = None,
    job_id: str | None = None,
    timeout_s: float = 3600,
) -> str:
    """Returns the id of the template's Ready base layer on the pool, copying it there first if needed.

    Concurrent deploys of one template to one pool copy it once: the first inserts the layer row
    (unique per live pool and path, marked with its job) and copies; the others wait for it. A row left
    Creating by a job that has ended (a crash), or by this very job before a restart, is cleared and the
    copy made again."""
    path = template_layer_path(template_id)
    for _attempt in range(3):
        claimed, layer_id = _claim_template_row(db, template_id, pool_id, path, job_id)
        if claimed:
            return _copy_into(db, template_id, pool_id, path, layer_id, progress)
        if _wait_ready(db, layer_id, job_id, timeout_s):
            return layer_id
        remove_unfinished_layer(db, layer_id)
    raise ResourceUnavailable(f"Could not get template {template_id} onto the pool: its copy keeps failing")


def _claim_template_row(
    db: Database, template_id: str, pool_id: str, path: str, job_id: str | None
) -> tuple[bool, str]:
    """(True, id) when this job inserted the row and must copy; (False, id) of another job's row."""
    live = select(Layer).where(Layer.pool_id == pool_id, Layer.path == path, Layer.removed.is_(None))
    with db.session() as s:
        existing = s.scalar(live)
        if existing is not None:
            return False, existing.id
        tmpl = s.get(Template, template_id)
        assert tmpl is not None
        if tmpl.state != "Ready" or tmpl.removed is not None:
            raise InvalidState(f"Template {tmpl.name} is {tmpl.state}; it cannot be copied to a pool now")
        layer = Layer(pool_id=pool_id, path=path, kind=LAYER_TEMPLATE, frozen=True, template_id=template_id,
                      virtual_size=tmpl.virtual_size, state="Creating", creating_job=job_id)  # fmt: skip
        s.add(layer)
        try:
            s.flush()
        except IntegrityError:
            s.rollback()
            existing = s.scalar(live)
            assert existing is not None
            return False, existing.id
        return True, layer.id


def _copy_into(
    db: Database, template_id: str, pool_id: str, path: str, layer_id: str, progress: ProgressFn | None
) -> str:
    try:
        info = _copy_template_to_pool(db, template_id, pool_id, path, progress)
    except BaseException:
        with db.session() as s:
            row = s.get(Layer, layer_id)
            if row is not None:
                s.delete(row)
        raise
    with db.session() as s:
        row = s.get(Layer, layer_id)
        assert row is not None
        row.state, row.virtual_size, row.physical_size = "Ready", info.virtual_size, info.physical_size
    return layer_id


def _wait_ready(db: Database, layer_id: str, job_id: str | None, timeout_s: float) -> bool:
    """True once the layer is Ready; False when it will never be (gone, or its job ended without it)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with db.session() as s:
            row = s.get(Layer, layer_id)
            if row is None or row.removed is not None:
                return False
            if row.state == "Ready":
                return True
            if row.creating_job is not None and (row.creating_job == job_id or not _job_active(s, row.creating_job)):
                return False
        time.sleep(0.3)
    raise ResourceUnavailable("Timed out waiting for the template's copy on the pool")


def _job_active(session: Session, job_id: str) -> bool:
    status = session.scalar(select(Job.status).where(Job.id == job_id))
    return status in JOB_ACTIVE


def remove_unfinished_layer(db: Database, layer_id: str) -> None:
    """Deletes the file (if any) of a layer whose creation did not finish, and its row."""
    with db.session() as s:
        row = s.get(Layer, layer_id)
        if row is None or row.removed is not None or row.state == "Ready":
            return
        pool = s.get(StoragePool, row.pool_id)
        assert pool is not None
        host = host_for_cleanup(s, [pool])
        client, host_name, target = host_client(host), host.name, ref(pool, row.path)
    with agent_errors(host_name):
        client.call(RemoveLayer(layer=target, missing_ok=True))
    with db.session() as s:
        row = s.get(Layer, layer_id)
        if row is not None:
            row.removed, row.state = utcnow(), "Removed"


def remove_layers_created_by(db: Database, job_id: str) -> None:
    """After a crash: removes every layer the job had begun and not finished (recovery hooks call this)."""
    with db.session() as s:
        ids = list(s.scalars(select(Layer.id).where(Layer.creating_job == job_id, Layer.state == "Creating",
                                                    Layer.removed.is_(None))))  # fmt: skip
    for layer_id in ids:
        remove_unfinished_layer(db, layer_id)


def template_source(
    s: Session, template_id: str, pools: list[StoragePool], stores: list[ImageStore]
) -> tuple[LayerRef, Host]:
    """A ready copy of the template (on an image store first, else on a pool not among the targets)
    and an Up host that reads it and reaches the target pools and stores."""
    ready_copies = select(TemplateStoreCopy).where(
        TemplateStoreCopy.template_id == template_id,
        TemplateStoreCopy.state == "Ready",
        TemplateStoreCopy.removed.is_(None),
    )
    for copy in s.scalars(ready_copies):
        store = s.get(ImageStore, copy.store_id)
        if store is None or store.removed is not None:
            continue
        try:
            return LayerRef(pool=store_ref(store), name=copy.path), host_for(s, pools, [store, *stores])
        except ResourceUnavailable:
            continue
    targets = {p.id for p in pools}
    ready_layers = select(Layer).where(
        Layer.template_id == template_id,
        Layer.kind == LAYER_TEMPLATE,
        Layer.state == "Ready",
        Layer.removed.is_(None),
    )
    for layer in s.scalars(ready_layers):
        src_pool = s.get(StoragePool, layer.pool_id)
        if src_pool is None or src_pool.removed is not None or src_pool.id in targets:
            continue
        try:
            return ref(src_pool, layer.path), host_for(s, [*pools, src_pool], stores)
        except ResourceUnavailable:
            continue
    raise ResourceUnavailable(f"Template {template_id} has no ready copy that a host reaching the destination can read")


def _copy_template_to_pool(
    db: Database, template_id: str, pool_id: str, path: str, progress: ProgressFn | None
) -> LayerInfo:
    """Copies from an image store in the pool's zone, else from another pool holding it."""
    with db.session() as s:
        pool = s.get(StoragePool, pool_id)
        assert pool is not None
        target = ref(pool, path)
        source, host = template_source(s, template_id, [pool], [])
        client, host_name = host_client(host), host.name
    with agent_errors(host_name):
        return client.run_long(CopyLayer(source=source, target=target), on_progress=progress)


def create_layer_on(
    db: Database,
    pool_id: str,
    path: str,
    size: int | None,
    backing_id: str | None,
    host_id: str | None = None,
) -> LayerInfo:
    """Creates an empty qcow2 (on a backing layer for a linked clone) through a host reaching the pool."""
    with db.session() as s:
        pool = s.get(StoragePool, pool_id)
        assert pool is not None
        backing = None
        if backing_id:
            row = s.get(Layer, backing_id)
            assert row is not None
            backing = ref(pool, row.path) if row.pool_id == pool.id else None
            if backing is None:
                bpool = s.get(StoragePool, row.pool_id)
                assert bpool is not None
                backing = ref(bpool, row.path)
        host = host_for(s, [pool], prefer=host_id)
        client, host_name = host_client(host), host.name
        target = ref(pool, path)
    with agent_errors(host_name):
        return client.call(CreateLayer(layer=target, size_bytes=size, backing=backing))


def remove_layer_file(db: Database, layer_id: str) -> None:
    """Deletes a layer's file and marks its row removed. Refused while another live layer is on it."""
    with db.session() as s:
        layer = s.get(Layer, layer_id)
        if layer is None or layer.removed is not None:
            return
        child = s.scalar(select(Layer).where(Layer.parent_id == layer.id, Layer.removed.is_(None)))
        if child is not None:
            raise ResourceInUse(f"Layer {layer.path} still backs layer {child.path}")
        pool = s.get(StoragePool, layer.pool_id)
        assert pool is not None
        host = host_for_cleanup(s, [pool])
        target = ref(pool, layer.path)
        client, host_name = host_client(host), host.name
    with agent_errors(host_name):
        client.call(RemoveLayer(layer=target, missing_ok=True))
    with db.session() as s:
        row = s.get(Layer, layer_id)
        if row is not None:
            row.removed = utcnow()
            row.state = "Removed"


def chain_layer_ids(db: Database, top_layer_id: str | None) -> list[str]:
    """The layer ids from the top down to the base (template layers included)."""
    out: list[str] = []
    with db.session() as s:
        current = s.get(Layer, top_layer_id) if top_layer_id else None
        while current is not None:
            out.append(current.id)
            current = s.get(Layer, current.parent_id) if current.parent_id else None
    return out


def remove_volume_layers(db: Database, top_layer_id: str | None) -> None:
    """Removes a volume's own layers top-down; shared template layers stay cached."""
    for layer_id in chain_layer_ids(db, top_layer_id):
        with db.session() as s:
            layer = s.get(Layer, layer_id)
            if layer is None or layer.kind != LAYER_VOLUME:
                break
        remove_layer_file(db, layer_id)


def remove_volume_files(db: Database, volume_id: str) -> None:
    """Removes every live layer of a volume's own, finished or not (what undoes a volume's creation);
    a file already gone is no error. Newest first, so that no layer is removed under its child."""
    with db.session() as s:
        rows = list(s.scalars(select(Layer).where(Layer.volume_id == volume_id, Layer.kind == LAYER_VOLUME,
                                                  Layer.removed.is_(None)).order_by(Layer.created.desc())))  # fmt: skip
        ids = [(r.id, r.state == "Ready") for r in rows]
    for layer_id, ready in ids:
        if ready:
            remove_layer_file(db, layer_id)
        else:
            remove_unfinished_layer(db, layer_id)


def remove_unfinished_volume_layers(db: Database, volume_id: str) -> None:
    """Removes the volume's layers still Creating (a step that made one died or failed half-way)."""
    with db.session() as s:
        ids = list(s.scalars(select(Layer.id).where(Layer.volume_id == volume_id, Layer.removed.is_(None),
                                                    Layer.state == "Creating")))  # fmt: skip
    for layer_id in ids:
        remove_unfinished_layer(db, layer_id)


def unmake_volume_disk(db: Database, volume_id: str) -> None:
    """Undoes the making of a volume's disk: the volume points at no layer, and every layer of its own
    (finished or not) is removed."""
    with db.session() as s:
        vol = s.get(Volume, volume_id)
        if vol is not None:
            vol.top_layer_id = None
    remove_volume_files(db, volume_id)


# --- a volume's own layer, for the operations that make one (createVolume, importVm) ----------------


def new_volume_layer(job: JobContext, volume_id: str, pool_id: str, size: int) -> tuple[str, str]:
    """Inserts the row of a volume's new layer (Creating, marked with the job); its id and path."""
    with job.db.session() as s:
        layer = Layer(pool_id=pool_id, path="", volume_id=volume_id, kind=LAYER_VOLUME, virtual_size=size,
                      state="Creating", creating_job=job.job_id)  # fmt: skip
        s.add(layer)
        s.flush()
        layer.path = volume_layer_path(volume_id, layer.id)
        return layer.id, layer.path


def finish_volume_layer(job: JobContext, layer_id: str, volume_id: str, virtual: int, physical: int) -> None:
    """The layer's file is made: the layer is Ready and the volume's top."""
    with job.db.session() as s:
        layer, vol = s.get(Layer, layer_id), s.get(Volume, volume_id)
        assert layer is not None and vol is not None
        layer.state, layer.virtual_size, layer.physical_size = "Ready", virtual, physical
        vol.top_layer_id, vol.size = layer_id, virtual


def volume_layers_remover(job: JobContext, top_layer_id: str) -> Callable[[], None]:
    return lambda: remove_volume_layers(job.db, top_layer_id)


def drop_layer_row(job: JobContext, layer_id: str) -> None:
    with job.db.session() as s:
        row = s.get(Layer, layer_id)
        if row is not None:
            s.delete(row)
