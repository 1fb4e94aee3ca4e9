"""registerTemplate / registerIso: the rows are made at the request (state Downloading), then each disk
is fetched by an agent onto its image store or pool. Until every disk is fetched nothing stands: a failure
or a crash removes every file fetched so far and leaves the template in Error with the reason."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, ClassVar

from pydantic import BaseModel
from sqlalchemy import select
from sqlalchemy.orm import Session

from strato.db.base import utcnow
from strato.db.models import Layer, Template, TemplateStoreCopy
from strato.db.models.storage import LAYER_TEMPLATE
from strato.engine.jobkinds import JobResult
from strato.engine.operation import Operation, Step, StepData
from strato.protocol.messages import FetchImage
from strato.services.core import jobs
from strato.services.core.agents import agent_errors
from strato.services.core.context import CallContext
from strato.services.images import templates
from strato.services.images.placement import Destination, job_error_text, live_template, record_ready, target, unplace


class RegisterParams(BaseModel):
    template_id: str
    plan: list[Destination]


class RegisterTemplate(Operation[RegisterParams]):
    """Fetches every disk of a registered template or ISO; "ready" (all disks there) is the commit."""

    kind: ClassVar[str] = "template.download"
    cmd: ClassVar[str] = "registerTemplate"
    event: ClassVar[str | None] = "TEMPLATE.CREATE"
    params_model = RegisterParams
    interrupted_text: ClassVar[str] = (
        "The template download was interrupted by a management server restart; "
        "its partial files were removed; register the template again"
    )

    @classmethod
    def resources(cls, params: RegisterParams) -> list[str]:
        return [f"template:{params.template_id}"]

    @classmethod
    def check(cls, session: Session, params: RegisterParams) -> None:
        for dest in params.plan:
            live_template(session, dest.template_id)

    def steps(self) -> Sequence[Step]:
        out = [Step(f"fetch disk {i}", self._fetcher(i, d), undo=self._unplacer(d))
               for i, d in enumerate(self.params.plan)]  # fmt: skip
        out.append(Step("ready", self._ready, commit=True))
        return out

    def _fetcher(self, index: int, dest: Destination) -> Callable[[], StepData]:
        def run() -> StepData:
            where, client, host_name = target(self.db, dest)
            assert dest.url is not None
            cmd = FetchImage(url=dest.url, target=where, format=dest.format.lower(), checksum=dest.checksum)
            with agent_errors(host_name):
                info = client.run_long(cmd, on_progress=self.job.part_progress(index, len(self.params.plan)))
            record_ready(self.db, dest, info)
            return {"virtual_size": info.virtual_size, "physical_size": info.physical_size}

        return run

    def _unplacer(self, dest: Destination) -> Callable[[], None]:
        return lambda: unplace(self.db, dest)

    def _ready(self) -> None:
        with self.db.session() as s:
            for dest in self.params.plan:
                tmpl = s.get(Template, dest.template_id)
                assert tmpl is not None
                tmpl.state, tmpl.status_text = "Ready", "Download Complete"

    def result(self) -> JobResult:
        return {"type": "template", "id": self.params.template_id}

    @classmethod
    def failed(cls, session: Session, params: RegisterParams) -> None:
        text = job_error_text(session, cls.kind, params.template_id, "download failed")
        for dest in params.plan:
            tmpl = session.get(Template, dest.template_id)
            if tmpl is not None:
                tmpl.state, tmpl.status_text = "Error", text
            if dest.store_copy_id:
                copy = session.get(TemplateStoreCopy, dest.store_copy_id)
                if copy is not None:
                    copy.state, copy.error_text = "Error", text
                    copy.removed = copy.removed or utcnow()
            for layer in session.scalars(select(Layer).where(
                Layer.template_id == dest.template_id, Layer.kind == LAYER_TEMPLATE, Layer.removed.is_(None)
            )):  # fmt: skip
                if dest.pool_id == layer.pool_id:
                    layer.removed, layer.state = utcnow(), "Removed"


def register(ctx: CallContext, args: dict[str, Any], iso: bool) -> tuple[Template, str]:
    """registerTemplate / registerIso: the rows and their download plan, then the download job."""
    tmpl, plan = templates.register(ctx, args, iso)
    params = RegisterParams(template_id=tmpl.id, plan=[Destination.model_validate(p) for p in plan])
    job_id = jobs.submit_operation(ctx, RegisterTemplate, params, "Template", tmpl.id,
                                   cmd="registerIso" if iso else None)  # fmt: skip
    return tmpl, job_id
