"""deleteTemplate / deleteIso: every file of the template and of its data-disk children removed from
image stores and pools, refused while a volume's chain rests on one of its layers or a VM uses the ISO.
Its purpose is to finish: after a crash it goes on from the first disk not yet removed."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, ClassVar

from pydantic import BaseModel
from sqlalchemy import select
from sqlalchemy.orm import Session

from strato.db.base import utcnow
from strato.db.models import ImageStore, Layer, StoragePool, Template, TemplateStoreCopy, VirtualMachine, Volume
from strato.db.models.storage import LAYER_TEMPLATE
from strato.engine.jobkinds import JobResult
from strato.engine.operation import Operation, Step
from strato.errors import InvalidParameter, ResourceInUse
from strato.protocol.messages import LayerRef, RemoveLayer
from strato.services.core import jobs
from strato.services.core.agents import agent_errors, host_client
from strato.services.core.context import CallContext
from strato.services.core.reach import store_ref
from strato.services.images.placement import live_template, store_host
from strato.services.images.templates import check_owner, family, get_template
from strato.services.storage.layers import remove_layer_file


class DeleteParams(BaseModel):
    template_ids: list[str]  # the template and its data-disk children, root first


class DeleteTemplate(Operation[DeleteParams]):
    """ "mark deleting" (no new deploy or copy starts from it), then "remove disk N", children first."""

    kind: ClassVar[str] = "template.delete"
    cmd: ClassVar[str] = "deleteTemplate"
    event: ClassVar[str | None] = "TEMPLATE.DELETE"
    params_model = DeleteParams
    resumable: ClassVar[bool] = True

    @classmethod
    def resources(cls, params: DeleteParams) -> list[str]:
        return [f"template:{params.template_ids[0]}"]

    @classmethod
    def check(cls, session: Session, params: DeleteParams) -> None:
        tmpl = live_template(session, params.template_ids[0])
        if tmpl.parent_id is not None:
            raise InvalidParameter(f"Template {tmpl.name} is a data disk of another template; delete its parent")
        if tmpl.state == "Downloading":
            raise InvalidParameter(f"Template {tmpl.name} is still downloading; wait for it to end")
        check_unused(session, tmpl, params.template_ids)

    def steps(self) -> Sequence[Step]:
        out = [Step("mark deleting", self._mark)]
        for i in reversed(range(len(self.params.template_ids))):
            out.append(Step(f"remove disk {i}", self._remover(self.params.template_ids[i])))
        return out

    def _mark(self) -> None:
        with self.db.session() as s:
            for template_id in self.params.template_ids:
                tmpl = s.get(Template, template_id)
                if tmpl is not None and tmpl.removed is None and tmpl.state != "Deleting":
                    tmpl.details = {**(tmpl.details or {}), "state_before_delete": tmpl.state}
                    tmpl.state = "Deleting"

    def _remover(self, template_id: str) -> Callable[[], None]:
        def run() -> None:
            with self.db.session() as s:
                copies = []
                for row in s.scalars(select(TemplateStoreCopy).where(
                    TemplateStoreCopy.template_id == template_id, TemplateStoreCopy.removed.is_(None)
                )):  # fmt: skip
                    store = s.get(ImageStore, row.store_id)
                    assert store is not None
                    host = store_host(s, store)
                    copies.append(
                        (row.id, host_client(host), host.name, LayerRef(pool=store_ref(store), name=row.path))
                    )
                layers = list(s.scalars(select(Layer.id).where(
                    Layer.template_id == template_id, Layer.kind == LAYER_TEMPLATE, Layer.removed.is_(None)
                )))  # fmt: skip
            for row_id, client, host_name, target in copies:
                with agent_errors(host_name):
                    client.call(RemoveLayer(layer=target, missing_ok=True))
                with self.db.session() as s:
                    done = s.get(TemplateStoreCopy, row_id)
                    if done is not None and done.removed is None:
                        done.removed = utcnow()
            for layer_id in layers:
                remove_layer_file(self.db, layer_id)  # refused while a layer rests on it
            with self.db.session() as s:
                tmpl = s.get(Template, template_id)
                if tmpl is not None and tmpl.removed is None:
                    tmpl.removed, tmpl.state = utcnow(), "Removed"

        return run

    def result(self) -> JobResult:
        return {"success": True}

    @classmethod
    def failed(cls, session: Session, params: DeleteParams) -> None:
        """The template stays usable (whatever was not removed yet is still there)."""
        for template_id in params.template_ids:
            tmpl = session.get(Template, template_id)
            if tmpl is not None and tmpl.removed is None and tmpl.state == "Deleting":
                tmpl.state = str((tmpl.details or {}).get("state_before_delete", "Ready"))


def check_unused(session: Session, tmpl: Template, ids: list[str]) -> None:
    """Refused while a volume's chain rests on one of the template's layers, or a VM uses the ISO."""
    if tmpl.is_iso:
        vm = session.scalar(
            select(VirtualMachine).where(VirtualMachine.iso_id == tmpl.id, VirtualMachine.removed.is_(None))
        )
        if vm is not None:
            raise ResourceInUse(f"ISO {tmpl.name} is attached to VM {vm.name}; detach it first")
        return
    bases = session.scalars(
        select(Layer).where(Layer.template_id.in_(ids), Layer.kind == LAYER_TEMPLATE, Layer.removed.is_(None))
    ).all()
    for base in bases:
        child = session.scalar(select(Layer).where(Layer.parent_id == base.id, Layer.removed.is_(None)))
        if child is not None:
            volume = session.get(Volume, child.volume_id) if child.volume_id else None
            pool = session.get(StoragePool, base.pool_id)
            who = f"volume {volume.name}" if volume is not None else f"layer {child.path}"
            raise ResourceInUse(
                f"Template {tmpl.name} cannot be deleted: {who} still depends on its layer on pool "
                f"{pool.name if pool else base.pool_id}"
            )


def delete(ctx: CallContext, args: dict[str, Any], iso: bool) -> str:
    """deleteTemplate / deleteIso (owners and admins): the rules, then the deletion job."""
    tmpl = get_template(ctx, args["id"], iso)
    check_owner(ctx, tmpl)
    params = DeleteParams(template_ids=[t.id for t in family(ctx, tmpl)])
    return jobs.submit_operation(ctx, DeleteTemplate, params, "Template", tmpl.id, cmd="deleteIso" if iso else None)
