"""Apache Libcloud's CloudStack driver, unchanged, against the server: its own signature form (lower-cased
sort, no signatureVersion), list calls, create calls, an async job followed to its end, and errors."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any

import pytest
from cs import CloudStack
from libcloud.common.types import InvalidCredsError, ProviderError
from libcloud.compute.providers import Provider, get_driver

from helpers.serverproc import Keys, ServerProcess


def _driver(server: ServerProcess, keys: Keys) -> Any:
    cls = get_driver(Provider.CLOUDSTACK)
    driver = cls(keys.apikey, keys.secretkey, secure=False, host="127.0.0.1", port=server.port, path="/client/api")
    driver.connection.poll_interval = 0.1  # libcloud's default is one second between queryAsyncJobResult
    return driver


@pytest.fixture(scope="module")
def driver(server: ServerProcess, admin_keys: Keys) -> Any:
    return _driver(server, admin_keys)


def test_list_locations_is_list_zones(driver: Any, admin: CloudStack, unique: Callable[[str], str]) -> None:
    zone = admin.createZone(name=unique("lc zone"))["zone"]
    locations = {loc.id: loc for loc in driver.list_locations()}
    assert zone["id"] in locations and locations[zone["id"]].name == zone["name"]


def test_sync_request_create_and_list(driver: Any, unique: Callable[[str], str]) -> None:
    name = unique("lc-created")
    created = driver.connection._sync_request(
        "createZone", params={"name": name, "networktype": "Advanced", "description": "made by libcloud [x]*"}
    )
    zone = created["zone"]
    assert zone["name"] == name and zone["description"] == "made by libcloud [x]*"
    listed = driver.connection._sync_request("listZones", params={"id": zone["id"]})
    assert listed["count"] == 1 and listed["zone"][0]["id"] == zone["id"]
    # POST works too.
    again = driver.connection._sync_request("listZones", params={"keyword": name}, method="POST")
    assert [z["id"] for z in again["zone"]] == [zone["id"]]


def test_sizes_and_disk_offerings(driver: Any, admin: CloudStack, unique: Callable[[str], str]) -> None:
    so = admin.createServiceOffering(name=unique("lc-so"), cpunumber=2, memory=1024)["serviceoffering"]
    do = admin.createDiskOffering(name=unique("lc-do"), disksize=5)["diskoffering"]
    sizes = {s.id: s for s in driver.list_sizes()}
    assert sizes[so["id"]].ram == 1024 and sizes[so["id"]].extra["cpu"] == 2
    offerings = {o.id: o for o in driver.ex_list_disk_offerings()}
    assert offerings[do["id"]].size == 5 and offerings[do["id"]].customizable is False


def test_map_parameters_through_libcloud(driver: Any, admin: CloudStack, unique: Callable[[str], str]) -> None:
    zone = admin.createZone(name=unique("lc-tags"))["zone"]
    # libcloud signs tags[0].key with '[]' unencoded.
    driver.connection._sync_request(
        "createTags",
        params={
            "resourcetype": "Zone",
            "resourceids": zone["id"],
            "tags[0].key": "team",
            "tags[0].value": "a b",
        },
    )
    tags = driver.connection._sync_request("listTags", params={"resourceid": zone["id"]})["tag"]
    assert [(t["key"], t["value"]) for t in tags] == [("team", "a b")]


def test_async_job_followed_to_its_end(driver: Any, admin: CloudStack) -> None:
    name = f"lc-acct-{uuid.uuid4().hex[:8]}"
    acct = driver.connection._sync_request(
        "createAccount",
        params={
            "username": name,
            "password": "pw",
            "accounttype": 0,
            "email": "x@example.org",
            "firstname": "L",
            "lastname": "C",
        },
    )["account"]
    result = driver.connection._async_request("deleteAccount", params={"id": acct["id"]})
    assert result == {"success": True}
    assert driver.connection._sync_request("listAccounts", params={"id": acct["id"]}) == {}


def test_failed_async_job_raises(driver: Any, admin: CloudStack, unique: Callable[[str], str]) -> None:
    dom = admin.createDomain(name=unique("lc-busy"))["domain"]
    admin.createAccount(username=unique("lc-in"), password="pw", accounttype=0, domainid=dom["id"])
    with pytest.raises(Exception, match="still has 1 account"):
        driver.connection._async_request("deleteDomain", params={"id": dom["id"]})


def test_errors(server: ServerProcess, driver: Any, admin_keys: Keys) -> None:
    with pytest.raises(ProviderError) as err:
        driver.connection._sync_request("createZone", params={"networktype": "Advanced"})
    assert err.value.http_code == 431 and "missing parameter name" in str(err.value.value)
    with pytest.raises(ProviderError) as err:
        driver.connection._sync_request("noSuchCommand")
    assert err.value.http_code == 432
    bad = _driver(server, Keys(admin_keys.apikey, "not-the-secret", admin_keys.userid))
    with pytest.raises(InvalidCredsError):
        bad.list_locations()
    # Still serving, with the same driver.
    assert driver.list_locations() is not None


def test_ex_create_tags(driver: Any, admin: CloudStack, unique: Callable[[str], str]) -> None:
    zone = admin.createZone(name=unique("lc-extags"))["zone"]
    assert driver.ex_create_tags([zone["id"]], "Zone", {"k": "v"}) is True
