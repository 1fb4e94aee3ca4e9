"""Everyday life of a VM with the real QEMU driver: deploy with an SSH key pair and user data (read by the
guest from the config drive), attach/detach volumes and ISOs on running and stopped VMs, reboot, stop
(forced and not), scale (refused while running), destroy, recover, expunge.

A graceful stop of the tiny guest ends with QEMU's `quit` after the stop timeout (the guest has no ACPI
power-button handler), so it runs in the background while the stopped VM's steps go on.
"""

from __future__ import annotations

import subprocess
import uuid
from pathlib import Path
from typing import Any

import pytest
from computelib import Env, api_error, b64, states_settled

pytestmark = pytest.mark.qemu

USER_DATA = "#!/bin/sh\necho userdata-ran-on-$(hostname)\n"


def _tag() -> str:
    return uuid.uuid4().hex[:6]


def _iso(env: Env) -> dict[str, Any]:
    src = env.base / f"iso-{_tag()}"
    (src / "content").mkdir(parents=True)
    (src / "content" / "hello.txt").write_text("hello\n")
    iso = src / "hello.iso"
    subprocess.run(
        ["genisoimage", "-quiet", "-o", str(iso), "-V", "HELLO", "-r", str(src / "content")],
        check=True,
        capture_output=True,
    )
    registered = env.api.registerIso(
        name=f"hello-{_tag()}", displaytext="hello", url=f"file://{iso}", zoneid=env.zoneid
    )["iso"][0]
    assert env.job(registered["jobid"])["jobstatus"] == 1
    return dict(registered)


def test_everyday_life(env: Env) -> None:
    key = env.api.createSSHKeyPair(name=f"key-{_tag()}")["keypair"]
    iso = _iso(env)
    name = f"life-{_tag()}"
    vm = env.deploy(
        name,
        hostid=env.hosts["host2"]["id"],
        keypair=key["name"],
        userdata=b64(USER_DATA),
        datadisksdetails=[{"diskofferingid": env.disk_offering["id"]}],
    )
    stopped_vm = env.deploy(f"life-stopped-{_tag()}", startvm=False)
    volume: dict[str, Any] | None = None
    try:
        assert vm["state"] == "Running" and vm["keypair"] == key["name"]
        # --- what the guest read from the config drive
        text = env.wait_console(vm, "STRATO-USERDATA-END")
        assert f"STRATO-HOSTNAME: {name}" in text
        assert f"STRATO-SSHKEY: MD5:{key['fingerprint']}" in text
        assert f"userdata-ran-on-{name}" in text and "STRATO-USERDATA-END rc=0" in text
        assert env.boot_disks(vm) == {"vda": env.template["size"], "vdb": 1024**3}

        # --- running: scale refused; a volume hot-plugged and unplugged; an ISO in and out
        code, msg = api_error(
            lambda: env.api.scaleVirtualMachine(id=vm["id"], serviceofferingid=env.big_offering["id"])
        )
        assert code == 431 and "Running" in msg and "stopped" in msg, msg
        volume = env.api.createVolume(name=f"vol-{_tag()}", zoneid=env.zoneid, diskofferingid=env.disk_offering["id"])[
            "volume"
        ]
        assert volume is not None
        attached = env.api.attachVolume(id=volume["id"], virtualmachineid=vm["id"])["volume"]
        assert attached["deviceid"] == 2 and attached["vmstate"] == "Running"
        assert env.block_devices(vm) == {0, 1, 2}
        detached = env.api.detachVolume(id=volume["id"])["volume"]
        assert not detached.get("virtualmachineid") and detached["state"] == "Ready"
        assert env.block_devices(vm) == {0, 1}
        root = env.volumes(vm["id"])[0]
        code, msg = api_error(lambda: env.api.detachVolume(id=root["id"]))
        assert code == 431 and "root disk" in msg, msg
        with_iso = env.api.attachIso(id=iso["id"], virtualmachineid=vm["id"])["virtualmachine"]
        assert with_iso["isoid"] == iso["id"]
        assert not env.api.detachIso(virtualmachineid=vm["id"])["virtualmachine"].get("isoid")

        # --- statistics from the host (the guest read its disks at boot), only when asked for
        [plain] = env.api.listVirtualMachines(id=vm["id"])["virtualmachine"]
        assert "diskkbsread" not in plain
        [with_stats] = env.api.listVirtualMachines(id=vm["id"], details="stats")["virtualmachine"]
        assert with_stats["diskkbsread"] > 0 and with_stats["diskioread"] > 0 and with_stats["cputimens"] > 0
        assert with_stats["memorykbs"] == 128 * 1024
        assert {d["deviceid"] for d in with_stats["diskstats"]} == {0, 1}

        # --- reboot: the guest boots again
        env.api.rebootVirtualMachine(id=vm["id"])
        env.wait_boots(vm, 2)
        assert env.vm(vm["id"])["state"] == "Running"

        # --- graceful stop, in the background
        stop_job = env.raw.stopVirtualMachine(id=vm["id"])["jobid"]

        # --- a stopped VM: attach/detach a volume and an ISO, scale, destroy, recover, expunge
        sid = stopped_vm["id"]
        assert stopped_vm["state"] == "Stopped"
        attached = env.api.attachVolume(id=volume["id"], virtualmachineid=sid)["volume"]
        assert attached["virtualmachineid"] == sid and attached["deviceid"] == 1
        assert not env.api.detachVolume(id=volume["id"])["volume"].get("virtualmachineid")
        env.api.attachVolume(id=volume["id"], virtualmachineid=sid)
        assert env.api.attachIso(id=iso["id"], virtualmachineid=sid)["virtualmachine"]["isoid"] == iso["id"]
        env.api.detachIso(virtualmachineid=sid)
        scaled = env.api.scaleVirtualMachine(id=sid, serviceofferingid=env.big_offering["id"])["virtualmachine"]
        assert scaled["memory"] == 192 and scaled["serviceofferingid"] == env.big_offering["id"]
        env.api.destroyVirtualMachine(id=sid)
        assert env.vm(sid)["state"] == "Destroyed"
        assert env.volumes(sid)[0]["state"] == "Destroy"
        recovered = env.api.recoverVirtualMachine(id=sid)["virtualmachine"]
        assert recovered["state"] == "Stopped"
        root_vol = env.volumes(sid)[0]
        assert root_vol["state"] == "Ready"
        root_path = Path(root_vol["path"])
        assert root_path.is_file()
        env.api.destroyVirtualMachine(id=sid)
        env.api.expungeVirtualMachine(id=sid)
        assert env.api.listVirtualMachines(id=sid, listall=True).get("virtualmachine", []) == []
        assert not root_path.exists(), "the root disk's file stays"
        assert not any(p.is_file() for p in root_path.parent.glob("*")), "files of the root disk stay"
        kept = env.volume(volume["id"])
        assert kept["state"] == "Ready" and not kept.get("virtualmachineid")
        assert Path(kept["path"]).is_file()

        # --- the graceful stop ended well
        job = env.job(stop_job, timeout=90)
        assert job["jobstatus"] == 1, job
        assert env.vm(vm["id"])["state"] == "Stopped"
    finally:
        env.destroy(vm["id"])
        env.destroy(stopped_vm["id"])
        if volume is not None:
            env.delete_volume(volume["id"])
    assert list(states_settled(env)) == []
