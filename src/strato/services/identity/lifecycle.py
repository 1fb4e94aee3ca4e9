"""The user and account lifecycle as CloudStack's: updateUser, enableUser, lockUser, deleteUser,
enableAccount, lockAccount, and the state changes of disableUser/disableAccount (whose VM stops are a
job in compute). A user's state is read at every request (authn), and its sessions are ended here, so a
change takes effect at once."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from strato.db.base import utcnow
from strato.db.models import Account, LoginSession, User
from strato.errors import InvalidParameter, PermissionDenied
from strato.services.core.context import CallContext
from strato.services.identity.identity import _check_username_free, find_account, get_account, get_user
from strato.services.identity.passwords import hash_password, verify_password


def end_sessions(session: Session, user_ids: list[str]) -> None:
    """Ends the login sessions of these users."""
    if user_ids:
        for row in session.scalars(select(LoginSession).where(LoginSession.user_id.in_(user_ids))):
            session.delete(row)


def _users_of(session: Session, account_id: str) -> list[User]:
    return list(session.scalars(select(User).where(User.account_id == account_id, User.removed.is_(None))))


def managed_user(ctx: CallContext, user_id: str, verb: str) -> User:
    """A user the caller may manage (not itself), refused as unknown when it may not see it."""
    user = get_user(ctx, user_id)
    if user.id == ctx.user.id:
        raise InvalidParameter(f"A user cannot {verb} itself")
    return user


def managed_account(ctx: CallContext, args: dict[str, Any], verb: str) -> Account:
    """The account named by id, or by account name and domainid, that the caller may manage."""
    if args.get("id"):
        acct = get_account(ctx, args["id"])
    elif args.get("account"):
        acct = find_account(ctx, args["account"], args.get("domainid"))
    else:
        raise InvalidParameter("Either parameter id or parameter account (with domainid) is required")
    if acct.id == ctx.account.id:
        raise InvalidParameter(f"An account cannot {verb} itself")
    return acct


def set_user_state(session: Session, user: User, state: str) -> None:
    """disabled or locked: its sessions end; when no enabled user is left, the account follows (as
    CloudStack: locking the last user locks the account; disabling it is disable_account's job)."""
    user.state = state
    end_sessions(session, [user.id])


def others_enabled(session: Session, user: User) -> bool:
    return any(u.state == "enabled" and u.id != user.id for u in _users_of(session, user.account_id))


def lock_user(ctx: CallContext, user_id: str) -> User:
    """lockUser: the user is refused until enableUser; the last enabled user locks its account."""
    user = managed_user(ctx, user_id, "lock")
    if user.state == "locked":
        return user
    set_user_state(ctx.session, user, "locked")
    if not others_enabled(ctx.session, user):
        acct = ctx.session.get(Account, user.account_id)
        if acct is not None and acct.state == "enabled":
            acct.state = "locked"
    return user


def enable_user(ctx: CallContext, user_id: str) -> User:
    """enableUser: enabled again (a lock-out too: its failed logins are forgotten), and its account with it."""
    user = managed_user(ctx, user_id, "enable")
    user.state = "enabled"
    user.login_attempts = 0
    acct = ctx.session.get(Account, user.account_id)
    if acct is not None and acct.state in ("disabled", "locked"):
        acct.state = "enabled"
    return user


def delete_user(ctx: CallContext, user_id: str) -> None:
    """deleteUser: the user is removed; its keys and sessions stop working."""
    user = managed_user(ctx, user_id, "delete")
    user.removed = utcnow()
    user.state = "removed"
    user.api_key = None
    user.secret_key = None
    end_sessions(ctx.session, [user.id])


def update_user(ctx: CallContext, args: dict[str, Any]) -> User:
    """updateUser: names, email, time zone and password. A user changing its own password gives the
    current one; an admin resetting another's does not. A new password ends the user's other sessions."""
    user = get_user(ctx, args["id"])
    if user.id != ctx.user.id and not ctx.is_admin:
        raise PermissionDenied("Only admins may update other users")
    if args.get("username") and args["username"] != user.username:
        acct = ctx.session.get(Account, user.account_id)
        assert acct is not None
        _check_username_free(ctx.session, acct.domain_id, args["username"])
        user.username = args["username"]
    for param, attr in (("firstname", "firstname"), ("lastname", "lastname"), ("email", "email"),
                        ("timezone", "timezone")):  # fmt: skip
        if args.get(param) is not None:
            setattr(user, attr, args[param])
    if args.get("password") is not None:
        if not args["password"]:
            raise InvalidParameter("Parameter password must not be empty")
        if user.id == ctx.user.id and not ctx.is_root_admin:
            current = args.get("currentpassword")
            if not current or not verify_password(current, user.password_hash):
                raise InvalidParameter("Current password is incorrect: parameter currentpassword")
        user.password_hash = hash_password(args["password"])
        others = select(LoginSession).where(LoginSession.user_id == user.id)
        for row in ctx.session.scalars(others):
            if user.id != ctx.user.id:
                ctx.session.delete(row)
    return user


def enable_account(ctx: CallContext, args: dict[str, Any]) -> Account:
    """enableAccount: a disabled or locked account acts again (its users keep their own states)."""
    acct = managed_account(ctx, args, "enable")
    acct.state = "enabled"
    return acct


def lock_account(ctx: CallContext, args: dict[str, Any]) -> Account:
    """lockAccount: the account's users are refused until enableAccount; its VMs keep running."""
    acct = managed_account(ctx, args, "lock")
    if acct.state == "enabled":
        acct.state = "locked"
    end_sessions(ctx.session, [u.id for u in _users_of(ctx.session, acct.id)])
    return acct


def disable_account_now(session: Session, account_id: str) -> bool:
    """The state part of disableAccount; returns whether the account is disabled (so its VMs stop)."""
    acct = session.get(Account, account_id)
    if acct is None or acct.removed is not None:
        return False
    acct.state = "disabled"
    end_sessions(session, [u.id for u in _users_of(session, acct.id)])
    return True


def disable_user_now(session: Session, user_id: str) -> bool:
    """The state part of disableUser; returns whether its account was disabled with it (no enabled
    user left, as CloudStack does), so that the account's VMs stop."""
    user = session.get(User, user_id)
    if user is None or user.removed is not None:
        return False
    set_user_state(session, user, "disabled")
    if others_enabled(session, user):
        return False
    return disable_account_now(session, user.account_id)
