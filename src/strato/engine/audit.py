"""Writes audit events: every state-changing call and every job's end leaves one."""

from __future__ import annotations

from sqlalchemy.orm import Session

from strato.db.models import Account, Event


def record_event(
    session: Session,
    event_type: str,
    description: str,
    *,
    account_id: str | None,
    user_id: str | None,
    level: str = "INFO",
    state: str = "Completed",
    resource_type: str | None = None,
    resource_id: str | None = None,
) -> Event:
    domain_id = None
    if account_id is not None:
        acct = session.get(Account, account_id)
        domain_id = acct.domain_id if acct is not None else None
    event = Event(
        type=event_type,
        description=description[:4096],
        account_id=account_id,
        user_id=user_id,
        domain_id=domain_id,
        level=level,
        state=state,
        resource_type=resource_type,
        resource_id=resource_id,
    )
    session.add(event)
    return event
