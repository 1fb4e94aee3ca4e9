"""Domains, accounts and users: CloudStack's identity model."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from strato.db.base import utcnow
from strato.db.models import Account, Domain, Snapshot, Template, User, VirtualMachine, Volume
from strato.db.models.identity import ACCOUNT_TYPE_ADMIN, ACCOUNT_TYPE_DOMAIN_ADMIN, ACCOUNT_TYPE_USER
from strato.errors import InvalidParameter, NotFound, PermissionDenied
from strato.services.core.access import (
    check_account_access,
    get_domain,
    in_subtree,
    owner_scope,
)
from strato.services.core.context import CallContext
from strato.services.core.listing import Page, run_page
from strato.services.identity.passwords import hash_password, new_api_key

ROOT_DOMAIN = "ROOT"
ACCOUNT_TYPES = {ACCOUNT_TYPE_USER, ACCOUNT_TYPE_ADMIN, ACCOUNT_TYPE_DOMAIN_ADMIN}


def bootstrap(session: Session, admin_password: str) -> bool:
    """Creates the ROOT domain and the root admin on first start; returns whether it did."""
    if session.scalar(select(Domain).where(Domain.parent_id.is_(None))) is not None:
        return False
    root = Domain(name=ROOT_DOMAIN, path=ROOT_DOMAIN, level=0)
    session.add(root)
    session.flush()
    admin = Account(name="admin", domain_id=root.id, type=ACCOUNT_TYPE_ADMIN)
    session.add(admin)
    session.flush()
    session.add(
        User(
            account_id=admin.id,
            username="admin",
            password_hash=hash_password(admin_password),
            firstname="Admin",
            lastname="User",
        )
    )
    return True


# --- domains ---------------------------------------------------------------------------------------


def create_domain(ctx: CallContext, name: str, parent_id: str | None, network_domain: str | None) -> Domain:
    """createDomain: a child domain, below the caller's own for domain admins."""
    if "/" in name or not name.strip():
        raise InvalidParameter("Parameter name must be a non-empty domain name without '/'")
    parent = get_domain(ctx, parent_id) if parent_id else ctx.domain
    if not ctx.is_root_admin and not in_subtree(parent, ctx.domain):
        raise PermissionDenied("Domain admins may create domains only under their own domain")
    exists = ctx.session.scalar(
        select(Domain).where(Domain.parent_id == parent.id, Domain.name == name, Domain.removed.is_(None))
    )
    if exists is not None:
        raise InvalidParameter(f"Domain with name {name} already exists for the parent id={parent.id}")
    domain = Domain(
        name=name,
        parent_id=parent.id,
        path=f"{parent.path}/{name}",
        level=parent.level + 1,
        network_domain=network_domain,
    )
    ctx.session.add(domain)
    ctx.session.flush()
    return domain


def list_domains(ctx: CallContext, args: dict[str, Any], page: Page) -> tuple[list[Domain], int]:
    """listDomains: the domains the caller may see."""
    q = select(Domain).where(Domain.removed.is_(None))
    if not ctx.is_admin:
        q = q.where(Domain.id == ctx.domain.id)
    elif not ctx.is_root_admin:
        q = q.where((Domain.path == ctx.domain.path) | Domain.path.like(ctx.domain.path + "/%"))
    if args.get("id"):
        q = q.where(Domain.id == args["id"])
    if args.get("name"):
        q = q.where(Domain.name == args["name"])
    if args.get("level") is not None:
        q = q.where(Domain.level == args["level"])
    return run_page(ctx.session, q, page, (Domain.name,), (Domain.path,))


# --- accounts --------------------------------------------------------------------------------------


def get_account(ctx: CallContext, account_id: str) -> Account:
    """An account by id that the caller may act on."""
    acct = ctx.session.get(Account, account_id)
    if acct is None or acct.removed is not None:
        raise NotFound(f"Unable to find account by id {account_id}")
    _visible(ctx, acct, f"Unable to find account by id {account_id}")
    return acct


def _visible(ctx: CallContext, acct: Account, not_found: str) -> None:
    """The caller's access to an account, refused as for an unknown one: a stranger learns nothing."""
    try:
        check_account_access(ctx, acct)
    except PermissionDenied:
        raise NotFound(not_found) from None


def find_account(ctx: CallContext, name: str, domain_id: str | None) -> Account:
    """An account by name in a domain (the caller's by default), as the API's account/domainid pairs name it."""
    domain = get_domain(ctx, domain_id) if domain_id else ctx.domain
    acct = ctx.session.scalar(
        select(Account).where(Account.name == name, Account.domain_id == domain.id, Account.removed.is_(None))
    )
    if acct is None:
        raise NotFound(f"Unable to find account {name} in domain {domain.name}")
    _visible(ctx, acct, f"Unable to find account {name} in domain {domain.name}")
    return acct


def _check_username_free(session: Session, domain_id: str, username: str) -> None:
    if not username.strip():
        raise InvalidParameter("Parameter username must not be empty (found by the API fuzz: a user with no name)")
    taken = session.scalar(
        select(User)
        .join(Account, Account.id == User.account_id)
        .where(Account.domain_id == domain_id, User.username == username, User.removed.is_(None))
    )
    if taken is not None:
        raise InvalidParameter(f"The user {username} already exists in this domain")


def create_account(ctx: CallContext, args: dict[str, Any]) -> Account:
    """createAccount: an account and its first user; only root admins create admin accounts."""
    acct_type = args.get("accounttype")
    if acct_type is None:
        acct_type = {"Admin": ACCOUNT_TYPE_ADMIN, "DomainAdmin": ACCOUNT_TYPE_DOMAIN_ADMIN}.get(
            args.get("roletype") or "", ACCOUNT_TYPE_USER
        )
    if acct_type not in ACCOUNT_TYPES:
        raise InvalidParameter("Parameter accounttype must be 0 (user), 1 (root admin) or 2 (domain admin)")
    if acct_type == ACCOUNT_TYPE_ADMIN and not ctx.is_root_admin:
        raise PermissionDenied("Only the root admin may create root admin accounts")
    domain = get_domain(ctx, args["domainid"]) if args.get("domainid") else ctx.domain
    if acct_type == ACCOUNT_TYPE_ADMIN and domain.parent_id is not None:
        raise InvalidParameter("Root admin accounts can only be created in the ROOT domain")
    name = args.get("account") or args["username"]
    clash = ctx.session.scalar(
        select(Account).where(Account.name == name, Account.domain_id == domain.id, Account.removed.is_(None))
    )
    if clash is not None:
        raise InvalidParameter(f"The account {name} already exists in domain {domain.name}")
    _check_username_free(ctx.session, domain.id, args["username"])
    acct = Account(name=name, domain_id=domain.id, type=acct_type, network_domain=args.get("networkdomain"))
    ctx.session.add(acct)
    ctx.session.flush()
    ctx.session.add(_new_user(acct, args))
    ctx.session.flush()
    return acct


def _new_user(acct: Account, args: dict[str, Any]) -> User:
    return User(
        account_id=acct.id,
        username=args["username"],
        password_hash=hash_password(args["password"]),
        firstname=args.get("firstname") or "",
        lastname=args.get("lastname") or "",
        email=args.get("email"),
        timezone=args.get("timezone"),
    )


def list_accounts(ctx: CallContext, args: dict[str, Any], page: Page) -> tuple[list[Account], int]:
    """listAccounts: the accounts the caller may see."""
    scope = owner_scope(ctx, {**args, "listall": True if ctx.is_admin else args.get("listall")})
    q = select(Account).where(Account.removed.is_(None), scope.condition(Account.id))
    if args.get("id"):
        q = q.where(Account.id == args["id"])
    if args.get("name"):
        q = q.where(Account.name == args["name"])
    if args.get("accounttype") is not None:
        q = q.where(Account.type == args["accounttype"])
    if args.get("state"):
        q = q.where(Account.state == args["state"].lower())
    return run_page(ctx.session, q, page, (Account.name,), (Account.name,))


def update_account(ctx: CallContext, args: dict[str, Any]) -> Account:
    """updateAccount: renames or changes an account, found by id or by name and domain."""
    if args.get("id"):
        acct = get_account(ctx, args["id"])
    elif args.get("account"):
        acct = find_account(ctx, args["account"], args.get("domainid"))
    else:
        raise InvalidParameter("Either parameter id or parameter account (with domainid) is required")
    if args.get("newname"):
        clash = ctx.session.scalar(
            select(Account).where(
                Account.name == args["newname"],
                Account.domain_id == acct.domain_id,
                Account.removed.is_(None),
                Account.id != acct.id,
            )
        )
        if clash is not None:
            raise InvalidParameter(f"The account {args['newname']} already exists in this domain")
        acct.name = args["newname"]
    if args.get("networkdomain") is not None:
        acct.network_domain = args["networkdomain"]
    return acct


def owned_resources(session: Session, account_id: str) -> str | None:
    """What still belongs to the account (a VM, volume, volume snapshot or template), in words; None when
    nothing. Volume snapshots outlive their volumes, so an account keeps them until they are deleted."""

    for model, label in ((VirtualMachine, "VM"), (Volume, "volume"), (Snapshot, "snapshot"), (Template, "template")):
        row = session.scalar(select(model).where(model.account_id == account_id, model.removed.is_(None)))
        if row is not None:
            return f"{label} {getattr(row, 'name', row.id)}"
    return None


def _remove_account(session: Session, acct: Account) -> None:
    now = utcnow()
    for user in session.scalars(select(User).where(User.account_id == acct.id, User.removed.is_(None))):
        user.removed = now
        user.state = "removed"
        user.api_key = None
        user.secret_key = None
    acct.removed = now
    acct.state = "removed"


def remove_account(session: Session, account_id: str) -> None:
    """The work of an account deletion job: the account and its users are soft-deleted."""
    acct = session.get(Account, account_id)
    if acct is not None and acct.removed is None:
        _remove_account(session, acct)


# --- users -----------------------------------------------------------------------------------------


def get_user(ctx: CallContext, user_id: str) -> User:
    """A user by id: oneself, or a user of an account the caller may act on."""
    user = ctx.session.get(User, user_id)
    if user is None or user.removed is not None:
        raise NotFound(f"Unable to find user by id {user_id}")
    acct = ctx.session.get(Account, user.account_id)
    assert acct is not None
    if user.id != ctx.user.id:
        _visible(ctx, acct, f"Unable to find user by id {user_id}")
    return user


def create_user(ctx: CallContext, args: dict[str, Any]) -> User:
    """createUser: a user in an account, its name free in the domain."""
    acct = find_account(ctx, args["account"], args.get("domainid"))
    _check_username_free(ctx.session, acct.domain_id, args["username"])
    user = _new_user(acct, args)
    ctx.session.add(user)
    ctx.session.flush()
    return user


def list_users(ctx: CallContext, args: dict[str, Any], page: Page) -> tuple[list[User], int]:
    """listUsers: the users the caller may see."""
    scope = owner_scope(ctx, {**args, "listall": True if ctx.is_admin else args.get("listall")})
    q = select(User).where(User.removed.is_(None), scope.condition(User.account_id))
    if args.get("id"):
        q = q.where(User.id == args["id"])
    if args.get("username"):
        q = q.where(User.username == args["username"])
    if args.get("state"):
        q = q.where(User.state == args["state"].lower())
    return run_page(ctx.session, q, page, (User.username,), (User.username,))


def register_user_keys(ctx: CallContext, user_id: str) -> User:
    """registerUserKeys: new API and secret keys; the old ones stop working."""
    user = get_user(ctx, user_id)
    user.api_key = new_api_key()
    user.secret_key = new_api_key()
    return user
