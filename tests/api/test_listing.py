"""List behaviour (page/pagesize/count, keyword, empty lists), listApis, the audit trail in listEvents,
resource tags on a zone, settings validation and hypervisor capabilities."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx
import pytest
from cs import CloudStack, CloudStackApiException

from helpers.serverproc import Keys, ServerProcess, signed_query


@pytest.fixture(scope="module")
def crowd(admin: CloudStack) -> dict[str, Any]:
    """A domain holding 23 accounts named crowd-NN (one of them also matching 'needle')."""
    import uuid

    dom = admin.createDomain(name=f"crowd-{uuid.uuid4().hex[:6]}")["domain"]
    names = [f"crowd-{i:02d}" for i in range(22)] + ["crowd-needle"]
    for name in names:
        admin.createAccount(username=name, password="pw", accounttype=0, domainid=dom["id"])
    return {"domain": dom, "names": names}


def test_pages_cover_the_list_once_with_a_total_count(admin: CloudStack, crowd: dict[str, Any]) -> None:
    dom = crowd["domain"]["id"]
    seen: list[str] = []
    for page in (1, 2, 3):
        res = admin.listAccounts(domainid=dom, page=page, pagesize=10)
        assert res["count"] == 23
        seen += [a["name"] for a in res["account"]]
        assert len(res["account"]) == (10 if page < 3 else 3)
    assert sorted(seen) == sorted(crowd["names"]) and len(set(seen)) == 23
    # Past the end: no items.
    assert admin.listAccounts(domainid=dom, page=4, pagesize=10).get("account", []) == []
    # pagesize=-1: everything.
    assert len(admin.listAccounts(domainid=dom, pagesize=-1)["account"]) == 23
    # cs's own paging (fetch_list) walks the pages and gets the same set.
    assert sorted(a["name"] for a in admin.listAccounts(domainid=dom, fetch_list=True)) == sorted(crowd["names"])


@pytest.mark.parametrize(
    ("params", "fragment"),
    [
        ({"pagesize": 10_001}, "pagesize"),
        ({"pagesize": 0}, "pagesize"),
        ({"page": 0, "pagesize": 5}, "page"),
    ],
)
def test_bad_paging_is_431(admin: CloudStack, params: dict[str, int], fragment: str) -> None:
    with pytest.raises(CloudStackApiException) as err:
        admin.listAccounts(**params)
    assert err.value.error["errorcode"] == 431 and fragment in err.value.error["errortext"]


def test_page_without_pagesize_uses_default_page_size(
    server: ServerProcess, admin_keys: Keys, admin: CloudStack, crowd: dict[str, Any]
) -> None:
    """As CloudStack: page alone takes its size from default.page.size."""
    admin.updateConfiguration(name="default.page.size", value="5")
    try:
        # cs always adds pagesize to page, so this one is signed by hand.
        params = {"command": "listAccounts", "apiKey": admin_keys.apikey, "response": "json", "page": "2",
                  "domainid": crowd["domain"]["id"]}  # fmt: skip
        resp = httpx.get(f"{server.endpoint}?{signed_query(params, admin_keys.secretkey)}", timeout=30)
        assert resp.status_code == 200, resp.text
        body = resp.json()["listaccountsresponse"]
        assert body["count"] == 23 and len(body["account"]) == 5
    finally:
        admin.updateConfiguration(name="default.page.size", value="")


def test_keyword(admin: CloudStack, crowd: dict[str, Any]) -> None:
    res = admin.listAccounts(domainid=crowd["domain"]["id"], keyword="NEEDLE")
    assert res["count"] == 1 and res["account"][0]["name"] == "crowd-needle"
    assert admin.listAccounts(domainid=crowd["domain"]["id"], keyword="no-such-thing") == {}


def test_list_apis_describes_commands_and_parameters(
    server: ServerProcess, admin: CloudStack, make_user: Callable[..., Keys]
) -> None:
    apis = {a["name"]: a for a in admin.listApis()["api"]}
    for name in ("login", "createZone", "listZones", "deleteAccount", "queryAsyncJobResult", "listApis"):
        assert name in apis, name
    create_zone = apis["createZone"]
    params = {p["name"]: p for p in create_zone["params"]}
    assert params["name"]["required"] is True and params["name"]["type"] == "string"
    assert params["domainid"]["type"] == "uuid" and params["domainid"]["required"] is False
    assert create_zone["isasync"] is False and apis["deleteAccount"]["isasync"] is True
    list_params = {p["name"] for p in apis["listAccounts"]["params"]}
    assert {"page", "pagesize", "keyword", "listall", "domainid", "isrecursive"} <= list_params
    one = admin.listApis(name="listZones")
    assert one["count"] == 1 and one["api"][0]["name"] == "listZones"
    # A user is shown only what it may call.
    user_apis = {a["name"] for a in server.cs(make_user()).listApis()["api"]}
    assert "listZones" in user_apis and "createZone" not in user_apis and "listStoragePools" not in user_apis


def test_state_changing_calls_leave_audit_events(
    admin: CloudStack, admin_keys: Keys, unique: Callable[[str], str]
) -> None:
    name = unique("audited")
    zone = admin.createZone(name=name)["zone"]
    events = admin.listEvents(type="ZONE.CREATE", resourceid=zone["id"])["event"]
    assert len(events) == 1
    ev = events[0]
    assert ev["account"] == "admin" and ev["username"] == "admin" and ev["level"] == "INFO"
    assert ev["state"] == "Completed" and name in ev["description"]
    # A failure is an ERROR event with the reason.
    with pytest.raises(CloudStackApiException):
        admin.createZone(name=name)
    errors = admin.listEvents(type="ZONE.CREATE", level="ERROR", keyword=name)["event"]
    assert any("already exists" in e["description"] for e in errors)
    # Reads leave nothing.
    before = admin.listEvents(pagesize=-1)["count"]
    admin.listZones()
    admin.listAccounts()
    assert admin.listEvents(pagesize=-1)["count"] == before
    # An async call: Scheduled when submitted, then the job's completion.
    acct = admin.createAccount(username=unique("short"), password="pw", accounttype=0)["account"]
    admin.deleteAccount(id=acct["id"], fetch_result=True)
    states = sorted(e["state"] for e in admin.listEvents(type="ACCOUNT.DELETE", resourceid=acct["id"])["event"])
    assert states == ["Completed", "Scheduled"]


def test_tags_on_a_zone(admin: CloudStack, unique: Callable[[str], str]) -> None:
    zone = admin.createZone(name=unique("tagged"))["zone"]
    admin.createTags(
        resourcetype="Zone",
        resourceids=zone["id"],
        tags=[{"key": "env", "value": "prod"}, {"key": "owner", "value": "ops team"}],
    )
    tags = admin.listTags(resourceid=zone["id"])["tag"]
    assert {(t["key"], t["value"]) for t in tags} == {("env", "prod"), ("owner", "ops team")}
    assert all(t["resourcetype"] == "Zone" for t in tags)
    shown = admin.listZones(id=zone["id"])["zone"][0]["tags"]
    assert {t["key"] for t in shown} == {"env", "owner"}
    assert admin.listTags(resourcetype="Zone", key="env", value="prod", resourceid=zone["id"])["count"] == 1
    with pytest.raises(CloudStackApiException) as err:
        admin.createTags(resourcetype="Zone", resourceids=zone["id"], tags={"key": "env", "value": "dev"})
    assert err.value.error["errorcode"] == 431 and "already exists" in err.value.error["errortext"]
    admin.deleteTags(resourcetype="Zone", resourceids=zone["id"], tags={"key": "env"})
    assert [t["key"] for t in admin.listTags(resourceid=zone["id"])["tag"]] == ["owner"]
    admin.deleteTags(resourcetype="Zone", resourceids=zone["id"])
    assert admin.listTags(resourceid=zone["id"]) == {}
    with pytest.raises(CloudStackApiException) as err:
        admin.createTags(resourcetype="Spaceship", resourceids=zone["id"], tags={"key": "a", "value": "b"})
    assert err.value.error["errorcode"] == 431 and "not a taggable" in err.value.error["errortext"]


def test_users_cannot_tag_infrastructure(
    server: ServerProcess, admin: CloudStack, make_user: Callable[..., Keys], unique: Callable[[str], str]
) -> None:
    zone = admin.createZone(name=unique("notyours"))["zone"]
    with pytest.raises(CloudStackApiException) as err:
        server.cs(make_user()).createTags(resourcetype="Zone", resourceids=zone["id"], tags={"key": "a", "value": "b"})
    assert err.value.error["errorcode"] in (431, 531)
    assert admin.listTags(resourceid=zone["id"]) == {}


@pytest.mark.parametrize(
    ("name", "bad", "good"),
    [
        ("ping.interval", "often", "7"),
        ("storage.overprovisioning.factor", "lots", "2.5"),
        ("api.signature.version3.only", "maybe", "false"),
        ("ping.interval", "0", "9"),
    ],
)
def test_update_configuration_validates_types(admin: CloudStack, name: str, bad: str, good: str) -> None:
    default = admin.listConfigurations(name=name)["configuration"][0]
    with pytest.raises(CloudStackApiException) as err:
        admin.updateConfiguration(name=name, value=bad)
    assert err.value.error["errorcode"] == 431 and name in err.value.error["errortext"]
    assert admin.listConfigurations(name=name)["configuration"][0]["value"] == default["value"]
    try:
        updated = admin.updateConfiguration(name=name, value=good)["configuration"]
        assert updated["value"] == good and updated["name"] == name
        assert admin.listConfigurations(name=name)["configuration"][0]["value"] == good
    finally:
        reset = admin.updateConfiguration(name=name, value="")["configuration"]
    assert reset["value"] == default["defaultvalue"]


def test_unknown_configuration_is_431(admin: CloudStack) -> None:
    with pytest.raises(CloudStackApiException) as err:
        admin.updateConfiguration(name="no.such.setting", value="1")
    assert err.value.error["errorcode"] == 431 and "does not exist" in err.value.error["errortext"]


def test_hypervisor_capabilities(admin: CloudStack) -> None:
    rows = {r["hypervisor"]: r for r in admin.listHypervisorCapabilities()["hypervisorCapabilities"]}
    assert {"KVM", "Simulator"} <= set(rows)
    for row in rows.values():
        for field in (
            "id",
            "storagemotionenabled",
            "vmsnapshotenabled",
            "maxdatavolumeslimit",
            "maxguestslimit",
        ):
            assert field in row, field
        # This cloud has no host: nothing reported live storage motion or VM snapshots, so neither is claimed.
        assert row["storagemotionenabled"] is False and row["vmsnapshotenabled"] is False
    kvm = rows["KVM"]
    try:
        updated = admin.updateHypervisorCapabilities(id=kvm["id"], maxguestslimit=77, vmsnapshotenabled=True)
        assert updated["hypervisorCapabilities"]["maxguestslimit"] == 77
        again = admin.listHypervisorCapabilities(hypervisor="KVM")["hypervisorCapabilities"][0]
        # Allowing snapshots does not make hosts able to take them.
        assert again["maxguestslimit"] == 77 and again["vmsnapshotenabled"] is False
    finally:
        admin.updateHypervisorCapabilities(id=kvm["id"], maxguestslimit=kvm["maxguestslimit"])
