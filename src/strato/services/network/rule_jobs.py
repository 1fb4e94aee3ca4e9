"""Changes to a network's public side as jobs (CloudStack declares them async): the new wanted state
goes to the hosts carrying the network (its router's host applies it), host by host with progress.

Adding: the row is made in the request (state Add, already part of the wanted state), the job sends
the state and marks it Active; should a host fail, the row is removed and the state sent again, so
nothing half-made stays. Removing: the job marks the row Revoke (no longer in the wanted state),
sends the state, then forgets the row; a host failure puts it back to Active. A network no host
carries yet (no VM started) has nothing to send: its rules reach the router when it is made."""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from typing import ClassVar, Literal

from pydantic import BaseModel
from sqlalchemy import select
from sqlalchemy.orm import Session

from strato.db.models import EgressRule, Network, PortForwardingRule, PublicFirewallRule, PublicIpAddress
from strato.engine.jobkinds import JobResult
from strato.engine.operation import Operation, Step, StepData
from strato.errors import CloudError, NotFound
from strato.services.network import nics, publicips

Kind = Literal["ipaddress", "portforwardingrule", "firewallrule", "egressrule"]
MODELS: dict[str, type[PublicIpAddress] | type[PortForwardingRule] | type[PublicFirewallRule] | type[EgressRule]] = {
    "ipaddress": PublicIpAddress,
    "portforwardingrule": PortForwardingRule,
    "firewallrule": PublicFirewallRule,
    "egressrule": EgressRule,
}
ACTIVE = {"ipaddress": "Allocated", "portforwardingrule": "Active", "firewallrule": "Active", "egressrule": "Active"}
LEAVING = {"ipaddress": "Releasing", "portforwardingrule": "Revoke", "firewallrule": "Revoke", "egressrule": "Revoke"}
RESULT_TYPE = {"egressrule": "firewallrule"}
"""An egress rule's job answers a `firewallrule`, as CloudStack's createEgressFirewallRule does."""


class RuleParams(BaseModel):
    network_id: str
    kind: Kind
    object_id: str


def _push(op: Operation[RuleParams] | Operation[StaticNatParams]) -> StepData:
    with op.db.session() as s:
        network = s.get(Network, op.params.network_id)
        if network is None or network.removed is not None:
            raise NotFound(f"Unable to find network with id {op.params.network_id}")
        calls = nics.refresh_network(s, network)
    for i, call in enumerate(calls):
        op.job.progress(i, len(calls))
        call.run()
    op.job.progress(len(calls), len(calls))
    return {"hosts": [c.host_name for c in calls]}


def _forget(session: Session, kind: str, object_id: str) -> None:
    row = session.get(MODELS[kind], object_id)
    if row is None:
        return
    if isinstance(row, PublicIpAddress):
        publicips.release(session, row)
        return
    if isinstance(row, PortForwardingRule):
        for fw in list(session.scalars(select(PublicFirewallRule).where(PublicFirewallRule.forward_id == row.id))):
            session.delete(fw)
        session.flush()
    session.delete(row)


def _set_state(session: Session, kind: str, object_id: str, state: str) -> None:
    row = session.get(MODELS[kind], object_id)
    if row is None:
        return
    if isinstance(row, PublicIpAddress | PortForwardingRule | PublicFirewallRule | EgressRule):
        row.state = state
    if isinstance(row, PortForwardingRule):
        for fw in list(session.scalars(select(PublicFirewallRule).where(PublicFirewallRule.forward_id == row.id))):
            fw.state = state if state != "Allocated" else "Active"


class ApplyPublicRule(Operation[RuleParams]):
    """A new address or rule reaches the router."""

    kind: ClassVar[str] = "network.rule.add"
    cmd: ClassVar[str] = "createPortForwardingRule"
    params_model = RuleParams

    @classmethod
    def resources(cls, params: RuleParams) -> list[str]:
        return [f"network:{params.network_id}"]

    def steps(self) -> Sequence[Step]:
        return [Step("send to the router", lambda: _push(self), undo=self._drop), Step("activate", self._activate)]

    def _drop(self) -> None:
        with self.db.session() as s:
            _forget(s, self.params.kind, self.params.object_id)
        with contextlib.suppress(CloudError):
            _push(self)  # best effort: the router back to the state without it

    def _activate(self) -> StepData:
        with self.db.session() as s:
            _set_state(s, self.params.kind, self.params.object_id, ACTIVE[self.params.kind])
        return {}

    def result(self) -> JobResult:
        return {"type": RESULT_TYPE.get(self.params.kind, self.params.kind), "id": self.params.object_id}


class RevokePublicRule(Operation[RuleParams]):
    """An address or rule leaves the router, then the database."""

    kind: ClassVar[str] = "network.rule.remove"
    cmd: ClassVar[str] = "deletePortForwardingRule"
    params_model = RuleParams

    @classmethod
    def resources(cls, params: RuleParams) -> list[str]:
        return [f"network:{params.network_id}"]

    def steps(self) -> Sequence[Step]:
        return [
            Step("mark leaving", self._mark, undo=self._unmark),
            Step("send to the router", lambda: _push(self)),
            Step("forget", self._forget, commit=True),
        ]

    def _mark(self) -> StepData:
        with self.db.session() as s:
            _set_state(s, self.params.kind, self.params.object_id, LEAVING[self.params.kind])
        return {}

    def _unmark(self) -> None:
        with self.db.session() as s:
            _set_state(s, self.params.kind, self.params.object_id, ACTIVE[self.params.kind])

    def _forget(self) -> StepData:
        with self.db.session() as s:
            _forget(s, self.params.kind, self.params.object_id)
        return {}

    def result(self) -> JobResult:
        return {"success": True}


class StaticNatParams(BaseModel):
    network_id: str
    ip_id: str


class DisableStaticNat(Operation[StaticNatParams]):
    """The address's static NAT leaves the router: cleared in the database, the state sent; a host
    failure puts it back."""

    kind: ClassVar[str] = "network.staticnat.disable"
    cmd: ClassVar[str] = "disableStaticNat"
    event: ClassVar[str | None] = "STATICNAT.DISABLE"
    params_model = StaticNatParams

    @classmethod
    def resources(cls, params: StaticNatParams) -> list[str]:
        return [f"network:{params.network_id}"]

    def steps(self) -> Sequence[Step]:
        return [Step("clear", self._clear, undo=self._restore), Step("send to the router", lambda: _push(self))]

    def _clear(self) -> StepData:
        with self.db.session() as s:
            ip = s.get(PublicIpAddress, self.params.ip_id)
            if ip is None or ip.static_nat_vm_id is None:
                return dict(self.output("clear"))
            before = {"vm_id": ip.static_nat_vm_id, "vm_ip": ip.static_nat_ip}
            ip.static_nat_vm_id = ip.static_nat_ip = None
        return before

    def _restore(self) -> None:
        before = self.output("clear")
        with self.db.session() as s:
            ip = s.get(PublicIpAddress, self.params.ip_id)
            if ip is not None and before.get("vm_id") and ip.static_nat_vm_id is None:
                ip.static_nat_vm_id, ip.static_nat_ip = before["vm_id"], before["vm_ip"]

    def result(self) -> JobResult:
        return {"success": True}
