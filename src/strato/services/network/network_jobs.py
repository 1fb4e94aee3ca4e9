"""restartNetwork and deleteNetwork as jobs: the agent calls (the network's wanted state to every host
carrying it; its removal from every host of its zone) are made by the job, host by host with progress,
not in the request, so a slow or unreachable host never holds the caller.

deleteNetwork first marks the network Destroy (no NIC is added to it from then on, and the check that no
VM uses it runs again under the job's lock), then removes it from the hosts (one that cannot be reached
is left to network sync, which removes it when that host reports again), then forgets it. A host that
answers with a failure fails the job, and the network is as it was."""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

from pydantic import BaseModel
from sqlalchemy.orm import Session

from strato.db.models import Network
from strato.engine.jobkinds import JobResult
from strato.engine.operation import Operation, Step, StepData
from strato.errors import NotFound
from strato.services.network import networks, nics

NETWORK_RESULT = "network"


class NetworkParams(BaseModel):
    network_id: str


def _live(session: Session, network_id: str) -> Network:
    row = session.get(Network, network_id)
    if row is None or row.removed is not None:
        raise NotFound(f"Unable to find network with id {network_id}")
    return row


class _NetworkJob(Operation[NetworkParams]):
    """A job on one network, locked on it."""

    params_model = NetworkParams

    @classmethod
    def resources(cls, params: NetworkParams) -> list[str]:
        return [f"network:{params.network_id}"]


class RestartNetwork(_NetworkJob):
    kind: ClassVar[str] = "network.restart"
    cmd: ClassVar[str] = "restartNetwork"
    event: ClassVar[str | None] = "NETWORK.RESTART"

    @classmethod
    def check(cls, session: Session, params: NetworkParams) -> None:
        _live(session, params.network_id)

    def steps(self) -> Sequence[Step]:
        return [Step("send the network to its hosts", self._send)]

    def _send(self) -> StepData:
        with self.db.session() as s:
            calls = nics.refresh_network(s, _live(s, self.params.network_id))
        for i, call in enumerate(calls):
            self.job.progress(i, len(calls))
            call.run()
        self.job.progress(len(calls), len(calls))
        return {"hosts": [c.host_name for c in calls]}

    def result(self) -> JobResult:
        return {"type": NETWORK_RESULT, "id": self.params.network_id}


class DeleteNetwork(_NetworkJob):
    kind: ClassVar[str] = "network.delete"
    cmd: ClassVar[str] = "deleteNetwork"
    event: ClassVar[str | None] = "NETWORK.DELETE"

    @classmethod
    def check(cls, session: Session, params: NetworkParams) -> None:
        row = _live(session, params.network_id)
        if row.state != "Destroy":  # a job recovered after its mark already checked it
            networks.check_deletable(session, row)

    def steps(self) -> Sequence[Step]:
        return [
            Step("mark destroying", self._mark, undo=self._unmark),
            Step("remove from the hosts", self._remove),
            Step("forget", self._forget),
        ]

    def _mark(self) -> StepData:
        with self.db.session() as s:
            row = _live(s, self.params.network_id)
            previous = row.state
            networks.check_deletable(s, row)
            row.state = "Destroy"
        return {"previous": previous}

    def _unmark(self) -> None:
        previous = self.output("mark destroying").get("previous")
        with self.db.session() as s:
            row = s.get(Network, self.params.network_id)
            if row is not None and row.removed is None and row.state == "Destroy" and previous:
                row.state = previous

    def _remove(self) -> StepData:
        with self.db.session() as s:
            calls = nics.removal_calls(s, _live(s, self.params.network_id))
        later = []
        for i, call in enumerate(calls):
            self.job.progress(i, len(calls))
            if not call.run_if_reachable():
                later.append(call.host_name)  # removed by network sync when the host reports again
        self.job.progress(len(calls), len(calls))
        return {"left_to_sync": later}

    def _forget(self) -> StepData:
        with self.db.session() as s:
            row = s.get(Network, self.params.network_id)
            if row is not None and row.removed is None:
                networks.mark_deleted(s, row)
        return {}

    def result(self) -> JobResult:
        return {"success": True}
