"""NIC hot-plug into a running QEMU guest (TCG, the tiny image built from this tree), server and agents
in namespaces (lab_cloud, one host used).

A guest booted on network A gets a second NIC on network B while it runs (addNicToVirtualMachine):
inside the guest eth1 appears, DHCP gives it the address the API shows, and the guest pings B's router
through it; QEMU holds the NIC's tap open. removeNicFromVirtualMachine then unplugs it live: the guest
sees eth1 leave, QEMU no longer holds the tap, the tap is gone from the host and listNics shows eth0's
NIC alone.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from test_network_qemu import NetCloud, _make, _wait_console, lab_cloud

from helpers.serverproc import wait_job
from strato.protocol.messages import GetVm

pytestmark = pytest.mark.qemu
HOST = "host-1"


@pytest.fixture(scope="module")
def hotcloud(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NetCloud]:
    with lab_cloud(tmp_path_factory.mktemp("nethot"), "h", _make) as cloud:
        yield cloud


def _tap(nic: dict[str, Any]) -> str:
    return "st-" + str(nic["id"]).replace("-", "")[:12]


def _taps_held_by_qemu(cloud: NetCloud, vm: dict[str, Any]) -> set[str]:
    """The taps QEMU has open: the `iff:` of its /dev/net/tun descriptors (one per tap netdev)."""
    pid = cloud.agents[HOST].client(timeout=30).call(GetVm(name=vm["instancename"])).pid
    assert pid is not None
    held = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            if str(fd.readlink()) != "/dev/net/tun":
                continue
            info = Path(f"/proc/{pid}/fdinfo/{fd.name}").read_text()
        except OSError:
            continue
        found = re.search(r"^iff:\s*(\S+)", info, re.M)
        if found:
            held.add(found.group(1))
    return held


def test_nic_hot_plug_and_unplug_in_a_running_guest(hotcloud: NetCloud) -> None:
    cloud, api = hotcloud, hotcloud.api()
    nets = {}
    for key, prefix in (("A", "10.40.0"), ("B", "10.41.0")):
        nets[key] = api.createNetwork(name=f"hot-{key}", displaytext=key, zoneid=cloud.ids["zone"],
                                      networkofferingid=cloud.ids["netoffering"], gateway=f"{prefix}.1",
                                      netmask="255.255.255.0")["network"]  # fmt: skip
    commands = "net-up;net-up:eth1:240;ping:10.41.0.1:60;net-gone:eth1:240"
    started = api.deployVirtualMachine(
        zoneid=cloud.ids["zone"], serviceofferingid=cloud.ids["offering"], templateid=cloud.ids["template"],
        name="hot", hostid=cloud.ids[HOST], networkids=nets["A"]["id"], **{"details[0].guestcommands": commands},
    )  # fmt: skip
    done = wait_job(api, started["jobid"], 180)
    assert done["jobstatus"] == 1, done
    vm = done["jobresult"]["virtualmachine"]
    first = vm["nic"][0]
    try:
        log = _wait_console(cloud, HOST, vm, r"STRATO-NET: eth0 \S+")
        assert f"STRATO-NET: eth0 {first['ipaddress']}/24" in log, log[-2000:]
        assert _taps_held_by_qemu(cloud, vm) == {_tap(first)}

        added = wait_job(api, api.addNicToVirtualMachine(virtualmachineid=vm["id"], networkid=nets["B"]["id"])["jobid"],
                         120)  # fmt: skip
        assert added["jobstatus"] == 1, added
        shown = {n["networkid"]: n for n in added["jobresult"]["virtualmachine"]["nic"]}
        second = shown[nets["B"]["id"]]
        assert second["isdefault"] is False and shown[nets["A"]["id"]]["isdefault"] is True
        log = _wait_console(cloud, HOST, vm, r"STRATO-NET: eth1 \S+")
        assert f"STRATO-NET: eth1 {second['ipaddress']}/24" in log, log[-2000:]
        log = _wait_console(cloud, HOST, vm, r"STRATO-RUN-END ping:10.41.0.1:60 rc=\d")
        assert "STRATO-RUN-END ping:10.41.0.1:60 rc=0" in log, log[-2000:]
        assert _taps_held_by_qemu(cloud, vm) == {_tap(first), _tap(second)}
        assert _tap(second) in cloud.links(HOST)

        removed = wait_job(api, api.removeNicFromVirtualMachine(virtualmachineid=vm["id"], nicid=second["id"])["jobid"],
                           120)  # fmt: skip
        assert removed["jobstatus"] == 1, removed
        assert [n["id"] for n in removed["jobresult"]["virtualmachine"]["nic"]] == [first["id"]]
        log = _wait_console(cloud, HOST, vm, r"STRATO-RUN-END net-gone:eth1:240 rc=\d")
        assert "STRATO-NET: eth1 gone" in log and "net-gone:eth1:240 rc=0" in log, log[-2000:]
        assert _taps_held_by_qemu(cloud, vm) == {_tap(first)}
        assert _tap(second) not in cloud.links(HOST)
        assert [n["id"] for n in api.listNics(virtualmachineid=vm["id"])["nic"]] == [first["id"]]
    finally:
        wait_job(api, api.destroyVirtualMachine(id=vm["id"], expunge=True)["jobid"], 120)
        for net in nets.values():
            wait_job(api, api.deleteNetwork(id=net["id"])["jobid"], 120)
