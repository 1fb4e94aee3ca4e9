"""deleteVolume: a detached volume's files are removed from its pool, then the volume is expunged.

Answered at once (CloudStack's deleteVolume is synchronous): the volume is Destroy from the request on,
and the job finishes in the background. Resumable: removing a file already gone is no error. A failed
run leaves the volume in Destroy, and deleteVolume may be called again once the pool's host is back."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

from pydantic import BaseModel
from sqlalchemy.orm import Session

from strato.db.base import utcnow
from strato.db.models import Volume
from strato.engine.jobkinds import JobResult
from strato.engine.operation import Operation, Step
from strato.errors import InvalidParameter
from strato.services.core import jobs
from strato.services.core.context import CallContext
from strato.services.core.states import volume_to
from strato.services.storage.layers import remove_volume_files, remove_volume_layers
from strato.services.storage.volumes import get_volume, live_volume


class DeleteParams(BaseModel):
    volume_id: str


class DeleteVolume(Operation[DeleteParams]):
    """deleteVolume: remove the volume's own layers, then expunge it."""

    kind: ClassVar[str] = "volume.delete"
    cmd: ClassVar[str] = "deleteVolume"
    event: ClassVar[str | None] = "VOLUME.DELETE"
    params_model = DeleteParams
    resumable: ClassVar[bool] = True

    @classmethod
    def resources(cls, params: DeleteParams) -> list[str]:
        return [f"volume:{params.volume_id}"]

    @classmethod
    def check(cls, session: Session, params: DeleteParams) -> None:
        """Destroy is accepted: the request moves the volume there before the job starts."""
        vol = live_volume(session, params.volume_id)
        if vol.vm_id:
            raise InvalidParameter(f"Volume {vol.name} is attached to a VM; detach it before deleting it")
        if vol.state not in ("Ready", "Allocated", "Destroy"):
            raise InvalidParameter(f"Volume {vol.name} is {vol.state}; it cannot be deleted now")

    def steps(self) -> Sequence[Step]:
        return [Step("remove files", self._remove_files), Step("expunge", self._expunge)]

    def _remove_files(self) -> None:
        with self.db.session() as s:
            vol = s.get(Volume, self.params.volume_id)
            top = vol.top_layer_id if vol is not None else None
        remove_volume_layers(self.db, top)  # the chain first, top down
        remove_volume_files(self.db, self.params.volume_id)  # and any layer of its own left unfinished

    def _expunge(self) -> None:
        with self.db.session() as s:
            vol = s.get(Volume, self.params.volume_id)
            if vol is None or vol.removed is not None:  # expunged before a restart
                return
            volume_to(vol, "Expunged")
            vol.removed, vol.top_layer_id = utcnow(), None

    def result(self) -> JobResult:
        return {"success": True}


def delete(ctx: CallContext, args: dict[str, Any]) -> None:
    """deleteVolume at the request: the rules, Destroy, and the job that removes the files. An Allocated
    volume has no file: its row is removed at once (as CloudStack), unless a job is about to create it."""
    vol = get_volume(ctx, args["id"])
    params = DeleteParams(volume_id=vol.id)
    if vol.state == "Allocated" and vol.pool_id is None and not jobs.active_on(ctx.session, f"volume:{vol.id}"):
        DeleteVolume.check(ctx.session, params)
        volume_to(vol, "Expunged")
        vol.removed = utcnow()
        return
    jobs.submit_operation(ctx, DeleteVolume, params, "Volume", vol.id)
    volume_to(vol, "Destroy")
