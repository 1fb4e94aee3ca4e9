"""Helpers of the host tests (imported by their conftest and modules): a test's own zone/pod/cluster,
and polling with a deadline."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from cs import CloudStack

from helpers.agentproc import AgentProcess

T = TypeVar("T")


def wait_until(fetch: Callable[[], T], ok: Callable[[T], bool], timeout: float, what: str, interval: float = 0.2) -> T:
    """Polls `fetch()` until `ok(value)`; fails naming `what` and the last value after `timeout` s."""
    deadline = time.monotonic() + timeout
    while True:
        value = fetch()
        if ok(value):
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not reached after {timeout}s; last: {value!r}")
        time.sleep(interval)


@dataclass
class Cluster:
    """A zone, pod and cluster made for one test."""

    zoneid: str
    podid: str
    clusterid: str
    hypervisor: str
    api: CloudStack

    def add_host(self, agent: AgentProcess, **kwargs: Any) -> dict[str, Any]:
        return self.add_url(agent.base_url, agent.token, **kwargs)

    def add_url(self, url: str, token: str, **kwargs: Any) -> dict[str, Any]:
        params: dict[str, Any] = {
            "zoneid": self.zoneid,
            "podid": self.podid,
            "clusterid": self.clusterid,
            "url": url,
            "username": "strato",
            "password": token,
            "hypervisor": self.hypervisor,
        }
        params.update(kwargs)
        hosts: list[dict[str, Any]] = self.api.addHost(**params)["host"]
        assert len(hosts) == 1
        return hosts[0]

    def host(self, host_id: str) -> dict[str, Any]:
        found: list[dict[str, Any]] = self.api.listHosts(id=host_id).get("host", [])
        assert len(found) == 1, found
        return found[0]

    def pools(self, **kwargs: Any) -> list[dict[str, Any]]:
        return list(self.api.listStoragePools(zoneid=self.zoneid, **kwargs).get("storagepool", []))


MakeCluster = Callable[..., Cluster]
