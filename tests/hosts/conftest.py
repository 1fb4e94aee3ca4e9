"""Fixtures of the host tests: a real server subprocess (SQLite unless STRATO_HOSTS_BACKENDS says
otherwise), real agent subprocesses (simulator or QEMU under TCG), and a fresh zone/pod/cluster per test
so that tests sharing a module's server never see each other's hosts or capacity."""

from __future__ import annotations

import os
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

_TESTS = str(Path(__file__).resolve().parents[1])
if _TESTS not in sys.path:
    sys.path.insert(0, _TESTS)

from cs import CloudStack  # noqa: E402

_HERE = str(Path(__file__).resolve().parent)
if _HERE not in sys.path:
    sys.path.insert(0, _HERE)

from hostlib import Cluster, MakeCluster  # noqa: E402

from helpers.agentproc import AgentProcess  # noqa: E402
from helpers.fixtures import agent_factory  # noqa: E402

__all__ = ["agent_factory"]


@pytest.fixture(scope="module", params=os.environ.get("STRATO_HOSTS_BACKENDS", "sqlite").split(","))
def backend(request: pytest.FixtureRequest) -> str:
    """SQLite by default (these tests are about hosts, not databases); STRATO_HOSTS_BACKENDS=sqlite,postgres
    runs them on both."""
    return str(request.param)


@pytest.fixture
def make_cluster(admin: CloudStack) -> MakeCluster:
    """make_cluster("KVM") -> a new zone/pod/cluster of that hypervisor (unique names)."""

    def make(hypervisor: str = "Simulator") -> Cluster:
        tag = uuid.uuid4().hex[:8]
        zone = admin.createZone(name=f"zone-{tag}")["zone"]
        pod = admin.createPod(name=f"pod-{tag}", zoneid=zone["id"])["pod"]
        cluster = admin.addCluster(
            clustername=f"cluster-{tag}", zoneid=zone["id"], podid=pod["id"], hypervisor=hypervisor
        )["cluster"][0]
        return Cluster(zone["id"], pod["id"], cluster["id"], hypervisor, admin)

    return make


@pytest.fixture
def qemu_agent_factory(agent_factory: Callable[..., AgentProcess]) -> Iterator[Callable[..., AgentProcess]]:
    """QEMU agents under TCG (agent_factory stops them; they run no VM in these tests)."""

    def start(**kwargs: Any) -> AgentProcess:
        kwargs.setdefault("driver", "qemu")
        kwargs.setdefault("accel", "tcg")
        kwargs.setdefault("token", f"qemu-{uuid.uuid4().hex[:8]}")
        return agent_factory(**kwargs)

    yield start
