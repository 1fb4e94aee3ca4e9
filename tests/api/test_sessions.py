"""Session login (POST), the session key as a parameter (matching the cookie if any), logout, session expiry, and API
keys made and read through registerUserKeys / getUserKeys."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import closing
from datetime import UTC, datetime, timedelta

import httpx
import pytest
from cs import CloudStack, CloudStackApiException

from helpers.serverproc import ADMIN_PASSWORD, Keys, ServerProcess, login


def _call(client: httpx.Client, server: ServerProcess, command: str, **params: str) -> httpx.Response:
    return client.post(server.endpoint, data={"command": command, "response": "json", **params})


def test_login_returns_session_and_sets_cookies(server: ServerProcess) -> None:
    client, info = login(server.endpoint, "admin", ADMIN_PASSWORD, "/")
    with closing(client):
        for field in ("sessionkey", "userid", "username", "account", "domainid", "type", "timeout"):
            assert field in info, field
        assert info["username"] == "admin" and info["account"] == "admin" and info["type"] == 1
        assert client.cookies.get("sessionkey") == info["sessionkey"]
        assert client.cookies.get("JSESSIONID")


def test_session_key_as_parameter_and_as_cookie(server: ServerProcess) -> None:
    client, info = login(server.endpoint, "admin", ADMIN_PASSWORD)
    key = info["sessionkey"]
    with closing(client):
        # Parameter only (a fresh client carries no cookie): refused, the key alone is not the session.
        resp = httpx.post(server.endpoint, data={"command": "listZones", "response": "json", "sessionkey": key})
        assert resp.status_code == 401 and "JSESSIONID" in resp.text
        # The key as a header, with the cookie: accepted.
        resp = client.post(
            server.endpoint, data={"command": "listZones", "response": "json"}, headers={"sessionkey": key}
        )
        assert resp.status_code == 200 and "listzonesresponse" in resp.json()
        # The session cookie is a second secret, not the key again.
        assert client.cookies.get("JSESSIONID") != key
        # Cookie and matching parameter, as CloudStack's UI sends them.
        resp = _call(client, server, "listAccounts", sessionkey=key)
        assert resp.status_code == 200
        assert any(a["name"] == "admin" for a in resp.json()["listaccountsresponse"]["account"])
        # Cookie only: refused, so that another site cannot use the browser's cookie (CSRF).
        resp = _call(client, server, "listAccounts")
        assert resp.status_code == 401 and "sessionkey parameter" in resp.text
        # A parameter that does not match the cookie: refused.
        resp = _call(client, server, "listAccounts", sessionkey="not-" + key)
        assert resp.status_code == 401
        # Neither: refused.
        resp = httpx.post(server.endpoint, data={"command": "listZones", "response": "json"})
        assert resp.status_code == 401


def test_logout_ends_the_session(server: ServerProcess) -> None:
    client, info = login(server.endpoint, "admin", ADMIN_PASSWORD)
    key = info["sessionkey"]
    with closing(client):
        assert _call(client, server, "listZones", sessionkey=key).status_code == 200
        jsession = client.cookies.get("JSESSIONID")
        resp = _call(client, server, "logout", sessionkey=key)
        assert resp.status_code == 200 and resp.json()["logoutresponse"]["description"] == "success"
        assert "sessionkey" not in client.cookies
        client.cookies.set("JSESSIONID", jsession or "", path="/client")
        resp = _call(client, server, "listZones", sessionkey=key)
        assert resp.status_code == 401
        assert resp.json()["listzonesresponse"]["errorcode"] == 401


@pytest.mark.parametrize(
    ("username", "password", "domain"),
    [("admin", "wrong", "/"), ("nobody", ADMIN_PASSWORD, "/"), ("admin", ADMIN_PASSWORD, "/NoSuchDomain")],
)
def test_bad_login_is_401(server: ServerProcess, username: str, password: str, domain: str) -> None:
    resp = httpx.post(
        server.endpoint,
        data={
            "command": "login",
            "username": username,
            "password": password,
            "domain": domain,
            "response": "json",
        },
    )
    assert resp.status_code == 401
    body = resp.json()["loginresponse"]
    assert body["errorcode"] == 401 and "Failed to authenticate" in body["errortext"]
    assert "sessionkey" not in resp.cookies


def test_login_in_a_subdomain(server: ServerProcess, admin: CloudStack, unique: Callable[[str], str]) -> None:
    dom = admin.createDomain(name=unique("dept"))["domain"]
    name = unique("carol")
    admin.createAccount(username=name, password="carol-pw", accounttype=0, domainid=dom["id"])
    # By path (with or without ROOT) and by id.
    for domain in (f"/{dom['name']}", f"/ROOT/{dom['name']}"):
        client, info = login(server.endpoint, name, "carol-pw", domain)
        client.close()
        assert info["domainid"] == dom["id"] and info["type"] == 0
    resp = httpx.post(
        server.endpoint,
        data={
            "command": "login",
            "username": name,
            "password": "carol-pw",
            "domainid": dom["id"],
            "response": "json",
        },
    )
    assert resp.status_code == 200
    # The same user name in ROOT is another (missing) user.
    resp = httpx.post(
        server.endpoint,
        data={
            "command": "login",
            "username": name,
            "password": "carol-pw",
            "domain": "/",
            "response": "json",
        },
    )
    assert resp.status_code == 401


def test_register_and_get_user_keys(server: ServerProcess, admin: CloudStack, unique: Callable[[str], str]) -> None:
    name = unique("dave")
    acct = admin.createAccount(username=name, password="dave-pw", accounttype=0)["account"]
    userid = acct["user"][0]["id"]
    client, info = login(server.endpoint, name, "dave-pw")
    with closing(client):
        key = info["sessionkey"]
        first = _call(client, server, "registerUserKeys", id=userid, sessionkey=key).json()
        keys = first["registeruserkeysresponse"]["userkeys"]
        assert keys["apikey"] and keys["secretkey"]
        got = _call(client, server, "getUserKeys", id=userid, sessionkey=key).json()
        assert got["getuserkeysresponse"]["userkeys"] == keys
        # The keys sign requests.
        dave = CloudStack(server.endpoint, keys["apikey"], keys["secretkey"], timeout=30)
        assert dave.listAccounts()["account"][0]["id"] == acct["id"]
        # Registering again replaces them: the old pair stops working.
        second = _call(client, server, "registerUserKeys", id=userid, sessionkey=key).json()
        new = second["registeruserkeysresponse"]["userkeys"]
        assert new["apikey"] != keys["apikey"] and new["secretkey"] != keys["secretkey"]
    with pytest.raises(CloudStackApiException) as err:
        dave.listAccounts()
    assert err.value.error["errorcode"] == 401
    # The admin may read them too (it may act on every account).
    assert admin.getUserKeys(id=userid)["userkeys"] == new


def test_keys_of_a_deleted_account_stop_working(
    server: ServerProcess, admin: CloudStack, make_user: Callable[..., Keys]
) -> None:
    keys = make_user("gone")
    user = server.cs(keys)
    assert isinstance(user.listZones(), dict)
    result = admin.deleteAccount(id=keys.accountid, fetch_result=True)
    assert result == {"success": True}
    with pytest.raises(CloudStackApiException) as err:
        user.listZones()
    assert err.value.error["errorcode"] == 401


def test_session_expires_after_the_configured_timeout(server: ServerProcess, admin: CloudStack) -> None:
    timeout = int(admin.listConfigurations(name="session.timeout")["configuration"][0]["value"])
    client, info = login(server.endpoint, "admin", ADMIN_PASSWORD)
    with closing(client):
        assert _call(client, server, "listZones", sessionkey=info["sessionkey"]).status_code == 200
        # Age the session past the timeout instead of waiting for it.
        stale = datetime.now(UTC).replace(tzinfo=None) - timedelta(seconds=timeout + 5)
        server.sql("UPDATE login_sessions SET last_used = ? WHERE key = ?", stale, info["sessionkey"])
        resp = _call(client, server, "listZones", sessionkey=info["sessionkey"])
        assert resp.status_code == 401
        assert "expired" in resp.json()["listzonesresponse"]["errortext"]
        # And it is gone for good.
        assert _call(client, server, "listZones", sessionkey=info["sessionkey"]).status_code == 401
    # Signed requests do not depend on sessions.
    assert isinstance(admin.listZones(), dict)
