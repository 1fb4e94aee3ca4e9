"""Permissions and limits: a user sees and acts on its own VMs and volumes only, may not choose a pool or a
host (531, as CloudStack answers permission errors), and is held to its account's limits (532)."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any

import pytest
from computelib import Env, api_error, states_settled

from helpers.serverproc import Keys

pytestmark = pytest.mark.qemu


def _tag() -> str:
    return uuid.uuid4().hex[:6]


def _deploy(env: Env, api: Any, **params: Any) -> dict[str, Any]:
    params.setdefault("zoneid", env.zoneid)
    params.setdefault("serviceofferingid", env.offering["id"])
    params.setdefault("templateid", env.template["id"])
    params.setdefault("startvm", False)
    return dict(api.deployVirtualMachine(name=f"u-{_tag()}", **params)["virtualmachine"])


def test_users_keep_to_their_own_resources(env: Env, make_user: Callable[..., Keys]) -> None:
    alice_keys, bob_keys = make_user("alice"), make_user("bob")
    alice, bob = env.client_for(alice_keys), env.client_for(bob_keys)
    vm = _deploy(env, alice, datadisksdetails=[{"diskofferingid": env.disk_offering["id"]}])
    try:
        assert vm["state"] == "Stopped" and "hostid" not in vm and "instancename" not in vm  # hosts are for admins
        vols = alice.listVolumes(virtualmachineid=vm["id"])["volume"]
        assert len(vols) == 2
        # Bob sees none of it, even with listall or by id, and cannot act on it.
        assert bob.listVirtualMachines(listall=True).get("virtualmachine", []) == []
        assert bob.listVirtualMachines(id=vm["id"]).get("virtualmachine", []) == []
        assert bob.listVolumes(listall=True).get("volume", []) == []
        code, msg = api_error(lambda: bob.startVirtualMachine(id=vm["id"]))
        assert code == 431 and vm["id"] in msg, msg
        code, msg = api_error(lambda: bob.detachVolume(id=vols[1]["id"]))
        assert code == 431, msg
        # Nor deploy into Alice's account: answered as for an account that does not exist (tells Bob nothing).
        alice_account = env.api.listAccounts(id=alice_keys.accountid)["account"][0]
        code, msg = api_error(lambda: _deploy(env, bob, account=alice_account["name"], domainid=alice_keys.domainid))
        unknown, unknown_msg = api_error(
            lambda: _deploy(env, bob, account="no-such-account", domainid=alice_keys.domainid)
        )
        assert code == unknown == 431 and "Unable to find account" in msg, msg
        assert unknown_msg == msg.replace(alice_account["name"], "no-such-account"), (msg, unknown_msg)

        # Choosing a pool or a host is for admins: 531, naming the parameter.
        pool = env.pools["shared1"]["id"]
        host = env.hosts["host1"]["id"]
        for params, name in (
            ({"rootdiskstorageid": pool}, "rootdiskstorageid"),
            ({"datadisksdetails": [{"diskofferingid": env.disk_offering["id"], "storageid": pool}]}, "storageid"),
            ({"hostid": host}, "hostid"),
        ):
            code, msg = api_error(lambda params=params: _deploy(env, alice, **params))  # type: ignore[misc]
            assert code == 531 and name in msg, msg
        code, msg = api_error(
            lambda: alice.createVolume(zoneid=env.zoneid, diskofferingid=env.disk_offering["id"], storageid=pool)
        )
        assert code == 531 and "storageid" in msg, msg
        code, msg = api_error(lambda: alice.startVirtualMachine(id=vm["id"], hostid=host))
        assert code == 531 and "hostid" in msg, msg
        code, msg = api_error(lambda: alice.listVirtualMachines(hostid=host))
        assert code == 531, msg
        # importVm is an admin command: 432 to a user, as CloudStack answers unknown/unpermitted commands.
        code, msg = api_error(
            lambda: alice.importVm(name="x", hostid=host, diskpath="/etc/passwd", serviceofferingid=env.offering["id"])
        )
        assert code == 432, msg
        assert alice.listVirtualMachines(id=vm["id"])["virtualmachine"][0]["state"] == "Stopped"
    finally:
        alice.destroyVirtualMachine(id=vm["id"], expunge=True)
        for vol in alice.listVolumes().get("volume", []):
            alice.deleteVolume(id=vol["id"])


def test_deploy_over_the_account_limit(env: Env, make_user: Callable[..., Keys]) -> None:
    keys = make_user("limited")
    user = env.client_for(keys)
    account = env.api.listAccounts(id=keys.accountid)["account"][0]
    env.api.updateResourceLimit(resourcetype=0, max=1, account=account["name"], domainid=keys.domainid)
    first = _deploy(env, user)
    try:
        code, msg = api_error(lambda: _deploy(env, user))
        assert code == 532, msg
        assert "user_vm" in msg and account["name"] in msg and "limit 1" in msg, msg
        assert len(user.listVirtualMachines().get("virtualmachine", [])) == 1
    finally:
        user.destroyVirtualMachine(id=first["id"], expunge=True)
    # Once the VM is gone there is room again; a destroyed VM does not count, until it is recovered.
    second = _deploy(env, user)
    user.destroyVirtualMachine(id=second["id"])
    third = _deploy(env, user)
    code, msg = api_error(lambda: user.recoverVirtualMachine(id=second["id"]))
    assert code == 532 and "user_vm" in msg, msg
    assert env.vm(second["id"])["state"] == "Destroyed"
    user.expungeVirtualMachine(id=second["id"])
    user.destroyVirtualMachine(id=third["id"], expunge=True)
    assert list(states_settled(env)) == []
