"""disableAccount and disableUser: the state change, then the account's running VMs stopped as
CloudStack does when an account is disabled, each by a stopVirtualMachine child job (its own lock, steps,
recovery and event). A locked account is not stopped: lockAccount is synchronous, in identity."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

from pydantic import BaseModel
from sqlalchemy import select
from sqlalchemy.orm import Session

from strato.db.models import Account, User, VirtualMachine
from strato.engine.jobkinds import JobResult
from strato.engine.operation import Operation, Step, StepData
from strato.errors import CloudError, NotFound, ResourceUnavailable
from strato.services.compute.power import StopParams, StopVirtualMachine
from strato.services.core import jobs
from strato.services.core.childjobs import ChildFailed, active_job_on, submit_child, wait_child
from strato.services.core.context import CallContext
from strato.services.identity.lifecycle import disable_account_now, disable_user_now, managed_account, managed_user


class DisableParams(BaseModel):
    account_id: str
    user_id: str | None = None  # disableUser: the account follows only when no enabled user is left


class DisableAccount(Operation[DisableParams]):
    kind: ClassVar[str] = "account.disable"
    cmd: ClassVar[str] = "disableAccount"
    event: ClassVar[str | None] = "ACCOUNT.DISABLE"
    params_model = DisableParams
    resumable: ClassVar[bool] = True

    @classmethod
    def resources(cls, params: DisableParams) -> list[str]:
        return [f"account:{params.account_id}"]

    @classmethod
    def check(cls, session: Session, params: DisableParams) -> None:
        acct = session.get(Account, params.account_id)
        if acct is None or acct.removed is not None:
            raise NotFound(f"Unable to find account by id {params.account_id}")

    def steps(self) -> Sequence[Step]:
        return [Step("disable", self._disable, commit=True), Step("stop vms", self._stop_vms)]

    def _disable(self) -> StepData:
        with self.db.session() as s:
            if self.params.user_id:
                return {"account_disabled": disable_user_now(s, self.params.user_id)}
            return {"account_disabled": disable_account_now(s, self.params.account_id)}

    def _stop_vms(self) -> StepData:
        if not self.output("disable").get("account_disabled"):
            return {}
        with self.db.session() as s:
            running = list(
                s.scalars(
                    select(VirtualMachine.id).where(
                        VirtualMachine.account_id == self.params.account_id,
                        VirtualMachine.removed.is_(None),
                        VirtualMachine.state == "Running",
                    )
                )
            )
        failed: list[str] = []
        for index, vm_id in enumerate(running):
            child = active_job_on(self.job, f"vm:{vm_id}", StopVirtualMachine.kind)
            try:
                if child is None:
                    child = submit_child(self.job, StopVirtualMachine, StopParams(vm_id=vm_id), "VirtualMachine", vm_id)
                wait_child(self.job, child, index, len(running))
            except ChildFailed as exc:
                failed.append(exc.text)
            except CloudError:
                continue  # the VM stopped, or was destroyed, meanwhile (the child's check refused it)
        if failed:
            raise ResourceUnavailable(f"The account is disabled but {len(failed)} VM(s) did not stop: {failed[0]}")
        return {}

    def result(self) -> JobResult:
        if self.params.user_id:
            return {"type": "user", "id": self.params.user_id}
        return {"type": "account", "id": self.params.account_id}


def disable_account(ctx: CallContext, args: dict[str, Any]) -> tuple[str, str]:
    """disableAccount lock=false (lock=true is lockAccount's): the job id and the account's id."""
    acct = managed_account(ctx, args, "disable")
    params = DisableParams(account_id=acct.id)
    return jobs.submit_operation(ctx, DisableAccount, params, "Account", acct.id, cmd="disableAccount"), acct.id


def disable_user(ctx: CallContext, user_id: str) -> str:
    """disableUser: the job id."""
    user: User = managed_user(ctx, user_id, "disable")
    params = DisableParams(account_id=user.account_id, user_id=user.id)
    return jobs.submit_operation(ctx, DisableAccount, params, "User", user.id, cmd="disableUser")
