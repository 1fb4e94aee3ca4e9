"""Who is calling, inside which unit of work: passed to every service function."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy.orm import Session

from strato.db.models import Account, Domain, User
from strato.db.models.identity import ACCOUNT_TYPE_ADMIN, ACCOUNT_TYPE_DOMAIN_ADMIN


@dataclass
class CallContext:
    """Who is calling, in which session: every service function takes one, so that access rules apply."""

    session: Session
    user: User
    account: Account
    domain: Domain

    @property
    def is_root_admin(self) -> bool:
        return self.account.type == ACCOUNT_TYPE_ADMIN

    @property
    def is_domain_admin(self) -> bool:
        return self.account.type == ACCOUNT_TYPE_DOMAIN_ADMIN

    @property
    def is_admin(self) -> bool:
        return self.is_root_admin or self.is_domain_admin
