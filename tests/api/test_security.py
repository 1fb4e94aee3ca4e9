"""Tried as an attacker would: forged, expired and key-less requests; account A naming account B's
resources in every command that takes their id, answered exactly as an unknown id; a domain admin
confined to its domain tree; oversized requests; the agent's port without its token; how passwords are
stored; no secret in the logs or events; refusals not filling the event log; failed logins limited per
address. On a simulator host, SQLite and PostgreSQL."""

from __future__ import annotations

import json
import socket
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from cs import CloudStack, CloudStackApiException

from helpers.agentproc import AgentProcess, start_agent
from helpers.serverproc import ADMIN_PASSWORD, Keys, ServerProcess, create_user_keys, signed_query, wait_job
from helpers.simcloud import SimCloud, build_sim_cloud, deploy


@dataclass
class World:
    cloud: SimCloud
    agent: AgentProcess
    a: Keys
    b: Keys
    b_ids: dict[str, str]  # what account B owns: vm, volume, template, iso, job, keypair, user, account
    dadmin: Keys  # a domain admin of a domain of its own, B being outside it
    inside: Keys  # a user of the domain admin's domain


@pytest.fixture(scope="module")
def world(server: ServerProcess, admin: CloudStack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    base = tmp_path_factory.mktemp("security")
    agent = start_agent(base / "agent", token=f"sec-{uuid.uuid4().hex[:8]}")
    try:
        cloud = build_sim_cloud(admin, agent, base)
        tag = uuid.uuid4().hex[:6]
        a = create_user_keys(admin, server.endpoint, username=f"a-{tag}")
        b = create_user_keys(admin, server.endpoint, username=f"b-{tag}")
        bob = server.cs(b)
        vm = deploy(bob, cloud, f"bvm-{tag}")
        vol = bob.createVolume(name=f"bvol-{tag}", zoneid=cloud.zone, diskofferingid=cloud.disk)
        assert wait_job(bob, vol["jobid"])["jobstatus"] == 1
        common = {"zoneid": cloud.zone, "ostypeid": "Other Linux (64-bit)", "displaytext": "x"}
        tmpl = bob.registerTemplate(name=f"bt-{tag}", url="http://images.invalid/b.qcow2", format="QCOW2",
                                    hypervisor="Simulator", **common)["template"][0]  # fmt: skip
        iso = bob.registerIso(name=f"bi-{tag}", url="http://images.invalid/b.iso", **common)["iso"][0]
        bob.createSSHKeyPair(name=f"bk-{tag}")
        bob.createTags(resourcetype="UserVm", resourceids=vm, **{"tags[0].key": "owner", "tags[0].value": "b"})
        dom = admin.createDomain(name=f"da-{tag}")["domain"]
        dadmin = create_user_keys(admin, server.endpoint, username=f"da-{tag}", domainid=dom["id"], accounttype=2)
        inside = create_user_keys(admin, server.endpoint, username=f"in-{tag}", domainid=dom["id"])
        ids = {"vm": vm, "volume": vol["id"], "template": tmpl["id"], "iso": iso["id"], "job": vol["jobid"],
               "keypair": f"bk-{tag}", "user": b.userid, "account": b.accountid, "domain": b.domainid,
               "accountname": f"b-{tag}"}  # fmt: skip
        yield World(cloud, agent, a, b, ids, dadmin, inside)
    finally:
        agent.stop()


def _answer(client: CloudStack, command: str, params: dict[str, Any]) -> tuple[int, str]:
    try:
        getattr(client, command)(**params)
    except CloudStackApiException as err:
        return int(err.error["errorcode"]), str(err.error["errortext"])
    return 200, ""


# (command, its parameters; "{vm}" and the like name one of B's resources)
BY_ID: list[tuple[str, dict[str, str]]] = [
    ("startVirtualMachine", {"id": "{vm}"}),
    ("stopVirtualMachine", {"id": "{vm}"}),
    ("rebootVirtualMachine", {"id": "{vm}"}),
    ("destroyVirtualMachine", {"id": "{vm}"}),
    ("recoverVirtualMachine", {"id": "{vm}"}),
    ("expungeVirtualMachine", {"id": "{vm}"}),
    ("updateVirtualMachine", {"id": "{vm}", "displayname": "mine"}),
    ("scaleVirtualMachine", {"id": "{vm}", "serviceofferingid": "{offering}"}),
    ("detachIso", {"virtualmachineid": "{vm}"}),
    ("createTags", {"resourcetype": "UserVm", "resourceids": "{vm}", "tags[0].key": "k", "tags[0].value": "v"}),
    ("deleteTags", {"resourcetype": "UserVm", "resourceids": "{vm}"}),
    ("attachVolume", {"id": "{volume}", "virtualmachineid": "{vm}"}),
    ("detachVolume", {"id": "{volume}"}),
    ("resizeVolume", {"id": "{volume}", "size": "2"}),
    ("deleteVolume", {"id": "{volume}"}),
    ("createTemplate", {"volumeid": "{volume}", "name": "t", "displaytext": "t", "ostypeid": "Other Linux (64-bit)"}),
    ("createTags", {"resourcetype": "Volume", "resourceids": "{volume}", "tags[0].key": "k", "tags[0].value": "v"}),
    ("updateTemplate", {"id": "{template}", "name": "mine"}),
    ("deleteTemplate", {"id": "{template}"}),
    ("copyTemplate", {"id": "{template}", "destzoneid": "{zone}"}),
    (
        "createTags",
        {"resourcetype": "Template", "resourceids": "{template}", "tags[0].key": "k", "tags[0].value": "v"},
    ),
    ("updateIso", {"id": "{iso}", "name": "mine"}),
    ("deleteIso", {"id": "{iso}"}),
    ("copyIso", {"id": "{iso}", "destzoneid": "{zone}"}),
    ("attachIso", {"id": "{iso}", "virtualmachineid": "{vm}"}),
    ("queryAsyncJobResult", {"jobid": "{job}"}),
    ("cancelAsyncJob", {"jobid": "{job}"}),
    ("deleteSSHKeyPair", {"name": "{keypair}"}),
    ("getUserKeys", {"id": "{user}"}),
    ("registerUserKeys", {"id": "{user}"}),
    ("updateUser", {"id": "{user}", "firstname": "mine"}),
]
# What a domain admin may not touch outside its tree (account B is in ROOT).
DOMAIN_ADMIN_BY_ID: list[tuple[str, dict[str, str]]] = [
    ("updateAccount", {"id": "{account}", "newname": "mine"}),
    ("deleteAccount", {"id": "{account}"}),
    ("disableAccount", {"id": "{account}", "lock": "false"}),
    ("enableAccount", {"id": "{account}"}),
    ("disableUser", {"id": "{user}"}),
    ("enableUser", {"id": "{user}"}),
    ("lockUser", {"id": "{user}"}),
    ("deleteUser", {"id": "{user}"}),
    ("getUserKeys", {"id": "{user}"}),
    ("registerUserKeys", {"id": "{user}"}),
    ("updateUser", {"id": "{user}", "firstname": "mine"}),
    ("stopVirtualMachine", {"id": "{vm}"}),
    ("deleteVolume", {"id": "{volume}"}),
    ("deleteTemplate", {"id": "{template}"}),
    ("createTags", {"resourcetype": "UserVm", "resourceids": "{vm}", "tags[0].key": "k", "tags[0].value": "v"}),
]


def _fill(params: dict[str, str], ids: dict[str, str]) -> dict[str, str]:
    return {k: v.format(**ids) for k, v in params.items()}


def _as_unknown(client: CloudStack, world: World, commands: list[tuple[str, dict[str, str]]]) -> list[str]:
    """Each command on B's resource and on ids that do not exist: the same code and text (ids aside)."""
    real = {**world.b_ids, "zone": world.cloud.zone, "offering": world.cloud.offering}
    fake = {k: (f"nokey-{uuid.uuid4().hex[:6]}" if k == "keypair" else str(uuid.uuid4())) for k in world.b_ids}
    fake |= {"zone": world.cloud.zone, "offering": world.cloud.offering}
    problems = []
    for command, params in commands:
        got = _answer(client, command, _fill(params, real))
        unknown = _answer(client, command, _fill(params, fake))
        masked = got[1]
        for key, value in real.items():
            masked = masked.replace(value, "{" + key + "}")
        expected = unknown[1]
        for key, value in fake.items():
            expected = expected.replace(value, "{" + key + "}")
        if got[0] not in (431, 432) or (got[0], masked) != (unknown[0], expected):
            problems.append(f"{command}: {got} while an unknown id gives {unknown}")
    return problems


def test_a_user_naming_another_accounts_resources_learns_nothing(server: ServerProcess, world: World) -> None:
    assert _as_unknown(server.cs(world.a), world, BY_ID) == []
    # And B's things are untouched and still B's.
    bob = server.cs(world.b)
    assert bob.listVirtualMachines(id=world.b_ids["vm"])["virtualmachine"][0]["state"] == "Running"
    assert bob.listTags(resourceid=world.b_ids["vm"])["tag"][0]["value"] == "b"
    assert bob.getUserKeys(id=world.b.userid)["userkeys"]["secretkey"] == world.b.secretkey
    # Lists by id show nothing of B's.
    alice = server.cs(world.a)
    for command, params in (("listVirtualMachines", {"id": world.b_ids["vm"]}),
                            ("listVolumes", {"id": world.b_ids["volume"]}),
                            ("listTemplates", {"id": world.b_ids["template"], "templatefilter": "all"}),
                            ("listIsos", {"id": world.b_ids["iso"], "isofilter": "all"}),
                            ("listSSHKeyPairs", {"name": world.b_ids["keypair"]}),
                            ("listTags", {"resourceid": world.b_ids["vm"]}),
                            ("listUsers", {"id": world.b.userid})):  # fmt: skip
        assert getattr(alice, command)(**params) == {}, command


def test_a_domain_admin_is_confined_to_its_tree(server: ServerProcess, admin: CloudStack, world: World) -> None:
    da = server.cs(world.dadmin)
    assert _as_unknown(da, world, DOMAIN_ADMIN_BY_ID) == []
    # templatefilter=all: its tree's private templates, not other domains' (B's is in ROOT).
    mine = server.cs(world.inside).registerTemplate(
        name=f"in-{uuid.uuid4().hex[:6]}", displaytext="x", url="http://images.invalid/i.qcow2", format="QCOW2",
        hypervisor="Simulator", zoneid=world.cloud.zone, ostypeid="Other Linux (64-bit)")["template"][0]  # fmt: skip
    seen = {t["id"] for t in da.listTemplates(templatefilter="all").get("template", [])}
    assert mine["id"] in seen and world.b_ids["template"] not in seen
    assert world.cloud.template in seen  # public templates stay visible to everyone
    assert world.b_ids["template"] in {t["id"] for t in admin.listTemplates(templatefilter="all")["template"]}


def test_create_zone_with_an_unknown_domain_is_431(admin: CloudStack) -> None:
    missing = str(uuid.uuid4())
    code, text = _answer(admin, "createZone", {"name": f"z-{missing[:6]}", "domainid": missing})
    assert (code, text) == (431, f"Unable to find domain with domainid={missing}")


def _get(server: ServerProcess, query: str) -> httpx.Response:
    return httpx.get(f"{server.endpoint}?{query}", timeout=30)


def test_forged_expired_and_keyless_requests_are_401(server: ServerProcess, world: World) -> None:
    keys = world.a
    later = (datetime.now(UTC) + timedelta(minutes=5)).strftime("%Y-%m-%dT%H:%M:%S+0000")
    base = {"command": "listZones", "response": "json", "apiKey": keys.apikey, "signatureVersion": "3"}
    assert _get(server, signed_query({**base, "expires": later}, keys.secretkey)).status_code == 200
    forged = _get(server, signed_query({**base, "expires": later}, "not-the-secret"))
    assert forged.status_code == 401 and forged.json()["listzonesresponse"]["errorcode"] == 401
    # A signed request replayed past its expires.
    earlier = (datetime.now(UTC) - timedelta(seconds=5)).strftime("%Y-%m-%dT%H:%M:%S+0000")
    replayed = _get(server, signed_query({**base, "expires": earlier}, keys.secretkey))
    assert replayed.status_code == 401 and "expired" in replayed.text
    # Tampered after signing: another command under the same signature.
    query = signed_query({**base, "expires": later}, keys.secretkey).replace("listZones", "listUsers")
    assert _get(server, query).status_code == 401
    assert _get(server, "command=listZones&response=json").status_code == 401
    assert _get(server, f"command=listZones&response=json&apiKey={keys.apikey}").status_code == 401


def _raw_get(server: ServerProcess, query: str) -> tuple[int, str, dict[str, Any]]:
    """A GET sent on a socket (httpx refuses URLs over 64 KB): status, content type, JSON body."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as sock:
        sock.sendall(f"GET /client/api?{query} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    headers = dict(line.lower().split(": ", 1) for line in lines[1:])
    return int(lines[0].split()[1]), headers.get("content-type", ""), json.loads(body)


def test_oversized_requests_get_the_envelope(server: ServerProcess, world: World) -> None:
    for size in (70_000, 100_000, 500_000):
        status, ctype, body = _raw_get(server, "command=listZones&response=json&name=" + "x" * size)
        assert status == 431 and ctype.startswith("application/json")
        assert body["errorresponse"]["errorcode"] == 431 and "query string" in body["errorresponse"]["errortext"]
    resp = httpx.post(server.endpoint, content=b"command=listZones&x=" + b"y" * 2_000_000,
                      headers={"content-type": "application/x-www-form-urlencoded"}, timeout=30)  # fmt: skip
    assert resp.status_code == 431 and resp.json()["errorresponse"]["errorcode"] == 431
    # An over-long parameter value: the parameter named.
    code, text = _answer(server.cs(world.a), "listVirtualMachines", {"name": "n" * 5000})
    assert code == 431 and "name" in text
    assert _get(server, "command=listCapabilities&response=json").status_code == 401  # still serving


def test_the_agent_port_refuses_requests_without_the_hosts_token(world: World) -> None:
    for response in (
        httpx.get(f"{world.agent.base_url}/v1/health"),
        httpx.post(f"{world.agent.base_url}/v1/command", json={"command": {"type": "get_host_info"}}),
        httpx.post(
            f"{world.agent.base_url}/v1/command",
            json={"command": {"type": "get_host_info"}},
            headers={"Authorization": "Bearer not-the-token"},
        ),
    ):
        assert response.status_code == 401


def test_passwords_are_stored_with_a_slow_salted_hash(server: ServerProcess, admin: CloudStack) -> None:
    name = f"pw-{uuid.uuid4().hex[:6]}"
    for _ in range(2):
        create_user_keys(admin, server.endpoint, username=f"{name}-{_}", password="same-password")
    rows = server.sql("SELECT password_hash FROM users WHERE username LIKE ?", f"{name}-%")
    hashes = [r[0] for r in rows]
    assert len(hashes) == 2 and hashes[0] != hashes[1]  # salted
    for stored in hashes:
        scheme, iterations, _salt, _digest = stored.split("$")
        assert scheme == "pbkdf2_sha256" and int(iterations) >= 100_000
        assert "same-password" not in stored


def test_refusals_do_not_fill_the_event_log(server: ServerProcess, admin: CloudStack, world: World) -> None:
    keys = create_user_keys(admin, server.endpoint, username=f"loop-{uuid.uuid4().hex[:6]}")
    client = server.cs(keys)
    for _ in range(20):
        assert _answer(client, "deleteVolume", {"id": str(uuid.uuid4())})[0] == 431
    events = admin.listEvents(listall=True, level="ERROR", pagesize=500, page=1).get("event", [])
    mine = [e for e in events if e.get("username") == keys.userid or e.get("account") == client.listAccounts()
            ["account"][0]["name"]]  # fmt: skip
    assert 1 <= len(mine) <= 2, mine


def test_no_secret_in_logs_or_events(server: ServerProcess, admin: CloudStack, world: World) -> None:
    secrets = [world.a.secretkey, world.b.secretkey, world.dadmin.secretkey, world.agent.token, ADMIN_PASSWORD,
               "secret-pw", "same-password"]  # fmt: skip
    sessions = [r[0] for r in server.sql("SELECT key FROM login_sessions")]
    cookies = [r[0] for r in server.sql("SELECT cookie FROM login_sessions") if r[0]]
    texts = [server.stderr()]
    log = server.data_dir / "server.log"
    if log.exists():
        texts.append(log.read_text(errors="replace"))
    texts.append(str(admin.listEvents(listall=True, pagesize=500, page=1)))
    for secret in [*secrets, *sessions, *cookies]:
        assert all(secret not in text for text in texts), "a secret appears in the logs or events"


def test_failed_logins_are_limited_per_address(server: ServerProcess) -> None:
    """Last in the module: it leaves this address throttled for a minute."""
    codes = []
    for i in range(32):
        resp = httpx.post(server.endpoint, data={"command": "login", "username": f"nobody-{i}", "password": "x",
                                                  "domain": "/", "response": "json"})  # fmt: skip
        codes.append(resp.status_code)
    assert codes[:30] == [401] * 30 and codes[30:] == [429, 429]
    body = resp.json()["loginresponse"]
    assert body["errorcode"] == 429 and "Too many failed logins" in body["errortext"]
    # Even the right password waits: guessing cannot go faster.
    resp = httpx.post(server.endpoint, data={"command": "login", "username": "admin", "password": ADMIN_PASSWORD,
                                              "domain": "/", "response": "json"})  # fmt: skip
    assert resp.status_code == 429
