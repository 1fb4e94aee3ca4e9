"""Signed requests as real clients send them: `cs` (signatureVersion 3 with expires, GET and POST),
other clients' canonical forms, and refusals (401) for anything that does not check out."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from urllib.parse import quote, quote_plus

import httpx
import pytest
from cs import CloudStack, CloudStackApiException

from helpers.serverproc import Keys, ServerProcess, signed_query


def _expires(delta: timedelta) -> str:
    return (datetime.now(UTC) + delta).strftime("%Y-%m-%dT%H:%M:%S%z")


def _get(server: ServerProcess, query: str) -> httpx.Response:
    return httpx.get(f"{server.endpoint}?{query}", timeout=30)


def _assert_still_serving(admin: CloudStack) -> None:
    assert "count" in admin.listHypervisorCapabilities()


def test_cs_signs_v3_with_expires_by_default(server: ServerProcess, admin: CloudStack) -> None:
    _kind, params = admin._prepare_request("listZones")
    assert params["signatureVersion"] == "3" and "expires" in params
    zones = admin.listZones()
    assert isinstance(zones, dict)


@pytest.mark.parametrize("method", ["get", "post"])
def test_cs_get_and_post_with_awkward_values(
    server: ServerProcess, admin_keys: Keys, method: str, unique: Callable[[str], str]
) -> None:
    client = server.cs(admin_keys, method=method)
    name = unique(f"zone {method} * é+&=/?")
    zone = client.createZone(name=name, networktype="Advanced", dns1="8.8.8.8", internaldns1="8.8.4.4")["zone"]
    assert zone["name"] == name
    listed = client.listZones(id=zone["id"])
    assert [z["name"] for z in listed["zone"]] == [name]
    client.deleteZone(id=zone["id"])


def test_cs_without_signature_version_is_accepted(server: ServerProcess, admin_keys: Keys) -> None:
    client = server.cs(admin_keys, expiration=-1)  # cs then sends neither signatureVersion nor expires
    _, params = client._prepare_request("listZones")
    assert "expires" not in params
    assert isinstance(client.listZones(), dict)


def test_version3_only_setting_refuses_requests_without_expires(
    server: ServerProcess, admin_keys: Keys, admin: CloudStack
) -> None:
    legacy = server.cs(admin_keys, expiration=-1)  # neither signatureVersion nor expires
    admin.updateConfiguration(name="api.signature.version3.only", value="true")
    try:
        with pytest.raises(CloudStackApiException) as err:
            legacy.listZones()
        assert err.value.error["errorcode"] == 401
        assert "signatureVersion=3" in err.value.error["errortext"]
        assert isinstance(admin.listZones(), dict)  # cs's default, v3 with expires, still works
    finally:
        admin.updateConfiguration(name="api.signature.version3.only", value="false")
    assert isinstance(legacy.listZones(), dict)


@pytest.mark.parametrize(
    ("label", "encode", "lower_sort"),
    [
        ("marvin", quote_plus, True),
        ("libcloud", lambda v: quote(v, safe="[]*").replace("+", "%20"), True),
        ("cloudmonkey", quote_plus, False),
        ("java", lambda v: quote(v, safe="*").replace("~", "%7E"), False),
    ],
)
def test_other_clients_canonical_forms(
    server: ServerProcess, admin_keys: Keys, label: str, encode: Callable[[str], str], lower_sort: bool
) -> None:
    params = {
        "command": "listZones",
        "apiKey": admin_keys.apikey,
        "response": "json",
        "keyword": "a b*c~d",
        "signatureVersion": "3",
        "expires": _expires(timedelta(minutes=5)),
    }
    resp = _get(server, signed_query(params, admin_keys.secretkey, encode=encode, lower_sort=lower_sort))
    assert resp.status_code == 200, (label, resp.text)
    assert resp.headers["content-type"].startswith("application/json")
    assert "listzonesresponse" in resp.json()


def test_wrong_secret_is_401(server: ServerProcess, admin_keys: Keys, admin: CloudStack) -> None:
    bad = CloudStack(server.endpoint, admin_keys.apikey, admin_keys.secretkey[:-2] + "xx", timeout=30)
    with pytest.raises(CloudStackApiException) as err:
        bad.listZones()
    assert err.value.response.status_code == 401
    assert err.value.error["errorcode"] == 401
    assert "unable to verify user credentials" in err.value.error["errortext"]
    _assert_still_serving(admin)


def test_unknown_api_key_is_401(server: ServerProcess, admin: CloudStack) -> None:
    bad = CloudStack(server.endpoint, "no-such-key", "no-such-secret", timeout=30)
    with pytest.raises(CloudStackApiException) as err:
        bad.listZones()
    assert err.value.error["errorcode"] == 401
    _assert_still_serving(admin)


def test_tampered_parameter_is_401(server: ServerProcess, admin_keys: Keys, admin: CloudStack) -> None:
    params = {
        "command": "listZones",
        "apiKey": admin_keys.apikey,
        "response": "json",
        "name": "good",
        "signatureVersion": "3",
        "expires": _expires(timedelta(minutes=5)),
    }
    query = signed_query(params, admin_keys.secretkey)
    assert _get(server, query).status_code == 200
    tampered = query.replace("name=good", "name=evil")
    assert tampered != query
    resp = _get(server, tampered)
    assert resp.status_code == 401
    body = resp.json()["listzonesresponse"]
    assert body["errorcode"] == 401 and "signature" in body["errortext"]
    # An added parameter also breaks the signature.
    assert _get(server, query + "&id=6f0b5c1e-3d2a-4b8e-9c7f-1a2b3c4d5e6f").status_code == 401
    _assert_still_serving(admin)


def test_expired_request_is_401(server: ServerProcess, admin_keys: Keys, admin: CloudStack) -> None:
    client = server.cs(admin_keys)
    with pytest.raises(CloudStackApiException) as err:
        client.listZones(signatureVersion="3", expires=_expires(timedelta(minutes=-1)))
    assert err.value.response.status_code == 401
    assert "expired" in err.value.error["errortext"]
    # The same request with a future expiry is fine.
    assert isinstance(client.listZones(signatureVersion="3", expires=_expires(timedelta(minutes=1))), dict)
    _assert_still_serving(admin)


def test_v3_without_expires_and_bad_version_are_401(server: ServerProcess, admin_keys: Keys) -> None:
    base = {"command": "listZones", "apiKey": admin_keys.apikey, "response": "json"}
    resp = _get(server, signed_query({**base, "signatureVersion": "3"}, admin_keys.secretkey))
    assert resp.status_code == 401 and "expires" in resp.json()["listzonesresponse"]["errortext"]
    resp = _get(
        server,
        signed_query(
            {**base, "signatureVersion": "7", "expires": _expires(timedelta(minutes=1))}, admin_keys.secretkey
        ),
    )
    assert resp.status_code == 401 and "signatureVersion" in resp.json()["listzonesresponse"]["errortext"]
    resp = _get(server, signed_query({**base, "signatureVersion": "3", "expires": "tomorrow"}, admin_keys.secretkey))
    assert resp.status_code == 401 and "expires" in resp.json()["listzonesresponse"]["errortext"]


def test_unsigned_and_anonymous_requests_are_401(server: ServerProcess, admin_keys: Keys, admin: CloudStack) -> None:
    resp = httpx.get(server.endpoint, params={"command": "listZones", "response": "json"}, timeout=30)
    assert resp.status_code == 401
    resp = httpx.get(
        server.endpoint,
        params={"command": "listZones", "response": "json", "apiKey": admin_keys.apikey},
        timeout=30,
    )
    assert resp.status_code == 401
    assert resp.json()["listzonesresponse"]["errorcode"] == 401
    _assert_still_serving(admin)
