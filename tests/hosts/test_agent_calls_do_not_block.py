"""A request waiting for a slow agent does not hold the database: other requests go on meanwhile."""

from __future__ import annotations

import socket
import threading
import time
from typing import Any

from cs import CloudStack, CloudStackApiException
from hostlib import MakeCluster


def test_add_host_waiting_on_a_silent_agent_does_not_block_other_calls(
    make_cluster: MakeCluster, admin: CloudStack
) -> None:
    cluster = make_cluster("Simulator")
    silent = socket.create_server(("127.0.0.1", 0))  # accepts connections, never answers
    accepted: list[socket.socket] = []
    silent.settimeout(30)
    threading.Thread(target=lambda: accepted.append(silent.accept()[0]), daemon=True).start()
    outcome: dict[str, Any] = {}

    def add() -> None:
        try:
            cluster.api.addHost(zoneid=cluster.zoneid, podid=cluster.podid, clusterid=cluster.clusterid,
                                url=f"http://127.0.0.1:{silent.getsockname()[1]}", username="x", password="t",
                                hypervisor="Simulator")  # fmt: skip
        except CloudStackApiException as exc:
            outcome["error"] = exc.error

    adder = threading.Thread(target=add)
    adder.start()
    try:
        deadline = time.monotonic() + 10
        while not accepted:
            assert time.monotonic() < deadline, "the server never called the silent agent"
            time.sleep(0.05)
        started = time.monotonic()
        assert isinstance(admin.listZones(), dict)
        admin.createZone(name=f"meanwhile-{int(started * 1000)}")
        assert time.monotonic() - started < 5, "a call waited for the silent agent's request"
    finally:
        for conn in accepted:
            conn.close()
        silent.close()
        adder.join(timeout=60)
    assert outcome["error"]["errorcode"] == 534  # the agent hung up without answering
    assert admin.listHosts(clusterid=cluster.clusterid) == {}
