"""deleteSnapshot: the snapshot's file leaves its image store (its space comes back) and the snapshot
ends. Also for a snapshot in Error (its file, if any, is removed too). Every step is safe to repeat, so a
job interrupted by a restart goes on to the end."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

from pydantic import BaseModel
from sqlalchemy.orm import Session

from strato.db.models import Snapshot
from strato.engine.jobkinds import JobResult
from strato.engine.operation import Operation, Step
from strato.errors import InvalidState
from strato.services.core import jobs
from strato.services.core.context import CallContext
from strato.services.storage.snapshots import get_snapshot, live_snapshot, mark_deleted, remove_file


class DeleteSnapshotParams(BaseModel):
    snapshot_id: str


class DeleteSnapshot(Operation[DeleteSnapshotParams]):
    kind: ClassVar[str] = "snapshot.delete"
    cmd: ClassVar[str] = "deleteSnapshot"
    event: ClassVar[str | None] = "SNAPSHOT.DELETE"
    params_model = DeleteSnapshotParams
    resumable: ClassVar[bool] = True

    @classmethod
    def resources(cls, params: DeleteSnapshotParams) -> list[str]:
        return [f"snapshot:{params.snapshot_id}"]

    @classmethod
    def check(cls, session: Session, params: DeleteSnapshotParams) -> None:
        snap = live_snapshot(session, params.snapshot_id)
        if snap.state not in ("BackedUp", "Error"):
            raise InvalidState(f"Snapshot {snap.name} is {snap.state}; only a BackedUp or Error snapshot is deleted")

    def steps(self) -> Sequence[Step]:
        return [Step("remove file", self._remove), Step("deleted", self._deleted)]

    def _remove(self) -> None:
        remove_file(self.db, self.params.snapshot_id)

    def _deleted(self) -> None:
        with self.db.session() as s:
            snap = s.get(Snapshot, self.params.snapshot_id)
            if snap is not None:
                mark_deleted(s, snap)

    def result(self) -> JobResult:
        return {"success": True}


def delete(ctx: CallContext, args: dict[str, Any]) -> str:
    snap = get_snapshot(ctx, args["id"])
    return jobs.submit_operation(ctx, DeleteSnapshot, DeleteSnapshotParams(snapshot_id=snap.id), "Snapshot", snap.id)
