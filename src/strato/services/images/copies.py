"""copyTemplate / copyIso (to an image store or, Strato, to a pool) and prepareTemplate (to a pool): every
disk of the template copied by an agent from a Ready copy. Each disk's copy is a commit point: a copy
that finished stays (it is a cache of the template), one that did not leaves neither row nor file."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, ClassVar

from pydantic import BaseModel
from sqlalchemy import select
from sqlalchemy.orm import Session

from strato.db.base import utcnow
from strato.db.models import ImageStore, Layer, StoragePool, Template, TemplateStoreCopy
from strato.engine.jobkinds import JobResult
from strato.engine.operation import Operation, Step, StepData
from strato.errors import InvalidParameter, NotFound
from strato.protocol.messages import CopyLayer, LayerRef, RemoveLayer
from strato.services.core import jobs
from strato.services.core.agents import agent_errors, host_client
from strato.services.core.context import CallContext
from strato.services.core.reach import host_for, store_ref
from strato.services.images.placement import live_template, store_host
from strato.services.images.templates import check_owner, choose_pool, family, get_template, store_in_zone, store_path
from strato.services.storage.layers import (
    ensure_template_on_pool,
    ref,
    remove_layer_file,
    remove_unfinished_layer,
    template_layer_path,
    template_source,
)


class CopyParams(BaseModel):
    template_ids: list[str]  # the template and its data-disk children, root first
    store_id: str | None = None
    pool_id: str | None = None


class CopyTemplate(Operation[CopyParams]):
    """To a store: "place disk N" (the copy's row, Copying) then "copy disk N" (commit). To a pool: "copy
    disk N" (commit), the pool's template layer made the way deploys make it."""

    kind: ClassVar[str] = "template.copy"
    cmd: ClassVar[str] = "copyTemplate"
    event: ClassVar[str | None] = "TEMPLATE.COPY"
    params_model = CopyParams

    @classmethod
    def resources(cls, params: CopyParams) -> list[str]:
        where = f"pool:{params.pool_id}" if params.pool_id else f"store:{params.store_id}"
        return [f"template:{params.template_ids[0]}", where]

    @classmethod
    def check(cls, session: Session, params: CopyParams) -> None:
        tmpl = live_template(session, params.template_ids[0])
        if tmpl.state != "Ready":
            raise InvalidParameter(f"Template {tmpl.name} is not ready ({tmpl.state})")
        for model, row_id, label in ((StoragePool, params.pool_id, "storage pool"),
                                     (ImageStore, params.store_id, "image store")):  # fmt: skip
            if row_id is not None:
                row = session.get(model, row_id)
                if row is None or row.removed is not None:
                    raise NotFound(f"Unable to find {label} with id={row_id}")

    def steps(self) -> Sequence[Step]:
        out: list[Step] = []
        for i, tid in enumerate(self.params.template_ids):
            if self.params.pool_id:
                out.append(Step(f"copy disk {i}", self._to_pool(tid), undo=self._pool_dropper(tid), commit=True))
                continue
            drop = self._store_dropper(tid, f"place disk {i}")
            out.append(Step(f"place disk {i}", self._placer(tid), undo=drop))
            out.append(Step(f"copy disk {i}", self._to_store(i, tid), undo=drop, commit=True))
        return out

    # --- to a pool -------------------------------------------------------------------------------

    def _to_pool(self, template_id: str) -> Callable[[], StepData]:
        def run() -> StepData:
            index = self.params.template_ids.index(template_id)
            progress = self.job.part_progress(index, len(self.params.template_ids))
            assert self.params.pool_id is not None
            layer_id = ensure_template_on_pool(self.db, template_id, self.params.pool_id, progress,
                                               job_id=self.job.job_id)  # fmt: skip
            return {"layer_id": layer_id}

        return run

    def _pool_dropper(self, template_id: str) -> Callable[[], None]:
        """Removes what this job made of the template on the pool (a layer another job made stays)."""

        def undo() -> None:
            pool_id, path = self.params.pool_id, template_layer_path(template_id)
            with self.db.session() as s:
                rows = list(s.scalars(select(Layer).where(Layer.pool_id == pool_id, Layer.path == path,
                                                          Layer.removed.is_(None))))  # fmt: skip
                mine = [(r.id, r.state) for r in rows if r.creating_job == self.job.job_id]
                orphan = None
                if not rows:  # a copy that failed half-way: its row is gone, its file may not be
                    pool = s.get(StoragePool, pool_id)
                    assert pool is not None
                    host = host_for(s, [pool])
                    orphan = (host_client(host), host.name, ref(pool, path))
            if orphan is not None:
                client, host_name, target = orphan
                with agent_errors(host_name):
                    client.call(RemoveLayer(layer=target, missing_ok=True))
            for layer_id, state in mine:
                (remove_layer_file if state == "Ready" else remove_unfinished_layer)(self.db, layer_id)

        return undo

    # --- to an image store -----------------------------------------------------------------------

    def _placer(self, template_id: str) -> Callable[[], StepData]:
        def run() -> StepData:
            with self.db.session() as s:
                row = _store_copy(s, template_id, self.params.store_id)
                if row is not None:
                    return {"copy_id": row.id, "kept": row.state == "Ready"}
                tmpl = s.get(Template, template_id)
                assert tmpl is not None and self.params.store_id is not None
                row = TemplateStoreCopy(template_id=template_id, store_id=self.params.store_id,
                                        path=store_path(tmpl), state="Copying")  # fmt: skip
                s.add(row)
                s.flush()
                return {"copy_id": row.id, "kept": False}

        return run

    def _to_store(self, index: int, template_id: str) -> Callable[[], StepData]:
        def run() -> StepData:
            placed = self.output(f"place disk {index}")
            if placed.get("kept"):
                return {}
            with self.db.session() as s:
                store = s.get(ImageStore, self.params.store_id)
                dest = s.get(TemplateStoreCopy, placed["copy_id"])
                assert store is not None and dest is not None
                source, host = template_source(s, template_id, [], [store])
                target = LayerRef(pool=store_ref(store), name=dest.path)
                client, host_name = host_client(host), host.name
            progress = self.job.part_progress(index, len(self.params.template_ids))
            with agent_errors(host_name):
                info = client.run_long(CopyLayer(source=source, target=target), on_progress=progress)
            with self.db.session() as s:
                row = s.get(TemplateStoreCopy, placed["copy_id"])
                assert row is not None
                row.state, row.download_percent, row.physical_size = "Ready", 100, info.physical_size
            return {"physical_size": info.physical_size}

        return run

    def _store_dropper(self, template_id: str, place_step: str) -> Callable[[], None]:
        """Removes the store copy this job began (its file and its row); a copy Ready before it stays."""

        def undo() -> None:
            placed = self.output(place_step)
            if placed.get("kept"):
                return
            with self.db.session() as s:
                row = s.get(TemplateStoreCopy, placed["copy_id"]) if placed.get("copy_id") else None
                row = row or _store_copy(s, template_id, self.params.store_id)
                if row is None or row.removed is not None or (not placed and row.state == "Ready"):
                    return
                store = s.get(ImageStore, row.store_id)
                assert store is not None
                host = store_host(s, store)
                client, host_name, target = host_client(host), host.name, LayerRef(pool=store_ref(store), name=row.path)
                row_id = row.id
            with agent_errors(host_name):
                client.call(RemoveLayer(layer=target, missing_ok=True))
            with self.db.session() as s:
                done = s.get(TemplateStoreCopy, row_id)
                if done is not None and done.removed is None:
                    done.state, done.removed = "Error", utcnow()

        return undo

    def result(self) -> JobResult:
        return {"type": "template", "id": self.params.template_ids[0]}

    @classmethod
    def failed(cls, session: Session, params: CopyParams) -> None:
        if not params.store_id:
            return
        for template_id in params.template_ids:
            for row in session.scalars(select(TemplateStoreCopy).where(
                TemplateStoreCopy.template_id == template_id, TemplateStoreCopy.store_id == params.store_id,
                TemplateStoreCopy.state != "Ready", TemplateStoreCopy.removed.is_(None),
            )):  # fmt: skip
                row.state, row.removed = "Error", utcnow()


def _store_copy(s: Session, template_id: str, store_id: str | None) -> TemplateStoreCopy | None:
    return s.scalar(select(TemplateStoreCopy).where(
        TemplateStoreCopy.template_id == template_id, TemplateStoreCopy.store_id == store_id,
        TemplateStoreCopy.removed.is_(None),
    ))  # fmt: skip


def copy_to(ctx: CallContext, args: dict[str, Any], iso: bool) -> tuple[Template, str]:
    """copyTemplate: to the image store of another zone, or (Strato) to a given store or pool."""
    tmpl = get_template(ctx, args["id"], iso)
    if not ctx.is_admin:
        check_owner(ctx, tmpl)  # copies use the cloud's storage: owners and admins only, as CloudStack
    targets = [x for x in ("destzoneid", "destimagestoreid", "deststorageid") if args.get(x)]
    if len(targets) != 1:
        raise InvalidParameter("Give exactly one of destzoneid, destimagestoreid or deststorageid")
    ids = [t.id for t in family(ctx, tmpl)]
    if args.get("deststorageid"):
        params = CopyParams(template_ids=ids, pool_id=choose_pool(ctx, args["deststorageid"], "deststorageid").id)
    else:
        store = store_in_zone(ctx, args.get("destzoneid"), args.get("destimagestoreid"))
        params = CopyParams(template_ids=ids, store_id=store.id)
    return tmpl, jobs.submit_operation(ctx, CopyTemplate, params, "Template", tmpl.id,
                                       cmd="copyIso" if iso else None)  # fmt: skip


def prepare(ctx: CallContext, args: dict[str, Any]) -> tuple[Template, str]:
    """prepareTemplate: put the template on a primary pool ahead of use (admins)."""
    tmpl = get_template(ctx, args["templateid"], iso=False, param="templateid")
    if not args.get("storageid"):
        raise InvalidParameter("Parameter storageid is required: the pool to put the template on")
    pool = choose_pool(ctx, args["storageid"], "storageid")
    if pool.zone_id != args["zoneid"]:
        raise InvalidParameter(f"Storage pool {pool.name} is not in the given zone")
    params = CopyParams(template_ids=[t.id for t in family(ctx, tmpl)], pool_id=pool.id)
    return tmpl, jobs.submit_operation(ctx, CopyTemplate, params, "Template", tmpl.id, cmd="prepareTemplate")
