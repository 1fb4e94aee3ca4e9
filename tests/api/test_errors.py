"""Refused requests: each gets CloudStack's error code, a text that says what is wrong, and the server
keeps serving (a good call works right after)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx
import pytest
from cs import CloudStack, CloudStackApiException

from helpers.serverproc import Keys, ServerProcess

NO_SUCH_ID = "6f0b5c1e-3d2a-4b8e-9c7f-1a2b3c4d5e6f"


def _error(client: CloudStack, command: str, **params: Any) -> tuple[int, dict[str, Any]]:
    """Calls a command that must fail; returns the HTTP status and the error object."""
    with pytest.raises(CloudStackApiException) as err:
        getattr(client, command)(**params)
    return err.value.response.status_code, err.value.error


def _still_serving(admin: CloudStack) -> None:
    assert isinstance(admin.listZones(), dict)


def test_missing_required_parameter_is_431(server: ServerProcess, admin: CloudStack) -> None:
    status, error = _error(admin, "createZone", networktype="Advanced")
    assert status == 431 and error["errorcode"] == 431 and error["cserrorcode"] == 4350
    assert "missing parameter name" in error["errortext"]
    assert error["uuidList"] == []
    _still_serving(admin)


@pytest.mark.parametrize(
    ("command", "params", "fragment"),
    [
        ("listZones", {"id": "not-a-uuid"}, "Invalid parameter id value=not-a-uuid"),
        ("listAccounts", {"page": "one", "pagesize": "10"}, "Invalid parameter page value=one"),
        ("updateZone", {"id": NO_SUCH_ID, "localstorageenabled": "yes"}, "localstorageenabled"),
        ("createServiceOffering", {"name": "x", "cpunumber": "99999999999", "memory": "512"}, "out of range"),
        ("createServiceOffering", {"name": "x", "cpunumber": "0", "memory": "512"}, "smaller than 1"),
        ("createZone", {"name": "x", "networktype": "Galactic"}, "not being one of: Basic, Advanced"),
    ],
)
def test_wrong_type_is_431(
    server: ServerProcess, admin: CloudStack, command: str, params: dict[str, str], fragment: str
) -> None:
    status, error = _error(admin, command, **params)
    assert (status, error["errorcode"]) == (431, 431)
    assert fragment in error["errortext"]
    _still_serving(admin)


def test_unknown_command_is_432_errorresponse(server: ServerProcess, admin_keys: Keys, admin: CloudStack) -> None:
    status, error = _error(admin, "frobnicateEverything")
    assert status == 432 and error["errorcode"] == 432
    assert "does not exist" in error["errortext"]
    # The envelope key is errorresponse (checked on the raw body, cs unwraps it).
    resp = httpx.get(server.endpoint, params={"command": "nope", "response": "json"}, timeout=30)
    assert resp.status_code == 401  # unauthenticated callers learn nothing about commands
    _still_serving(admin)


def test_user_calling_admin_command_is_432(server: ServerProcess, make_user: Callable[..., Keys]) -> None:
    user = server.cs(make_user())
    for command, params in (
        ("createZone", {"name": "mine"}),
        ("listStoragePools", {}),
        ("updateConfiguration", {"name": "ping.interval", "value": "9"}),
    ):
        status, error = _error(user, command, **params)
        assert (status, error["errorcode"]) == (432, 432), command
        assert "not available for the user" in error["errortext"]
    # The same error as a command that does not exist: a user cannot probe admin commands.
    assert _error(user, "noSuchCommand")[1]["errortext"] == error["errortext"]
    assert isinstance(user.listZones(), dict)


def test_user_cannot_read_another_accounts_resources(
    server: ServerProcess, admin: CloudStack, make_user: Callable[..., Keys]
) -> None:
    alice_keys, bob_keys = make_user("alice"), make_user("bob")
    alice, bob = server.cs(alice_keys), server.cs(bob_keys)

    # Answered as for an unknown id: Alice does not learn that Bob's user exists.
    status, error = _error(alice, "getUserKeys", id=bob_keys.userid)
    assert (status, error["errorcode"]) == (431, 431)
    assert error["errortext"] == f"Unable to find user by id {bob_keys.userid}"
    assert bob_keys.secretkey not in str(error)

    status, error = _error(alice, "registerUserKeys", id=bob_keys.userid)
    assert status == 431
    # Bob's keys still work: Alice's attempt changed nothing.
    assert bob.getUserKeys(id=bob_keys.userid)["userkeys"]["secretkey"] == bob_keys.secretkey

    # Listing Bob's things: refused when named, invisible otherwise.
    bob_account = bob.listAccounts()["account"][0]["name"]
    status, error = _error(alice, "listEvents", account=bob_account)
    assert status == 531 and "own account" in error["errortext"]
    assert [a["id"] for a in alice.listAccounts(listall=True)["account"]] == [alice_keys.accountid]
    users = alice.listUsers(listall=True)["user"]
    assert {u["id"] for u in users} == {alice_keys.userid}

    # Bob's async job is not Alice's to query.
    job = admin.createAccount(username=f"victim-{bob_account}", password="pw", accounttype=0)["account"]
    jobid = admin.deleteAccount(id=job["id"])["jobid"]
    status, error = _error(alice, "queryAsyncJobResult", jobid=jobid)
    assert status == 431 and "Unable to find async job" in error["errortext"]
    assert isinstance(alice.listZones(), dict)


@pytest.mark.parametrize(
    "bad_key",
    ["tags[0]key", "tags[a].key", "tags[0].", "tags[0].key[1]", "tags]0[.key", "tags[99999].key"],
)
def test_malformed_map_parameter_is_430(
    server: ServerProcess, admin: CloudStack, bad_key: str, unique: Callable[[str], str]
) -> None:
    zone = admin.createZone(name=unique("mapzone"))["zone"]
    status, error = _error(admin, "createTags", resourcetype="Zone", resourceids=zone["id"], **{bad_key: "v"})
    assert (status, error["errorcode"]) == (430, 430)
    assert "malformed map parameter" in error["errortext"]
    assert admin.listTags(resourceid=zone["id"]) == {}
    _still_serving(admin)


def test_map_entry_without_value_is_431(server: ServerProcess, admin: CloudStack, unique: Callable[[str], str]) -> None:
    zone = admin.createZone(name=unique("mapzone"))["zone"]
    status, error = _error(admin, "createTags", resourcetype="Zone", resourceids=zone["id"], **{"tags[0].key": "k"})
    assert status == 431 and "key and a value" in error["errortext"]


def test_oversized_values_are_431(server: ServerProcess, admin: CloudStack, unique: Callable[[str], str]) -> None:
    status, error = _error(admin, "createZone", name="z" * 256)
    assert status == 431 and "more than the maximum of 255" in error["errortext"]
    assert "z" * 100 not in error["errortext"]  # the text does not echo the whole value

    zone = admin.createZone(name=unique("bigtags"))["zone"]
    status, error = _error(
        admin,
        "createTags",
        resourcetype="Zone",
        resourceids=zone["id"],
        tags={"key": "k", "value": "v" * 300},
    )
    assert status == 431 and "longer than 255" in error["errortext"]

    status, error = _error(admin, "listZones", keyword="k" * 5000)
    assert status == 431

    status, error = _error(admin, "updateHypervisorCapabilities", id=NO_SUCH_ID, maxguestslimit="9" * 40)
    assert status == 431 and "out of range" in error["errortext"]
    _still_serving(admin)


def test_oversized_body_is_refused(server: ServerProcess, admin: CloudStack) -> None:
    body = {"command": "listZones", "response": "json", "keyword": "x" * (1024 * 1024 + 10)}
    resp = httpx.post(server.endpoint, data=body, timeout=60)
    assert resp.status_code == 431
    assert "larger than" in resp.json()["errorresponse"]["errortext"]
    _still_serving(admin)


def test_unknown_id_is_431(server: ServerProcess, admin: CloudStack) -> None:
    status, error = _error(admin, "deleteZone", id=NO_SUCH_ID)
    assert status == 431 and NO_SUCH_ID in error["errortext"]
    _still_serving(admin)


def test_login_must_be_post(server: ServerProcess, admin: CloudStack) -> None:
    resp = httpx.get(
        server.endpoint,
        params={"command": "login", "username": "admin", "password": "password", "response": "json"},
        timeout=30,
    )
    assert resp.status_code == 405
    assert "POST" in resp.json()["loginresponse"]["errortext"]
    _still_serving(admin)


def test_many_bad_requests_in_a_row_do_not_hurt(server: ServerProcess, admin: CloudStack) -> None:
    with httpx.Client(timeout=30) as client:
        for i in range(50):
            resp = client.get(
                server.endpoint,
                params={"command": "listZones", "apiKey": f"k{i}", "signature": "x", "response": "json"},
            )
            assert resp.status_code == 401
    _still_serving(admin)
