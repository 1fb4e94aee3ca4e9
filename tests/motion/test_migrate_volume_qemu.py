"""migrateVolume on a real QEMU host (qemu-img for the offline copies, a TCG guest for the live move):
the bytes written into a disk are in its file on the new pool, the chain of a linked clone still has the
template base (on the new pool) as backing, the guest boots from the moved root disk, and nothing of the
source is left. The live test runs once the QEMU driver reports live_storage_motion (its mirror_disk)."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
from motionlib import deploy, new_volume, other_pool, root_of, vm_of, vol_of

from helpers.faultlib import known_layers, transitional
from strato.protocol.messages import GetConsoleLog

pytestmark = pytest.mark.qemu
Cloud = Any
PATTERN = "0x6b"


def _top_file(cloud: Cloud, vol_id: str) -> Path:
    pool_id, path = cloud.server.sql(
        "SELECT l.pool_id, l.path FROM layers l JOIN volumes v ON v.top_layer_id = l.id WHERE v.id = ?", vol_id
    )[0]
    return Path(cloud.pool_dirs[str(pool_id)]) / str(path)


def _qemu_io(path: Path, command: str, *flags: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["qemu-io", *flags, "-f", "qcow2", "-c", command, str(path)], capture_output=True,
                          text=True, timeout=60, check=False)  # fmt: skip


def _has_pattern(path: Path) -> None:
    read = _qemu_io(path, f"read -P {PATTERN} 0 64k", "-r", "-U")
    assert read.returncode == 0 and "Pattern verification failed" not in read.stdout, read.stdout + read.stderr


def _backing(path: Path) -> str | None:
    out = subprocess.run(["qemu-img", "info", "-U", "--output=json", str(path)], capture_output=True, text=True,
                         check=True)  # fmt: skip
    info = json.loads(out.stdout)
    return info.get("full-backing-filename") or info.get("backing-filename")


def _wait_booted(cloud: Cloud, vm: dict[str, Any], since: int = 0, timeout: float = 240) -> None:
    deadline = time.monotonic() + timeout
    while True:
        text = cloud.agent.client().call(GetConsoleLog(name=vm["instancename"], tail_bytes=None)).text
        if text.count("STRATO-DISKS:") > since:
            return
        assert time.monotonic() < deadline, f"VM {vm['name']} did not boot"
        time.sleep(1)


def _promises_hold(cloud: Cloud) -> None:
    assert transitional(cloud.server) == []
    on_disk, known = cloud.files(), known_layers(cloud.server)
    assert on_disk - known == set(), on_disk - known
    assert known_layers(cloud.server, ready_only=True) - on_disk == set()


def _live_capable(cloud: Cloud) -> bool:
    raw = cloud.server.sql("SELECT capabilities FROM hosts WHERE id = ?", cloud.ids["host"])[0][0]
    caps = json.loads(raw) if isinstance(raw, str) else (raw or {})
    return bool(caps.get("live_storage_motion"))


def test_offline_move_of_a_detached_volume_on_qemu(qemucloud: Cloud) -> None:
    vol = new_volume(qemucloud, pool=qemucloud.ids["shared"])
    source = _top_file(qemucloud, vol["id"])
    written = _qemu_io(source, f"write -P {PATTERN} 0 64k")
    assert written.returncode == 0, written.stderr
    result = qemucloud.ok(qemucloud.api().migrateVolume(volumeid=vol["id"], storageid=qemucloud.ids["local"]))
    assert result["volume"]["storageid"] == qemucloud.ids["local"] and result["volume"]["state"] == "Ready"
    target = _top_file(qemucloud, vol["id"])
    assert target.parent.parent.parent == Path(qemucloud.pool_dirs[qemucloud.ids["local"]])
    _has_pattern(target)
    assert not source.exists()
    _promises_hold(qemucloud)


def test_offline_move_of_a_stopped_linked_clones_root_disk_on_qemu(qemucloud: Cloud) -> None:
    vm = deploy(qemucloud, start=True)
    try:
        _wait_booted(qemucloud, vm)
        qemucloud.ok(qemucloud.api().stopVirtualMachine(id=vm["id"]), timeout=120)
        root = root_of(qemucloud, vm["id"])
        source = _top_file(qemucloud, root["id"])
        target_pool = other_pool(qemucloud, root)
        qemucloud.ok(qemucloud.api().migrateVolume(volumeid=root["id"], storageid=target_pool), timeout=300)
        assert vol_of(qemucloud, root["id"])["storageid"] == target_pool
        assert vm_of(qemucloud, vm["id"])["state"] == "Stopped"
        moved = _top_file(qemucloud, root["id"])
        base = Path(qemucloud.pool_dirs[target_pool]) / f"templates/{qemucloud.ids['template']}.qcow2"
        assert _backing(moved) == str(base), (_backing(moved), base)  # linked, not flattened
        assert not source.exists()
        qemucloud.ok(qemucloud.api().startVirtualMachine(id=vm["id"]), timeout=300)
        _wait_booted(qemucloud, vm_of(qemucloud, vm["id"]))
        _promises_hold(qemucloud)
    finally:
        qemucloud.ok(qemucloud.api().destroyVirtualMachine(id=vm["id"], expunge=True), timeout=300)


def test_live_move_of_a_running_vms_data_disk_on_qemu(qemucloud: Cloud) -> None:
    if not _live_capable(qemucloud):
        pytest.skip("the QEMU host does not report live_storage_motion yet (its mirror_disk)")
    vm = deploy(qemucloud, start=True)
    try:
        _wait_booted(qemucloud, vm)
        vol = new_volume(qemucloud, pool=qemucloud.ids["shared"])
        written = _qemu_io(_top_file(qemucloud, vol["id"]), f"write -P {PATTERN} 0 64k")
        assert written.returncode == 0, written.stderr
        qemucloud.ok(qemucloud.api().attachVolume(id=vol["id"], virtualmachineid=vm["id"]), timeout=120)
        source = _top_file(qemucloud, vol["id"])
        api = qemucloud.api()
        result = qemucloud.ok(api.migrateVolume(volumeid=vol["id"], storageid=qemucloud.ids["local"],
                                                livemigrate=True), timeout=300)  # fmt: skip
        assert result["volume"]["storageid"] == qemucloud.ids["local"] and result["volume"]["state"] == "Ready"
        assert vm_of(qemucloud, vm["id"])["state"] == "Running"
        _has_pattern(_top_file(qemucloud, vol["id"]))
        assert not source.exists()
        _promises_hold(qemucloud)
    finally:
        qemucloud.ok(qemucloud.api().destroyVirtualMachine(id=vm["id"], expunge=True), timeout=300)
