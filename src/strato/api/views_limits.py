"""The limit fields of an account or a domain in listAccounts / listDomains, as CloudStack shows them
(`vmlimit`, `vmtotal`, `vmavailable`, ... "Unlimited" where there is no cap); `vmsnapshot*` is Strato's."""

from __future__ import annotations

from collections.abc import Collection, Iterable
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from strato.api.pageload import related
from strato.db import rows as dbrows
from strato.db.models import Account, Domain
from strato.services.core import limits
from strato.units import GIB

PREFIX = {
    limits.USER_VM: "vm",
    limits.PUBLIC_IP: "ip",
    limits.VOLUME: "volume",
    limits.SNAPSHOT: "snapshot",
    limits.NETWORK: "network",
    limits.PRIMARY_STORAGE: "primarystorage",
    limits.VM_SNAPSHOT: "vmsnapshot",
}


def _fields(figures: limits.Figures) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for rtype, (cap, used) in figures.items():
        total = used // GIB if rtype == limits.PRIMARY_STORAGE else used
        name = PREFIX[rtype]
        out[f"{name}limit"] = "Unlimited" if cap < 0 else str(cap)
        out[f"{name}total"] = total
        out[f"{name}available"] = "Unlimited" if cap < 0 else str(max(0, cap - total))
    return out


def account_limits(session: Session, account: Account) -> dict[str, Any]:
    def load(ids: Collection[Any]) -> Iterable[tuple[Any, Any]]:
        rows = dbrows.load(session, Account, select(Account).where(dbrows.among(session, Account.id, ids)))
        return list(limits.account_figures(session, rows).items())

    found = related(session, "account.limits", account.id, load, refs=False)
    return _fields(found[0]) if found else {}


def domain_limits(session: Session, domain: Domain) -> dict[str, Any]:
    def load(ids: Collection[Any]) -> Iterable[tuple[Any, Any]]:
        rows = dbrows.load(session, Domain, select(Domain).where(dbrows.among(session, Domain.id, ids)))
        return list(limits.domain_figures(session, rows).items())

    found = related(session, "domain.limits", domain.id, load, refs=False)
    return _fields(found[0]) if found else {}
