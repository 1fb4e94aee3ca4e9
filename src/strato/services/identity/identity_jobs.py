"""Async jobs of the identity area: deleting accounts and domains.

Both are idempotent soft-deletes, so recovering after a crash simply runs them again.
"""

from __future__ import annotations

from strato.db.models import Account, Domain, User
from strato.engine.context import JobContext
from strato.engine.jobkinds import JobResult, job_kind
from strato.services.core.context import CallContext
from strato.services.identity import identity


def _delete_account(job: JobContext) -> JobResult:
    with job.db.session() as s:
        identity.remove_account(s, job.params["accountid"])
    return {"success": True}


def _delete_domain(job: JobContext) -> JobResult:
    with job.db.session() as s:
        caller_user = s.get(User, job.user_id) if job.user_id else None
        caller = s.get(Account, job.account_id) if job.account_id else None
        if caller_user is None or caller is None:
            raise RuntimeError("the caller of deleteDomain no longer exists")
        domain = s.get(Domain, caller.domain_id)
        assert domain is not None
        ctx = CallContext(session=s, user=caller_user, account=caller, domain=domain)
        target = s.get(Domain, job.params["id"])
        if target is None or target.removed is not None:
            return {"success": True}
        identity.delete_domain(ctx, job.params["id"], bool(job.params.get("cleanup")))
    return {"success": True}


job_kind("account.delete", recover=_delete_account, event="ACCOUNT.DELETE")(_delete_account)
job_kind("domain.delete", recover=_delete_domain, event="DOMAIN.DELETE")(_delete_domain)
