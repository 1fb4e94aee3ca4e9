"""The rest of the everyday commands against the real QEMU driver: resizing volumes (stopped and
running VM), updating VMs and templates, ISOs, registered SSH keys, and cancelling a long job."""

from __future__ import annotations

import http.server
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from computelib import Env, api_error, qemu_img_info, states_settled, wait_until
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

pytestmark = pytest.mark.qemu
GIB = 1024**3


def _tag() -> str:
    return uuid.uuid4().hex[:6]


def test_resize_volume_stopped_and_running(env: Env) -> None:
    vm = env.deploy(f"resize-{_tag()}", startvm=False, datadisksdetails=[{"diskofferingid": env.disk_offering["id"]}])
    try:
        data = next(v for v in env.volumes(vm["id"]) if v["type"] == "DATADISK")
        grown = env.api.resizeVolume(id=data["id"], size=2)["volume"]
        assert grown["size"] == 2 * GIB and grown["state"] == "Ready"
        assert qemu_img_info(grown["path"])["virtual-size"] == 2 * GIB
        code, msg = api_error(lambda: env.api.resizeVolume(id=data["id"], size=1))
        assert code == 431 and "shrink" in msg, msg

        env.api.startVirtualMachine(id=vm["id"])
        grown = env.api.resizeVolume(id=data["id"], size=3)["volume"]
        assert grown["size"] == 3 * GIB and grown["vmstate"] == "Running"
        assert qemu_img_info(grown["path"])["virtual-size"] == 3 * GIB  # QEMU grew its own open image
        env.api.stopVirtualMachine(id=vm["id"], forced=True)
    finally:
        env.destroy(vm["id"])
    assert list(states_settled(env)) == []


def test_update_vm_template_isos_and_key_pairs(env: Env, tmp_path: Path) -> None:
    # --- updateVirtualMachine on a stopped VM
    vm = env.deploy(f"upd-{_tag()}", startvm=False)
    try:
        new_name = f"renamed-{_tag()}"
        updated = env.api.updateVirtualMachine(id=vm["id"], name=new_name, displayname="Shown", group="web")
        assert updated["virtualmachine"]["name"] == new_name and updated["virtualmachine"]["group"] == "web"
        assert env.vm(vm["id"])["displayname"] == "Shown"
    finally:
        env.destroy(vm["id"])

    # --- updateTemplate
    tid = env.template["id"]
    before = env.template_info(tid)
    env.api.updateTemplate(id=tid, displaytext="The tiny guest, updated")
    assert env.template_info(tid)["displaytext"] == "The tiny guest, updated"
    env.api.updateTemplate(id=tid, displaytext=before["displaytext"])

    # --- ISOs: register (a real ISO file), list, update, delete: its file leaves the store
    iso_file = tmp_path / "tools.iso"
    iso_file.write_bytes(b"\0" * 32768 + b"\x01CD001" + b"\0" * 2041 + b"\0" * 32768)
    iso = env.api.registerIso(name=f"iso-{_tag()}", displaytext="tools", url=f"file://{iso_file}", zoneid=env.zoneid,
                              imagestoreid=env.stores["store1"]["id"])["iso"][0]  # fmt: skip
    assert env.job(iso["jobid"])["jobstatus"] == 1
    listed = env.api.listIsos(isofilter="self", id=iso["id"])["iso"]
    assert listed[0]["isready"] is True and listed[0]["format"] == "ISO"
    [location] = listed[0]["locations"]
    store_file = Path(env.stores["store1"]["path"]) / location["path"]
    assert store_file.is_file()
    env.api.updateIso(id=iso["id"], displaytext="tools, renamed")
    assert env.api.listIsos(isofilter="self", id=iso["id"])["iso"][0]["displaytext"] == "tools, renamed"
    env.api.deleteIso(id=iso["id"])
    assert env.api.listIsos(isofilter="self", id=iso["id"]) == {}
    assert not store_file.exists()

    # --- SSH key pairs: register a public key, find it by name and fingerprint, refuse garbage, delete
    key = ed25519.Ed25519PrivateKey.generate().public_key()
    public = key.public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH).decode()
    name = f"key-{_tag()}"
    pair = env.api.registerSSHKeyPair(name=name, publickey=public + " me@laptop")["keypair"]
    assert len(pair["fingerprint"].split(":")) == 16
    found = env.api.listSSHKeyPairs(fingerprint=pair["fingerprint"])["sshkeypair"]
    assert [k["name"] for k in found] == [name]
    code, msg = api_error(lambda: env.api.registerSSHKeyPair(name=f"bad-{_tag()}", publickey="ssh-rsa not-base64!"))
    assert code == 431 and "publickey" in msg, msg
    code, msg = api_error(lambda: env.api.registerSSHKeyPair(name=name, publickey=public))
    assert code == 431 and "already exists" in msg, msg
    env.api.deleteSSHKeyPair(name=name)
    assert env.api.listSSHKeyPairs(name=name) == {}


class _SlowServer(http.server.BaseHTTPRequestHandler):
    """Sends a 64 MiB image slowly (256 KiB every 50 ms), so that there is time to cancel its download."""

    def do_GET(self) -> None:
        size = 64 * 1024**2
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(size))
        self.end_headers()
        chunk = b"\x52" * (256 * 1024)
        try:
            for _ in range(size // len(chunk)):
                self.wfile.write(chunk)
                time.sleep(0.05)
        except OSError:
            pass  # the agent hung up: the download was cancelled

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def slow_url() -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _SlowServer)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/slow.raw"
    finally:
        server.shutdown()
        server.server_close()


def test_cancel_a_template_download(env: Env, slow_url: str) -> None:
    before = env.stray_view()
    registered = env.api.registerTemplate(name=f"slow-{_tag()}", displaytext="slow", url=slow_url, format="RAW",
                                          hypervisor="KVM", zoneid=env.zoneid,
                                          imagestoreid=env.stores["store2"]["id"])["template"][0]  # fmt: skip
    job_id = registered["jobid"]
    progress = wait_until(
        lambda: env.raw.queryAsyncJobResult(jobid=job_id),
        lambda j: j["jobstatus"] != 0 or 0 < j.get("jobprogress", 0) < 100,
        60,
        "download progress",
    )
    assert progress["jobstatus"] == 0, progress  # still running, with progress reported
    env.raw.cancelAsyncJob(jobid=job_id)
    job = env.job(job_id)
    assert job["jobstatus"] == 3, job  # cancelled
    info = env.template_info(registered["id"])
    assert info["state"] == "Error" and "cancelled" in info["status"], info
    # Nothing is left on the store, neither the image nor a partial download.
    wait_until(env.stray_view, lambda now: now == before, 15, "no partial file on any store or pool")
    env.api.deleteTemplate(id=registered["id"])
    assert list(states_settled(env)) == []
