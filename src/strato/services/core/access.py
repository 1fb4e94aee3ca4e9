"""Who may see and touch what: root admins everything, domain admins their domain subtree, users
their own account's resources."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import ColumnElement, select, true
from sqlalchemy.orm import InstrumentedAttribute

from strato.db.models import Account, Domain, VirtualMachine
from strato.db.models.identity import ACCOUNT_TYPE_ADMIN, ACCOUNT_TYPE_DOMAIN_ADMIN
from strato.errors import NotFound, PermissionDenied
from strato.services.core.context import CallContext


def in_subtree(domain: Domain, ancestor: Domain) -> bool:
    """Domain admins act on their domain and every domain below it."""
    return domain.path == ancestor.path or domain.path.startswith(ancestor.path + "/")


def get_domain(ctx: CallContext, domain_id: str) -> Domain:
    """A domain the caller may see; others answer NotFound so that ids do not leak."""
    domain = ctx.session.get(Domain, domain_id)
    if domain is None or domain.removed is not None or not can_see_domain(ctx, domain):
        raise NotFound(f"Unable to find domain by id {domain_id}")
    return domain


def can_see_domain(ctx: CallContext, domain: Domain) -> bool:
    """Root admins see every domain, domain admins their subtree, users their own domain."""
    if ctx.is_root_admin:
        return True
    if ctx.is_domain_admin:
        return in_subtree(domain, ctx.domain)
    return domain.id == ctx.domain.id


def check_account_access(ctx: CallContext, account: Account) -> None:
    """Raises 531 when the caller may not act on the account's resources."""
    if ctx.is_root_admin or account.id == ctx.account.id:
        return
    if ctx.is_domain_admin and account.type != ACCOUNT_TYPE_ADMIN:
        # A domain admin manages the users of its subtree, and the domain admins of domains below its
        # own; never a root admin, nor a peer domain admin of its own domain.
        domain = ctx.session.get(Domain, account.domain_id)
        if domain is not None and in_subtree(domain, ctx.domain):
            peer = account.type == ACCOUNT_TYPE_DOMAIN_ADMIN and domain.id == ctx.domain.id
            if not peer:
                return
    raise PermissionDenied(
        f"Account {ctx.account.name} does not have permission to access resources of account {account.name}"
    )


@dataclass(frozen=True)
class OwnerScope:
    """The accounts a list call covers, as a SQL condition on an account_id column."""

    account_ids: frozenset[str] | None = None  # None: no restriction by account id
    domain_path: str | None = None
    recursive: bool = False

    def condition(self, account_col: InstrumentedAttribute[Any]) -> ColumnElement[bool]:
        cond: ColumnElement[bool] = true()
        if self.account_ids is not None:
            cond = account_col.in_(self.account_ids)
        if self.domain_path is not None:
            accounts = select(Account.id).join(Domain, Domain.id == Account.domain_id)
            if self.recursive:
                accounts = accounts.where((Domain.path == self.domain_path) | Domain.path.like(self.domain_path + "/%"))
            else:
                accounts = accounts.where(Domain.path == self.domain_path)
            cond = cond & account_col.in_(accounts)
        return cond


def owner_scope(ctx: CallContext, args: dict[str, Any]) -> OwnerScope:
    """CloudStack's listall / domainid / isrecursive / account semantics."""
    listall = bool(args.get("listall"))
    recursive = bool(args.get("isrecursive"))
    domain_id = args.get("domainid")
    account_name = args.get("account")
    if not ctx.is_admin:
        if domain_id and domain_id != ctx.domain.id:
            raise PermissionDenied("A user may only list resources of its own domain")
        if account_name and account_name != ctx.account.name:
            raise PermissionDenied("A user may only list resources of its own account")
        return OwnerScope(account_ids=frozenset({ctx.account.id}))
    if domain_id:
        domain = get_domain(ctx, domain_id)
        if account_name:
            acct = ctx.session.scalar(
                select(Account).where(
                    Account.domain_id == domain.id, Account.name == account_name, Account.removed.is_(None)
                )
            )
            if acct is None:
                raise NotFound(f"Unable to find account {account_name} in domain {domain.name}")
            return OwnerScope(account_ids=frozenset({acct.id}))
        # As CloudStack: with domainid, listall does not imply the subtree; isrecursive does.
        return OwnerScope(domain_path=domain.path, recursive=recursive)
    if account_name:
        acct = ctx.session.scalar(
            select(Account).where(
                Account.domain_id == ctx.domain.id, Account.name == account_name, Account.removed.is_(None)
            )
        )
        if acct is None:
            raise NotFound(f"Unable to find account {account_name} in domain {ctx.domain.name}")
        check_account_access(ctx, acct)
        return OwnerScope(account_ids=frozenset({acct.id}))
    if not listall:
        return OwnerScope(account_ids=frozenset({ctx.account.id}))
    if ctx.is_root_admin:
        return OwnerScope()
    return OwnerScope(domain_path=ctx.domain.path, recursive=True)


def get_owned(ctx: CallContext, model: Any, entity_id: str, label: str, param: str = "id") -> Any:
    """A live row with an account_id that the caller may act on; otherwise NotFound, as CloudStack
    answers for ids the caller may not see (so that ids do not leak)."""
    row = ctx.session.get(model, entity_id)
    if row is None or row.removed is not None:
        raise NotFound(f"Unable to find {label} with {param}={entity_id}")
    acct = ctx.session.get(Account, row.account_id)
    assert acct is not None
    try:
        check_account_access(ctx, acct)
    except PermissionDenied:
        raise NotFound(f"Unable to find {label} with {param}={entity_id}") from None
    return row


def get_vm(ctx: CallContext, vm_id: str, param: str = "id") -> VirtualMachine:
    """A VM the caller may act on; here, below compute, so that storage and images can look VMs up too."""
    found: VirtualMachine = get_owned(ctx, VirtualMachine, vm_id, "virtual machine", param)
    return found
