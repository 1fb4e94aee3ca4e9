"""Who is calling: a signed request (API key), or a login session (its session key together with its
JSESSIONID cookie). Also where a user's state is decided: a disabled or locked user, or one of a disabled
or locked account, is refused at every request, and failed logins lock the user as CloudStack does."""

from __future__ import annotations

import hmac
import logging
from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy import select
from sqlalchemy.orm import Session

from strato.api import keylookup
from strato.api.signing import check_expiry, signature_matches
from strato.api.throttle import Window
from strato.db.base import as_utc, utcnow
from strato.db.models import Account, Domain, LoginSession, User
from strato.errors import CloudError, ErrorCode, Unauthorized
from strato.services.core import settings
from strato.services.core.context import CallContext
from strato.services.identity.lifecycle import end_sessions
from strato.services.identity.passwords import new_session_key, verify_password

log = logging.getLogger("strato.api.authn")

BAD_CREDENTIALS = "unable to verify user credentials and/or request signature"

# Failed logins a client address, or a user name (existing or not), may make per minute before it is
# answered 429 without the password being checked. The per-user lock-out is the setting
# incorrect.login.attempts.allowed; these bound guessing across many users and from many addresses.
FAILED_LOGINS_PER_ADDRESS = Window(limit=30, seconds=60)
FAILED_LOGINS_PER_NAME = Window(limit=10, seconds=60)


@dataclass
class Credentials:
    params: dict[str, str]  # as received, original case, signature included
    session_key: str | None  # from the sessionkey parameter or header
    cookie: str | None = None  # the JSESSIONID cookie


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
        if row is None or not row.cookie or not creds.cookie or not hmac.compare_digest(row.cookie, creds.cookie):
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


def _failed(username: str) -> Unauthorized:
    return Unauthorized("Failed to authenticate user " + username + "; please provide valid credentials")


def _throttled(remote: str, name_key: str) -> None:
    wait = max(FAILED_LOGINS_PER_ADDRESS.retry_after(remote), FAILED_LOGINS_PER_NAME.retry_after(name_key))
    if wait > 0:
        raise CloudError(f"Too many failed logins; try again in {int(wait) + 1} seconds", ErrorCode.API_LIMIT_EXCEEDED)


def login(
    session: Session,
    username: str,
    password: str,
    domain: str | None,
    domain_id: str | None,
    remote: str = "",
) -> tuple[CallContext, str, str]:
    """Checks a password in the named domain (path like "/" or "/ROOT/sales", or an id); returns the
    caller, the session key and the session cookie. A wrong password counts towards the lock-out."""
    name_key = f"{domain_id or (domain or '/')}\0{username}"
    _throttled(remote, name_key)
    if domain_id:
        dom = session.get(Domain, domain_id)
    else:
        path = (domain or "/").strip("/")
        full = "ROOT" if path in ("", "ROOT") else (path if path.startswith("ROOT/") else f"ROOT/{path}")
        dom = session.scalar(select(Domain).where(Domain.path == full, Domain.removed.is_(None)))
    user = None
    if dom is not None:
        user = session.scalar(
            select(User)
            .join(Account, Account.id == User.account_id)
            .where(Account.domain_id == dom.id, User.username == username, User.removed.is_(None))
        )
    if user is None or not verify_password(password, user.password_hash):
        FAILED_LOGINS_PER_ADDRESS.hit(remote)
        FAILED_LOGINS_PER_NAME.hit(name_key)
        if user is not None and user.state == "enabled":
            _count_failure(session, user)
        raise _failed(username)
    if user.state != "enabled":
        raise Unauthorized(
            f"User {username} (or its account) in domain {dom.name if dom else ''} is disabled or locked; "
            "please contact the administrator"
        )
    ctx = _context(session, user)
    user.login_attempts = 0
    FAILED_LOGINS_PER_NAME.clear(name_key)
    key, cookie = new_session_key(), new_session_key()
    session.add(LoginSession(key=key, cookie=cookie, user_id=user.id))
    return ctx, key, cookie


def _count_failure(session: Session, user: User) -> None:
    """As CloudStack: after incorrect.login.attempts.allowed failures in a row the user is locked. The
    counter is committed although the login is refused (the caller's unit of work rolls back on errors)."""
    allowed = int(settings.get(session, "incorrect.login.attempts.allowed"))
    user.login_attempts = (user.login_attempts or 0) + 1
    if user.login_attempts >= allowed:
        user.state = "locked"
        end_sessions(session, [user.id])
        log.warning("user %s locked after %d failed logins", user.username, user.login_attempts)
    session.commit()


def logout(session: Session, key: str | None, cookie: str | None) -> None:
    """Ends the session named by its cookie, or by its key when the cookie matches it."""
    row = session.get(LoginSession, key) if key else None
    if row is not None and (not cookie or row.cookie != cookie):
        row = None
    if row is None and cookie:
        row = session.scalar(select(LoginSession).where(LoginSession.cookie == cookie))
    if row is not None:
        session.delete(row)
