"""Network sync: a host that still carries a network the database has deleted is told to remove it.

deleteNetwork removes a network from the hosts it reaches at that moment; a host that was down, or
answered late, keeps its bridge, tunnel and router. Its next state report names the networks it has,
and this reconciler sends it the removal then (the agent's removal is idempotent).
"""

from __future__ import annotations

import logging

from sqlalchemy import select
from sqlalchemy.orm import Session

from strato.db.models import Host, Network
from strato.engine.monitor import FollowUp, on_state_report
from strato.protocol.messages import RemoveNetwork, StateReport
from strato.services.core.agents import host_client
from strato.services.network.nics import HostCall

log = logging.getLogger("strato.netsync")


@on_state_report
def remove_deleted_networks(session: Session, host: Host, report: StateReport) -> list[FollowUp] | None:
    if not report.networks:
        return None
    live = set(session.scalars(select(Network.id).where(Network.id.in_(report.networks), Network.removed.is_(None))))
    stale = [n for n in report.networks if n not in live]
    if not stale:
        return None
    log.info("host %s still carries deleted networks %s: removing them", host.name, ", ".join(stale))
    client = host_client(host)
    return [HostCall(client, host.name, RemoveNetwork(network_id=n)).run for n in stale]
