"""What a domain admin may not do: act on a root admin or a peer domain admin (keys, users, renames),
or change public offerings. Each refusal is CloudStack's 531 (or 431 for what it may not even see)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from cs import CloudStack, CloudStackApiException

from helpers.serverproc import Keys, ServerProcess


def _refused(call: Callable[[], Any]) -> int:
    with pytest.raises(CloudStackApiException) as err:
        call()
    return int(err.value.error["errorcode"])


def test_domain_admin_in_root_cannot_take_over_the_root_admin(
    server: ServerProcess, admin: CloudStack, make_user: Callable[..., Keys], unique: Callable[[str], str]
) -> None:
    dadmin = server.cs(make_user("dadmin", accounttype=2))
    root = admin.listAccounts(name="admin")["account"][0]
    root_user = root["user"][0]["id"]
    assert _refused(lambda: dadmin.registerUserKeys(id=root_user)) in (431, 531)
    assert _refused(lambda: dadmin.getUserKeys(id=root_user)) in (431, 531)
    assert _refused(lambda: dadmin.createUser(account="admin", username=unique("sneaky"), password="pw",
                                              firstname="a", lastname="b", email="x@y.z")) in (431, 531)  # fmt: skip
    assert _refused(lambda: dadmin.updateAccount(id=root["id"], newname="not-admin")) in (431, 531)
    # A peer domain admin of the same domain is off limits too; plain users of the domain are not.
    peer = admin.listAccounts(id=make_user("peer", accounttype=2).accountid)["account"][0]
    assert _refused(lambda: dadmin.registerUserKeys(id=peer["user"][0]["id"])) in (431, 531)
    user = admin.listAccounts(id=make_user("plain").accountid)["account"][0]
    assert dadmin.registerUserKeys(id=user["user"][0]["id"])["userkeys"]["apikey"]
    # The root admin is untouched.
    assert admin.listAccounts(id=root["id"])["account"][0]["name"] == "admin"


def test_domain_admin_cannot_change_public_offerings(
    server: ServerProcess, admin: CloudStack, make_user: Callable[..., Keys], unique: Callable[[str], str]
) -> None:
    dadmin = server.cs(make_user("dadmin", accounttype=2))
    public = admin.createServiceOffering(name=unique("pub"), displaytext="p", cpunumber=1, cpuspeed=500,
                                         memory=128)["serviceoffering"]  # fmt: skip
    disk = admin.createDiskOffering(name=unique("pubdisk"), displaytext="d", disksize=1)["diskoffering"]
    assert _refused(lambda: dadmin.updateServiceOffering(id=public["id"], name="mine")) == 531
    assert _refused(lambda: dadmin.deleteServiceOffering(id=public["id"])) == 531
    assert _refused(lambda: dadmin.deleteDiskOffering(id=disk["id"])) == 531
    assert admin.listServiceOfferings(id=public["id"])["serviceoffering"][0]["name"] == public["name"]
