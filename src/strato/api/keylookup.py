"""The caller of a signed request, found by API key in one statement.

A signed call needs the user (for the secret), its account and its domain (for the call context and the
state checks). They are read together, joined, instead of one query each; the account and domain stay
in the session (held in session.info: its identity map holds objects weakly), so the context's lookups
cost nothing. Always read fresh, never cached across requests: a key replaced, or a user or account
disabled, on any server sharing the database stops working at the next request."""

from __future__ import annotations

from sqlalchemy import bindparam, select
from sqlalchemy.orm import Session

from strato.db.models import Account, Domain, User

_HELD = "strato.caller"


# Built once: building and hashing the statement cost as much as running it.
_BY_KEY = (
    select(User, Account, Domain)
    .join(Account, Account.id == User.account_id)
    .join(Domain, Domain.id == Account.domain_id)
    .where(User.api_key == bindparam("api_key"), User.removed.is_(None))
)


def user_by_api_key(session: Session, api_key: str) -> User | None:
    """The live user holding this API key, its account and domain loaded with it; None if none."""
    row = session.execute(_BY_KEY, {"api_key": api_key}).first()
    if row is None:
        return None
    session.info[_HELD] = tuple(row)
    user: User = row[0]
    return user
