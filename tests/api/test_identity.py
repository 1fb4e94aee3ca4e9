"""Domains, accounts and who sees what: a domain admin sees its subtree only; listall, domainid and
isrecursive narrow or widen lists as in CloudStack."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
from cs import CloudStack, CloudStackApiException

from helpers.serverproc import Keys, ServerProcess, create_user_keys


@dataclass
class Tree:
    """ROOT/<top>/<sub> and ROOT/<other>, each with one user account; a domain admin of <top>."""

    top: dict[str, Any]
    sub: dict[str, Any]
    other: dict[str, Any]
    top_user: Keys
    sub_user: Keys
    other_user: Keys
    top_admin: Keys


@pytest.fixture(scope="module")
def tree(server: ServerProcess, admin: CloudStack) -> Tree:
    import uuid

    tag = uuid.uuid4().hex[:6]
    top = admin.createDomain(name=f"top-{tag}")["domain"]
    sub = admin.createDomain(name=f"sub-{tag}", parentdomainid=top["id"])["domain"]
    other = admin.createDomain(name=f"other-{tag}")["domain"]

    def keys(name: str, domain: dict[str, Any], accounttype: int = 0) -> Keys:
        return create_user_keys(
            admin, server.endpoint, username=f"{name}-{tag}", domainid=domain["id"], accounttype=accounttype
        )

    return Tree(top, sub, other, keys("tu", top), keys("su", sub), keys("ou", other), keys("ta", top, 2))


def _ids(items: list[dict[str, Any]]) -> set[str]:
    return {i["id"] for i in items}


def test_domain_admin_sees_its_subtree_only(server: ServerProcess, tree: Tree) -> None:
    da = server.cs(tree.top_admin)
    domains = da.listDomains(listall=True)["domain"]
    assert _ids(domains) == {tree.top["id"], tree.sub["id"]}
    accounts = da.listAccounts(listall=True)["account"]
    assert _ids(accounts) == {tree.top_user.accountid, tree.sub_user.accountid, tree.top_admin.accountid}
    users = da.listUsers(listall=True)["user"]
    assert tree.other_user.userid not in _ids(users) and tree.sub_user.userid in _ids(users)
    # The other domain does not exist for it.
    with pytest.raises(CloudStackApiException) as err:
        da.listAccounts(domainid=tree.other["id"])
    assert err.value.error["errorcode"] == 431 and "Unable to find domain" in err.value.error["errortext"]
    with pytest.raises(CloudStackApiException) as err:
        da.getUserKeys(id=tree.other_user.userid)
    # As for an unknown id: nothing tells it that the user exists.
    assert err.value.error["errorcode"] == 431
    assert err.value.error["errortext"] == f"Unable to find user by id {tree.other_user.userid}"
    # But it may act inside its subtree.
    assert da.getUserKeys(id=tree.sub_user.userid)["userkeys"]["apikey"] == tree.sub_user.apikey


def test_domain_admin_creates_only_below_itself(
    server: ServerProcess, tree: Tree, unique: Callable[[str], str]
) -> None:
    da = server.cs(tree.top_admin)
    child = da.createDomain(name=unique("child"), parentdomainid=tree.sub["id"])["domain"]
    assert child["path"].endswith(f"/{tree.top['name']}/{tree.sub['name']}/{child['name']}")
    with pytest.raises(CloudStackApiException) as err:
        da.createDomain(name=unique("evil"), parentdomainid=tree.other["id"])
    assert err.value.error["errorcode"] == 431
    with pytest.raises(CloudStackApiException) as err:
        da.createAccount(username=unique("root"), password="pw", accounttype=1)
    assert err.value.error["errorcode"] == 531
    # Root admin commands stay out of reach.
    with pytest.raises(CloudStackApiException) as err:
        da.createZone(name=unique("zone"))
    assert err.value.error["errorcode"] == 432


def test_user_sees_its_own_account_and_domain(server: ServerProcess, tree: Tree) -> None:
    user = server.cs(tree.sub_user)
    assert _ids(user.listAccounts(listall=True)["account"]) == {tree.sub_user.accountid}
    assert _ids(user.listDomains(listall=True)["domain"]) == {tree.sub["id"]}
    with pytest.raises(CloudStackApiException) as err:
        user.listEvents(domainid=tree.top["id"])
    assert err.value.error["errorcode"] == 531


def test_domainid_and_isrecursive(server: ServerProcess, admin: CloudStack, tree: Tree) -> None:
    def accounts(**params: Any) -> set[str]:
        return _ids(admin.listAccounts(**params).get("account", []))

    top_only = {tree.top_user.accountid, tree.top_admin.accountid}
    assert accounts(domainid=tree.top["id"], isrecursive=False) == top_only
    assert accounts(domainid=tree.top["id"], isrecursive=True) == top_only | {tree.sub_user.accountid}
    assert accounts(domainid=tree.sub["id"]) == {tree.sub_user.accountid}
    assert accounts(domainid=tree.top["id"], account=f"tu-{tree.top['name'][4:]}") == {tree.top_user.accountid}
    every = accounts(listall=True)
    assert top_only | {tree.sub_user.accountid, tree.other_user.accountid} <= every


def test_listall_on_owned_lists(server: ServerProcess, admin: CloudStack, tree: Tree) -> None:
    # Each user leaves an audit event by tagging its own account.
    for keys in (tree.top_user, tree.sub_user, tree.other_user):
        server.cs(keys).createTags(resourcetype="Account", resourceids=keys.accountid, tags={"key": "k", "value": "v"})

    def event_accounts(client: CloudStack, **params: Any) -> set[str]:
        events = client.listEvents(type="CREATE_TAGS", pagesize=-1, **params).get("event", [])
        return {e["accountid"] for e in events}

    da = server.cs(tree.top_admin)
    # Without listall: the caller's own; with listall: everything it may see.
    assert event_accounts(da) <= {tree.top_admin.accountid}
    assert event_accounts(da, listall=True) == {tree.top_user.accountid, tree.sub_user.accountid}
    assert event_accounts(da, domainid=tree.sub["id"]) == {tree.sub_user.accountid}
    assert event_accounts(da, domainid=tree.top["id"], isrecursive=False) == {tree.top_user.accountid}
    assert event_accounts(da, domainid=tree.top["id"], isrecursive=True) == {
        tree.top_user.accountid,
        tree.sub_user.accountid,
    }
    everyone = event_accounts(admin, listall=True)
    assert {tree.top_user.accountid, tree.sub_user.accountid, tree.other_user.accountid} <= everyone
    # Tags follow the same rules.
    tags = da.listTags(listall=True, key="k")["tag"]
    assert {t["resourceid"] for t in tags} == {tree.top_user.accountid, tree.sub_user.accountid}
    assert server.cs(tree.sub_user).listTags(listall=True)["tag"][0]["resourceid"] == tree.sub_user.accountid


def test_delete_account_is_async_and_ends(
    server: ServerProcess, admin: CloudStack, unique: Callable[[str], str]
) -> None:
    acct = admin.createAccount(username=unique("temp"), password="pw", accounttype=0)["account"]
    started = admin.deleteAccount(id=acct["id"])
    assert set(started) >= {"jobid"}
    result = admin._jobresult(started["jobid"])
    assert result == {"success": True}
    job = admin.queryAsyncJobResult(jobid=started["jobid"])
    assert job["jobstatus"] == 1 and job["jobresultcode"] == 0 and job["cmd"] == "deleteAccount"
    assert job["jobinstancetype"] == "Account" and job["jobinstanceid"] == acct["id"]
    assert admin.listAccounts(id=acct["id"]) == {}
    assert any(j["jobid"] == started["jobid"] for j in admin.listAsyncJobs()["asyncjobs"])


def test_delete_domain_with_and_without_cleanup(
    server: ServerProcess, admin: CloudStack, unique: Callable[[str], str]
) -> None:
    dom = admin.createDomain(name=unique("doomed"))["domain"]
    acct = admin.createAccount(username=unique("inside"), password="pw", accounttype=0, domainid=dom["id"])["account"]
    jobid = admin.deleteDomain(id=dom["id"])["jobid"]
    with pytest.raises(CloudStackApiException) as err:
        admin._jobresult(jobid)
    assert err.value.error["errorcode"] == 536 and "still has 1 account" in err.value.error["errortext"]
    assert admin.listDomains(id=dom["id"])["count"] == 1
    assert admin._jobresult(admin.deleteDomain(id=dom["id"], cleanup=True)["jobid"]) == {"success": True}
    assert admin.listDomains(id=dom["id"]) == {}
    assert admin.listAccounts(id=acct["id"]) == {}


def test_root_admin_account_cannot_be_deleted(server: ServerProcess, admin: CloudStack, admin_keys: Keys) -> None:
    root_admin = admin.listAccounts(name="admin")["account"][0]
    with pytest.raises(CloudStackApiException) as err:
        admin.deleteAccount(id=root_admin["id"])
    assert err.value.error["errorcode"] == 431 and "itself" in err.value.error["errortext"]
    assert isinstance(admin.listZones(), dict)


def test_an_empty_username_is_refused(admin: CloudStack) -> None:
    """Found by the API fuzz: createAccount / createUser with username="" made a user with no name."""
    with pytest.raises(CloudStackApiException) as err:
        admin.createAccount(accounttype=0, email="e@x.invalid", firstname="f", lastname="l", password="pw-12345",
                            username="")  # fmt: skip
    assert err.value.error["errorcode"] == 431 and "username" in err.value.error["errortext"]
    assert not [u for a in admin.listAccounts(listall=True)["account"] for u in a["user"] if u["username"] == ""]
