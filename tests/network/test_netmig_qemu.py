"""NICs that follow a migrating VM, with real QEMU guests (TCG, the tiny image built from this tree), the
server and two agents in namespaces of the test (the lab cloud of test_network_qemu).

b (host-2) serves TCP (`tcp-serve`, and `tcp-tick`: one numbered line a second per connection); a
(host-1) on the same isolated network probes b, then holds one connection to b's tick port open
(`tcp-stream`, each line it receives on its console). a moves live to host-2 through the API
(migrateVirtualMachineWithVolume, its root disk to host-2's local pool). Then:
- the very same connection goes on: lines of the same connection id, numbered on past the move, and
  the stream never ended;
- a answers a TCP probe from its network's router namespace (on host-1, so across VXLAN) before and after;
- host-1 has no tap of a left; host-2 has it, on the network's bridge; a's address is unchanged.
"""

from __future__ import annotations

import json
import re
import subprocess
import time
from collections.abc import Iterator

import pytest
from test_network_qemu import PORT, NetCloud, _deploy, _make, _router_processes, _wait_console, lab_cloud

from helpers.serverproc import wait_job
from strato.agent.network.base import bridge_name

pytestmark = pytest.mark.qemu
TICK_PORT = 7001
A, B = "10.50.0.11", "10.50.0.12"
STREAM = re.compile(r"STRATO-STREAM: TICK \S+ (\d+) (\d+)")


@pytest.fixture(scope="module")
def migcloud(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NetCloud]:
    with lab_cloud(tmp_path_factory.mktemp("nmq"), "m", _make) as cloud:
        yield cloud


def _links(cloud: NetCloud, host: str) -> dict[str, str | None]:
    """Each link of the host's namespace and the bridge it is on."""
    done = subprocess.run(["ip", "-j", "-n", cloud.lab.ns[host], "link", "show"], capture_output=True, text=True,
                          timeout=30, check=True)  # fmt: skip
    return {str(link["ifname"]): link.get("master") for link in json.loads(done.stdout)}


def _probe_from_router(cloud: NetCloud, address: str) -> str:
    """What a's `tcp-serve` answers to the router namespace of the network (a process of the test's agents)."""
    holder = next(pid for line, pid in _router_processes(cloud.base).items() if "strato-router-holder" in line)
    done = subprocess.run(["nsenter", "-t", str(holder), "-n", "busybox", "nc", "-w", "3", address, str(PORT)],
                          input="", capture_output=True, text=True, timeout=30, check=False)  # fmt: skip
    return done.stdout


def _ticks(log: str) -> list[tuple[int, int]]:
    return [(int(c), int(n)) for c, n in STREAM.findall(log)]


def test_migration_keeps_the_guests_tcp_connection_and_moves_its_nic(migcloud: NetCloud) -> None:
    cloud, api = migcloud, migcloud.api()
    net = api.createNetwork(name="mig", displaytext="mig", zoneid=cloud.ids["zone"],
                            networkofferingid=cloud.ids["netoffering"], gateway="10.50.0.1",
                            netmask="255.255.255.0")["network"]  # fmt: skip
    job_b = _deploy(cloud, "b", "host-2", net["id"], B, f"net-up;tcp-serve:{PORT};tcp-tick:{TICK_PORT}")
    done = wait_job(api, job_b, 180)
    assert done["jobstatus"] == 1, done
    vm_b = done["jobresult"]["virtualmachine"]
    _wait_console(cloud, "host-2", vm_b, f"STRATO-RUN-END tcp-tick:{TICK_PORT} rc=0")
    job_a = _deploy(cloud, "a", "host-1", net["id"], A,
                    f"net-up;tcp-serve:{PORT};tcp-probe:{B}:{PORT}:90;tcp-stream:{B}:{TICK_PORT}:900")  # fmt: skip
    done = wait_job(api, job_a, 180)
    assert done["jobstatus"] == 1, done
    vm_a = done["jobresult"]["virtualmachine"]
    nic = vm_a["nic"][0]
    tap = "st-" + nic["id"].replace("-", "")[:12]
    log = _wait_console(cloud, "host-1", vm_a, r"STRATO-STREAM: TICK \S+ \d+ [3-9]")
    assert f"STRATO-RUN-END tcp-probe:{B}:{PORT}:90 rc=0" in log, log[-2000:]
    assert "STRATO-PONG" in _probe_from_router(cloud, A)
    conn, before = _ticks(log)[-1]
    assert _links(cloud, "host-1").get(tap) == bridge_name(net["id"])

    root = api.listVolumes(virtualmachineid=vm_a["id"])["volume"][0]
    local2 = api.listStoragePools(zoneid=cloud.ids["zone"], hostid=cloud.ids["host-2"], scope="host")["storagepool"][0]
    started = time.monotonic()
    moved = wait_job(api, api.migrateVirtualMachineWithVolume(
        virtualmachineid=vm_a["id"], hostid=cloud.ids["host-2"],
        **{"migrateto[0].volume": root["id"], "migrateto[0].pool": local2["id"]},
    )["jobid"], 300)  # fmt: skip
    took = time.monotonic() - started
    assert moved["jobstatus"] == 1, moved
    vm_a = moved["jobresult"]["virtualmachine"]
    assert vm_a["hostid"] == cloud.ids["host-2"] and vm_a["state"] == "Running"
    assert vm_a["nic"][0]["ipaddress"] == A and vm_a["nic"][0]["macaddress"] == nic["macaddress"]

    # the same connection (its id) numbered on well past the move, and never ended
    log = _wait_console(cloud, "host-2", vm_a, rf"STRATO-STREAM: TICK \S+ {conn} {before + int(took) + 5}")
    assert all(c == conn for c, _ in _ticks(log)), _ticks(log)
    assert "STRATO-STREAM-END" not in log, log[-2000:]
    assert "STRATO-PONG" in _probe_from_router(cloud, A)  # the router stayed on host-1: across VXLAN
    assert tap not in _links(cloud, "host-1")
    assert _links(cloud, "host-2").get(tap) == bridge_name(net["id"])
    print(f"migration of a took {took:.1f} s; connection {conn} went on from tick {before}")

    for vm in (vm_a, vm_b):
        assert wait_job(api, api.destroyVirtualMachine(id=vm["id"], expunge=True)["jobid"], 120)["jobstatus"] == 1
    assert wait_job(api, api.deleteNetwork(id=net["id"])["jobid"])["jobstatus"] == 1
