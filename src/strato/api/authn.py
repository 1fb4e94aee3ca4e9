"""Who is calling: a signed request (API key), or a login session (session key)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy import select
from sqlalchemy.orm import Session

from strato.api import keylookup
from strato.api.signing import check_expiry, signature_matches
from strato.db.base import as_utc, utcnow
from strato.db.models import Account, Domain, LoginSession, User
from strato.errors import Unauthorized
from strato.services.core import settings
from strato.services.core.context import CallContext
from strato.services.identity.passwords import new_session_key, verify_password

BAD_CREDENTIALS = "unable to verify user credentials and/or request signature"


@dataclass
class Credentials:
    params: dict[str, str]  # as received, original case, signature included
    session_key: str | None  # from the parameter or the cookie


def _context(session: Session, user: User) -> CallContext:
    account = session.get(Account, user.account_id)
    if account is None or account.removed is not None or user.removed is not None:
        raise Unauthorized(BAD_CREDENTIALS)
    if account.state != "enabled" or user.state != "enabled":
        raise Unauthorized(f"User {user.username} or its account is disabled or locked")
    domain = session.get(Domain, account.domain_id)
    assert domain is not None
    return CallContext(session=session, user=user, account=account, domain=domain)


def authenticate(session: Session, creds: Credentials) -> CallContext:
    lowered = {k.lower(): v for k, v in creds.params.items()}
    api_key = lowered.get("apikey")
    signature = lowered.get("signature")
    if api_key and signature:
        user = keylookup.user_by_api_key(session, api_key)  # with its account and domain, one query
        if user is None or not user.secret_key:
            raise Unauthorized(BAD_CREDENTIALS)
        check_expiry(creds.params, utcnow(), bool(settings.get(session, "api.signature.version3.only")))
        if not signature_matches(creds.params, signature, user.secret_key):
            raise Unauthorized(BAD_CREDENTIALS)
        return _context(session, user)
    if creds.session_key:
        row = session.get(LoginSession, creds.session_key)
        if row is None:
            raise Unauthorized(BAD_CREDENTIALS)
        now = utcnow()
        timeout_s = int(settings.get(session, "session.timeout"))
        if as_utc(row.last_used) + timedelta(seconds=timeout_s) < now:
            session.delete(row)
            raise Unauthorized("The session has expired; log in again")
        row.last_used = now
        user = session.get(User, row.user_id)
        if user is None:
            raise Unauthorized(BAD_CREDENTIALS)
        return _context(session, user)
    raise Unauthorized(BAD_CREDENTIALS)


def login(
    session: Session, username: str, password: str, domain: str | None, domain_id: str | None
) -> tuple[CallContext, str]:
    """Checks a password in the named domain (path like "/" or "/ROOT/sales", or an id)."""
    if domain_id:
        dom = session.get(Domain, domain_id)
    else:
        path = (domain or "/").strip("/")
        full = "ROOT" if path in ("", "ROOT") else (path if path.startswith("ROOT/") else f"ROOT/{path}")
        dom = session.scalar(select(Domain).where(Domain.path == full, Domain.removed.is_(None)))
    if dom is None:
        raise Unauthorized("Failed to authenticate user " + username + "; please provide valid credentials")
    user = session.scalar(
        select(User)
        .join(Account, Account.id == User.account_id)
        .where(Account.domain_id == dom.id, User.username == username, User.removed.is_(None))
    )
    if user is None or not verify_password(password, user.password_hash):
        raise Unauthorized("Failed to authenticate user " + username + "; please provide valid credentials")
    ctx = _context(session, user)
    key = new_session_key()
    session.add(LoginSession(key=key, user_id=user.id))
    return ctx, key


def logout(session: Session, key: str | None) -> None:
    if key:
        row = session.get(LoginSession, key)
        if row is not None:
            session.delete(row)
