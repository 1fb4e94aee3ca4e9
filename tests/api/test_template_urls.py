"""Template URLs: a user may not make a host read one of its files (file://); bad schemes are refused.
Checked before anything is created, so nothing is left behind."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from cs import CloudStack, CloudStackApiException

from helpers.serverproc import Keys, ServerProcess


def _register(client: CloudStack, zone_id: str, url: str) -> dict[str, object]:
    with pytest.raises(CloudStackApiException) as err:
        client.registerTemplate(name="t", displaytext="t", url=url, format="QCOW2", hypervisor="KVM", zoneid=zone_id)
    return err.value.error


def test_user_cannot_register_from_a_host_file(
    server: ServerProcess, admin: CloudStack, make_user: Callable[..., Keys], unique: Callable[[str], str]
) -> None:
    zone = admin.createZone(name=unique("tmplurl"))["zone"]
    user = server.cs(make_user())
    error = _register(user, zone["id"], "file:///etc/shadow")
    assert error["errorcode"] == 531
    assert "file://" in str(error["errortext"]) and "url" in str(error["errortext"])
    assert user.listTemplates(templatefilter="self") == {}


def test_unsupported_scheme_is_refused(server: ServerProcess, admin: CloudStack, unique: Callable[[str], str]) -> None:
    zone = admin.createZone(name=unique("tmplscheme"))["zone"]
    error = _register(admin, zone["id"], "ftp://example.org/disk.qcow2")
    assert error["errorcode"] == 431 and "http://" in str(error["errortext"])
    assert admin.listTemplates(templatefilter="self") == {}
