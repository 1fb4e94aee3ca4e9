"""Failure paths: each ends with a clear error, leaves no stray file on any pool or store (their
directories are listed before and after), and no VM or volume in a transitional state."""

from __future__ import annotations

import contextlib
import http.server
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from computelib import Env, api_error, states_settled, wait_until

from helpers.agentproc import start_agent

pytestmark = pytest.mark.qemu


def _tag() -> str:
    return uuid.uuid4().hex[:6]


@pytest.fixture
def no_strays(env: Env) -> Iterator[None]:
    """Every pool and store holds the same files after the test as before it; nothing is left mid-way."""
    before = env.stray_view()
    yield
    assert env.stray_view() == before
    assert list(states_settled(env)) == []


def test_pool_full_during_deploy(env: Env, no_strays: None) -> None:
    path = env.base / f"small-{_tag()}"
    path.mkdir()
    small = env.api.createStoragePool(
        name=f"small-{_tag()}",
        zoneid=env.zoneid,
        podid=env.podid,
        clusterid=env.clusterid,
        scope="cluster",
        url=f"SharedMountPoint://localhost{path}",
        capacitybytes=16 * 1024**2,
    )["storagepool"]
    try:
        vm_name = f"too-big-{_tag()}"
        code, msg = api_error(lambda: env.deploy(vm_name, rootdiskstorageid=small["id"]))
        assert code == 533, msg
        assert small["name"] in msg and ("free" in msg or "full" in msg), msg
        # The same through updateStoragePool on a pool that was big enough.
        env.api.updateStoragePool(id=small["id"], capacitybytes=1024**4)
        env.api.updateStoragePool(id=small["id"], capacitybytes=1024**2)
        code, msg = api_error(lambda: env.deploy(f"too-big-{_tag()}", rootdiskstorageid=small["id"]))
        assert code == 533 and small["name"] in msg, msg
        failed = env.api.listVirtualMachines(name=vm_name, listall=True)["virtualmachine"]
        assert [v["state"] for v in failed] == ["Error"]
        assert env.api.listVolumes(virtualmachineid=failed[0]["id"], listall=True).get("volume", []) == []
        assert pool_files_of(path) == set()
    finally:
        for vm in env.api.listVirtualMachines(state="Error", listall=True).get("virtualmachine", []):
            env.api.expungeVirtualMachine(id=vm["id"])
        env.api.deleteStoragePool(id=small["id"])


def pool_files_of(path: Path) -> set[str]:
    return {str(p.relative_to(path)) for p in path.rglob("*") if p.is_file()}


def test_agent_down_during_start(env: Env, no_strays: None) -> None:
    vm = env.deploy(
        f"pinned-{_tag()}",
        hostid=env.hosts["host2"]["id"],
        rootdiskstorageid=env.pools["local2"]["id"],
        startvm=False,
    )
    agent = env.agents["host2"]
    try:
        agent.kill()
        code, msg = api_error(lambda: env.api.startVirtualMachine(id=vm["id"], hostid=env.hosts["host2"]["id"]))
        assert code in (533, 534), msg
        assert env.hosts["host2"]["name"] in msg, msg
        assert env.vm(vm["id"])["state"] == "Stopped"
    finally:
        if not agent.alive():
            env.agents["host2"] = start_agent(
                agent.data_dir, token=agent.token, driver="qemu", accel="tcg", port=agent.port
            )
    wait_until(
        lambda: env.api.listHosts(id=env.hosts["host2"]["id"])["host"][0]["state"],
        lambda s: s == "Up",
        90,
        "host2 Up again",
    )
    env.destroy(vm["id"])


class _HalfServer(http.server.BaseHTTPRequestHandler):
    """Announces 8 MiB, sends 1 MiB, then closes the connection."""

    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(8 * 1024**2))
        self.end_headers()
        self.wfile.write(b"\x51" * 1024**2)
        self.wfile.flush()
        self.close_connection = True
        self.connection.shutdown(2)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def half_server() -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _HalfServer)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/broken.qcow2"
    finally:
        server.shutdown()
        server.server_close()


def _register_fails(env: Env, **params: Any) -> dict[str, Any]:
    registered = env.api.registerTemplate(
        name=f"bad-{_tag()}",
        displaytext="fails",
        format="QCOW2",
        hypervisor="KVM",
        zoneid=env.zoneid,
        imagestoreid=env.stores["store2"]["id"],
        **params,
    )["template"][0]
    job = env.job(registered["jobid"])
    assert job["jobstatus"] == 2, job
    info = env.template_info(registered["id"])
    assert info["state"] == "Error" and not info["isready"]
    assert info["status"] == job["jobresult"]["errortext"]
    assert [loc for loc in info["locations"] if loc["state"] != "Error"] == []
    return {"job": job, "template": info}


def test_template_download_fails_halfway(env: Env, no_strays: None, half_server: str) -> None:
    failed = _register_fails(env, url=half_server)
    text = failed["template"]["status"]
    assert failed["job"]["jobresult"]["errorcode"] == 534
    assert "broken.qcow2" in text or "download" in text.lower() or "incomplete" in text.lower(), text
    env.api.deleteTemplate(id=failed["template"]["id"])


def test_template_checksum_mismatch(env: Env, no_strays: None) -> None:
    failed = _register_fails(env, url=f"file://{env.tiny_image}", checksum="{md5}" + "0" * 32)
    assert "checksum" in failed["template"]["status"].lower(), failed["template"]["status"]
    env.api.deleteTemplate(id=failed["template"]["id"])


@contextlib.contextmanager
def _max_data_volumes(env: Env, limit: int) -> Iterator[None]:
    cap = env.api.listHypervisorCapabilities(hypervisor="KVM")["hypervisorCapabilities"][0]
    env.api.updateHypervisorCapabilities(id=cap["id"], maxdatavolumeslimit=limit)
    try:
        yield
    finally:
        env.api.updateHypervisorCapabilities(id=cap["id"], maxdatavolumeslimit=cap["maxdatavolumeslimit"])


def test_attach_beyond_max_data_volumes_and_detach_root(env: Env, no_strays: None) -> None:
    vm = env.deploy(f"limited-{_tag()}", startvm=False, datadisksdetails=[{"diskofferingid": env.disk_offering["id"]}])
    vol = env.api.createVolume(name=f"extra-{_tag()}", zoneid=env.zoneid, diskofferingid=env.disk_offering["id"])[
        "volume"
    ]
    try:
        with _max_data_volumes(env, 1):
            code, msg = api_error(lambda: env.api.attachVolume(id=vol["id"], virtualmachineid=vm["id"]))
            assert code == 431 and "maxdatavolumeslimit" in msg and "1" in msg, msg
            code, msg = api_error(
                lambda: env.deploy(
                    f"limited-{_tag()}",
                    startvm=False,
                    datadisksdetails=[{"diskofferingid": env.disk_offering["id"]}] * 2,
                )
            )
            assert code == 431 and "maxdatavolumeslimit" in msg, msg
        assert not env.volume(vol["id"]).get("virtualmachineid")
        root = env.volumes(vm["id"])[0]
        code, msg = api_error(lambda: env.api.detachVolume(id=root["id"]))
        assert code == 431 and "root disk" in msg, msg
        assert env.volume(root["id"])["virtualmachineid"] == vm["id"]
    finally:
        env.destroy(vm["id"])
        env.delete_volume(vol["id"])


def test_delete_template_in_use(env: Env, no_strays: None) -> None:
    registered = env.api.registerTemplate(
        name=f"in-use-{_tag()}",
        displaytext="in use",
        url=f"file://{env.tiny_image}",
        format="QCOW2",
        hypervisor="KVM",
        zoneid=env.zoneid,
        imagestoreid=env.stores["store2"]["id"],
    )["template"][0]
    assert env.job(registered["jobid"])["jobstatus"] == 1
    files_before = env.all_files()
    vm = env.deploy(f"user-of-{_tag()}", templateid=registered["id"], startvm=False)
    root = env.volumes(vm["id"])[0]
    code, msg = api_error(lambda: env.api.deleteTemplate(id=registered["id"]))
    assert code == 536 and root["name"] in msg, msg
    assert env.template_info(registered["id"])["isready"]
    env.destroy(vm["id"])
    env.api.deleteTemplate(id=registered["id"])
    after = env.all_files()
    assert after["store2"] == files_before["store2"] - {f"template/{registered['id']}/{registered['id']}.qcow2"}
