"""deleteAccount and deleteDomain stopped after their one step, then recovered: each goes on to the end
(a soft deletion is safe to repeat), so the account or the domain is gone, with nothing else touched."""

from __future__ import annotations

from conftest import FaultCloud
from helpers.faultlib import Promises, run_fault_matrix


def test_account_delete_on_the_simulator(simcloud: FaultCloud) -> None:
    api = simcloud.api()
    made: list[str] = []

    def start() -> str:
        acct = api.createAccount(username=simcloud.name("fa"), password="pw", accounttype=0)["account"]
        made.append(acct["id"])
        return str(api.deleteAccount(id=acct["id"])["jobid"])

    def check(_step: str, found: Promises) -> None:
        assert found.job["jobstatus"] == 1, found.job
        assert api.listAccounts(id=made[-1]) == {}

    names = run_fault_matrix(simcloud.server, api, simcloud.fault_file, "account.delete", start, simcloud.files,
                             after_each=check)  # fmt: skip
    assert names == ["remove account"], names


def test_domain_delete_on_the_simulator(simcloud: FaultCloud) -> None:
    api = simcloud.api()
    made: list[str] = []

    def start() -> str:
        dom = api.createDomain(name=simcloud.name("fd"))["domain"]
        api.createAccount(username=simcloud.name("in"), password="pw", accounttype=0, domainid=dom["id"])
        made.append(dom["id"])
        return str(api.deleteDomain(id=dom["id"], cleanup=True)["jobid"])

    def check(_step: str, found: Promises) -> None:
        assert found.job["jobstatus"] == 1, found.job
        assert api.listDomains(id=made[-1]) == {}

    names = run_fault_matrix(simcloud.server, api, simcloud.fault_file, "domain.delete", start, simcloud.files,
                             after_each=check)  # fmt: skip
    assert names == ["remove domain"], names
