"""CloudStack's user and account lifecycle: disableAccount stops the account's VMs (stop jobs) and
lockAccount leaves them running, both refuse the account's keys and sessions at once; disableUser,
lockUser, deleteUser, enableUser and updateUser; the lock-out after incorrect.login.attempts.allowed
failed logins, undone by enableUser. On a simulator host, SQLite and PostgreSQL."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import closing
from dataclasses import dataclass

import httpx
import pytest
from cs import CloudStack, CloudStackApiException

from helpers.agentproc import start_agent
from helpers.serverproc import Keys, ServerProcess, create_user_keys, login, wait_job
from helpers.simcloud import SimCloud, build_sim_cloud, deploy


@dataclass
class World:
    cloud: SimCloud


@pytest.fixture(scope="module")
def world(server: ServerProcess, admin: CloudStack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    base = tmp_path_factory.mktemp("lifecycle")
    agent = start_agent(base / "agent", token=f"lc-{uuid.uuid4().hex[:8]}")
    try:
        yield World(build_sim_cloud(admin, agent, base))
    finally:
        agent.stop()


def _user(server: ServerProcess, admin: CloudStack, prefix: str) -> tuple[Keys, str]:
    name = f"{prefix}-{uuid.uuid4().hex[:6]}"
    return create_user_keys(admin, server.endpoint, username=name), name


def _refused(call: object) -> dict[str, object]:
    with pytest.raises(CloudStackApiException) as err:
        call()  # type: ignore[operator]
    return dict(err.value.error)


def _vm_state(admin: CloudStack, vm_id: str) -> str:
    return str(admin.listVirtualMachines(id=vm_id, listall=True)["virtualmachine"][0]["state"])


def _session_ok(client: httpx.Client, server: ServerProcess, key: str) -> int:
    resp = client.post(server.endpoint, data={"command": "listZones", "response": "json", "sessionkey": key})
    return resp.status_code


def test_disable_account_stops_its_vms_and_refuses_it_at_once(
    server: ServerProcess, admin: CloudStack, world: World
) -> None:
    keys, keys_name = _user(server, admin, "dis")
    user = server.cs(keys)
    vm = deploy(user, world.cloud, f"d-{uuid.uuid4().hex[:6]}")
    client, info = login(server.endpoint, keys_name, "secret-pw")
    with closing(client):
        assert _session_ok(client, server, info["sessionkey"]) == 200
        job = wait_job(admin, admin.disableAccount(id=keys.accountid, lock=False)["jobid"], 120)
        assert job["jobstatus"] == 1, job
        assert job["jobresult"]["account"]["state"] == "disabled"
        assert _vm_state(admin, vm) == "Stopped"
        # Its keys and its session stop working at once.
        assert _refused(user.listZones)["errorcode"] == 401
        assert _session_ok(client, server, info["sessionkey"]) == 401
    assert admin.enableAccount(id=keys.accountid)["account"]["state"] == "enabled"
    assert isinstance(user.listZones(), dict)
    assert _vm_state(admin, vm) == "Stopped"  # enabling starts nothing


def test_lock_account_refuses_it_but_its_vms_run(server: ServerProcess, admin: CloudStack, world: World) -> None:
    keys, _ = _user(server, admin, "lck")
    user = server.cs(keys)
    vm = deploy(user, world.cloud, f"l-{uuid.uuid4().hex[:6]}")
    acct = admin.listAccounts(id=keys.accountid)["account"][0]
    locked = admin.lockAccount(account=acct["name"], domainid=acct["domainid"])["account"]
    assert locked["state"] == "locked"
    assert _refused(user.listZones)["errorcode"] == 401
    assert _vm_state(admin, vm) == "Running"
    # disableAccount lock=true is the same, as a job.
    job = wait_job(admin, admin.disableAccount(id=keys.accountid, lock=True)["jobid"])
    assert job["jobstatus"] == 1 and job["jobresult"]["account"]["state"] == "locked"
    admin.enableAccount(account=acct["name"], domainid=acct["domainid"])
    assert isinstance(user.listZones(), dict) and _vm_state(admin, vm) == "Running"


def test_disable_lock_enable_and_delete_a_user(server: ServerProcess, admin: CloudStack, world: World) -> None:
    first, first_name = _user(server, admin, "u1")
    acct = admin.listAccounts(id=first.accountid)["account"][0]
    second_name = f"u2-{uuid.uuid4().hex[:6]}"
    second = admin.createUser(account=acct["name"], domainid=acct["domainid"], username=second_name,
                              password="pw2", firstname="a", lastname="b", email="a@b.c")["user"]  # fmt: skip
    one = server.cs(first)
    # Disabling one of two users leaves the account enabled.
    job = wait_job(admin, admin.disableUser(id=first.userid)["jobid"])
    assert job["jobstatus"] == 1 and job["jobresult"]["user"]["state"] == "disabled"
    assert _refused(one.listZones)["errorcode"] == 401
    assert admin.listAccounts(id=first.accountid)["account"][0]["state"] == "enabled"
    client, info = login(server.endpoint, second_name, "pw2")
    client.close()
    assert admin.enableUser(id=first.userid)["user"]["state"] == "enabled"
    assert isinstance(one.listZones(), dict)
    # Locking: refused at once, a session too; enableUser again.
    client, info = login(server.endpoint, first_name, "secret-pw")
    with closing(client):
        assert admin.lockUser(id=first.userid)["user"]["state"] == "locked"
        assert _refused(one.listZones)["errorcode"] == 401
        assert _session_ok(client, server, info["sessionkey"]) == 401
    admin.enableUser(id=first.userid)
    # Deleting: gone from the lists, its keys refused.
    assert admin.deleteUser(id=first.userid) == {"success": True}
    assert _refused(one.listZones)["errorcode"] == 401
    assert first.userid not in {u["id"] for u in admin.listUsers(listall=True)["user"]}
    # Disabling the last user disables the account (as CloudStack), which stops its VMs.
    assert wait_job(admin, admin.disableUser(id=second["id"])["jobid"])["jobstatus"] == 1
    assert admin.listAccounts(id=first.accountid)["account"][0]["state"] == "disabled"


def test_nobody_disables_itself_and_users_cannot_manage_users(server: ServerProcess, admin: CloudStack) -> None:
    keys, _ = _user(server, admin, "self")
    me = admin.listUsers(username="admin")["user"][0]
    assert _refused(lambda: admin.lockUser(id=me["id"]))["errorcode"] == 431
    user = server.cs(keys)
    assert _refused(lambda: user.disableUser(id=keys.userid))["errorcode"] == 432
    assert _refused(lambda: user.lockAccount(account="admin", domainid=me["domainid"]))["errorcode"] == 432


def test_update_user_and_own_password(server: ServerProcess, admin: CloudStack) -> None:
    keys, keys_name = _user(server, admin, "upd")
    user = server.cs(keys)
    assert admin.updateUser(id=keys.userid, firstname="Ann", email="ann@example.org")["user"]["firstname"] == "Ann"
    # A user changes its own password with the current one only.
    err = _refused(lambda: user.updateUser(id=keys.userid, password="new-pw", currentpassword="wrong"))
    assert err["errorcode"] == 431 and "currentpassword" in str(err["errortext"])
    user.updateUser(id=keys.userid, password="new-pw", currentpassword="secret-pw")
    login(server.endpoint, keys_name, "new-pw")[0].close()


def test_lock_out_after_failed_logins(server: ServerProcess, admin: CloudStack) -> None:
    keys, keys_name = _user(server, admin, "guess")
    allowed = int(admin.listConfigurations(name="incorrect.login.attempts.allowed")["configuration"][0]["value"])
    assert allowed == 5
    form = {"command": "login", "username": keys_name, "domain": "/", "response": "json"}
    for _ in range(allowed):
        resp = httpx.post(server.endpoint, data={**form, "password": "wrong"})
        assert resp.status_code == 401 and "Failed to authenticate" in resp.text
    # The right password no longer logs in: the user is locked, as listUsers shows.
    resp = httpx.post(server.endpoint, data={**form, "password": "secret-pw"})
    assert resp.status_code == 401 and "locked" in resp.text
    assert admin.listUsers(id=keys.userid)["user"][0]["state"] == "locked"
    assert _refused(server.cs(keys).listZones)["errorcode"] == 401  # its keys too
    admin.enableUser(id=keys.userid)
    login(server.endpoint, keys_name, "secret-pw")[0].close()
    # A good login resets the count: allowed - 1 failures do not lock.
    for _ in range(allowed - 1):
        httpx.post(server.endpoint, data={**form, "password": "wrong"})
    login(server.endpoint, keys_name, "secret-pw")[0].close()
