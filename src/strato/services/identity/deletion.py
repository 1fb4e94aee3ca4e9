"""deleteAccount / deleteDomain: soft deletions, one step each, safe to repeat (after a crash they run
again). Who may delete what (the caller's access, an account deleting itself, a domain admin's own
domain) is decided at the request; the rules on what is deleted are the operations' own."""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

from pydantic import BaseModel
from sqlalchemy import select
from sqlalchemy.orm import Session

from strato.db.base import utcnow
from strato.db.models import Account, Domain
from strato.db.models.identity import ACCOUNT_TYPE_ADMIN
from strato.engine.jobkinds import JobResult
from strato.engine.operation import Operation, Step
from strato.errors import InvalidParameter, NotFound, PermissionDenied, ResourceInUse
from strato.services.core import jobs
from strato.services.core.access import get_domain, in_subtree
from strato.services.core.context import CallContext
from strato.services.identity.identity import get_account, owned_resources, remove_account


class AccountParams(BaseModel):
    accountid: str


class DeleteAccount(Operation[AccountParams]):
    kind: ClassVar[str] = "account.delete"
    cmd: ClassVar[str] = "deleteAccount"
    event: ClassVar[str | None] = "ACCOUNT.DELETE"
    params_model = AccountParams
    resumable: ClassVar[bool] = True

    @classmethod
    def resources(cls, params: AccountParams) -> list[str]:
        return [f"account:{params.accountid}"]

    @classmethod
    def check(cls, session: Session, params: AccountParams) -> None:
        acct = session.get(Account, params.accountid)
        if acct is None or acct.removed is not None:
            raise NotFound(f"Unable to find account by id {params.accountid}")
        if acct.type == ACCOUNT_TYPE_ADMIN:
            admins = session.scalars(select(Account.id).where(Account.type == ACCOUNT_TYPE_ADMIN,
                                                              Account.removed.is_(None))).all()  # fmt: skip
            if len(admins) <= 1:
                raise InvalidParameter("The last root admin account cannot be deleted")
        owned = owned_resources(session, acct.id)
        if owned is not None:
            raise ResourceInUse(
                f"Account {acct.name} still owns {owned}; delete its VMs, volumes, snapshots and templates first"
            )

    def steps(self) -> Sequence[Step]:
        return [Step("remove account", self._remove, commit=True)]

    def _remove(self) -> None:
        with self.db.session() as s:
            remove_account(s, self.params.accountid)

    def result(self) -> JobResult:
        return {"success": True}


class DomainParams(BaseModel):
    id: str
    cleanup: bool = False


class DeleteDomain(Operation[DomainParams]):
    """Its rules on the domain's accounts are checked in its one step, under its lock: their failure is
    the job's result (as CloudStack answers it), not the request's."""

    kind: ClassVar[str] = "domain.delete"
    cmd: ClassVar[str] = "deleteDomain"
    event: ClassVar[str | None] = "DOMAIN.DELETE"
    params_model = DomainParams
    resumable: ClassVar[bool] = True

    @classmethod
    def resources(cls, params: DomainParams) -> list[str]:
        return [f"domain:{params.id}"]

    @classmethod
    def check(cls, session: Session, params: DomainParams) -> None:
        domain = session.get(Domain, params.id)
        if domain is None or domain.removed is not None:
            raise NotFound(f"Unable to find domain by id {params.id}")
        if domain.parent_id is None:
            raise InvalidParameter("The ROOT domain cannot be deleted")

    def steps(self) -> Sequence[Step]:
        return [Step("remove domain", self._remove, commit=True)]

    def _remove(self) -> None:
        with self.db.session() as s:
            domain = s.get(Domain, self.params.id)
            if domain is None or domain.removed is not None:
                return  # removed by this job before a restart
            subtree = [d for d in s.scalars(select(Domain).where(Domain.removed.is_(None))) if in_subtree(d, domain)]
            accounts = list(s.scalars(select(Account).where(Account.domain_id.in_([d.id for d in subtree]),
                                                            Account.removed.is_(None))))  # fmt: skip
            for acct in accounts:
                owned = owned_resources(s, acct.id)
                if owned is not None:
                    raise ResourceInUse(f"Account {acct.name} of domain {domain.name} still owns {owned}")
            if accounts and not self.params.cleanup:
                raise ResourceInUse(
                    f"Domain {domain.name} still has {len(accounts)} account(s); delete them first or pass cleanup=true"
                )
            now = utcnow()
            for acct in accounts:
                remove_account(s, acct.id)
            for d in subtree:
                d.removed = now

    def result(self) -> JobResult:
        return {"success": True}


def delete_account(ctx: CallContext, account_id: str) -> str:
    """deleteAccount: the caller's rights, then the deletion job (its rules checked now and at its start)."""
    acct = get_account(ctx, account_id)
    if acct.id == ctx.account.id:
        raise InvalidParameter("An account cannot delete itself")
    return jobs.submit_operation(ctx, DeleteAccount, AccountParams(accountid=acct.id), "Account", acct.id)


def delete_domain(ctx: CallContext, domain_id: str, cleanup: bool) -> str:
    """deleteDomain: the caller's rights, then the deletion job."""
    domain = get_domain(ctx, domain_id)
    if domain.parent_id is None:
        raise InvalidParameter("The ROOT domain cannot be deleted")
    if domain.id == ctx.domain.id:
        raise PermissionDenied("A domain admin cannot delete its own domain")
    return jobs.submit_operation(ctx, DeleteDomain, DomainParams(id=domain.id, cleanup=cleanup), "Domain", domain.id)
