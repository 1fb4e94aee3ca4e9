"""AgentClient against a real agent: typed answers, typed errors, unreachable agents, threads."""

from __future__ import annotations

import threading
import typing
from concurrent.futures import ThreadPoolExecutor

import pytest

from helpers.agentproc import AgentProcess, free_port
from strato.protocol.answers import ANSWER_MODELS, COMMAND_TYPES, parse_answer
from strato.protocol.client import AgentCallError, AgentClient, AgentUnreachable
from strato.protocol.messages import (
    LONG_RUNNING_COMMANDS,
    Ack,
    CommandEnvelope,
    ConfigureSimulator,
    CopyLayer,
    CreateLayer,
    DiskSpec,
    ErrorCode,
    GetHostInfo,
    GetState,
    HostInfo,
    LayerInfo,
    LayerRef,
    PoolRef,
    PowerState,
    StartVm,
    StateReport,
    StopVm,
    VmSpec,
)


def test_every_command_has_an_answer_model() -> None:
    command_union = typing.get_args(CommandEnvelope.model_fields["command"].annotation)
    types = {model.model_fields["type"].default for model in command_union}
    assert types == COMMAND_TYPES == set(ANSWER_MODELS)
    assert LONG_RUNNING_COMMANDS <= COMMAND_TYPES
    assert parse_answer("remove_layer", {"ok": True}) == Ack()


def test_call_returns_typed_answers(sim_agent: AgentProcess) -> None:
    client = sim_agent.client()
    assert isinstance(client.call(GetHostInfo()), HostInfo)
    assert isinstance(client.call(GetState()), StateReport)
    ref = LayerRef(pool=PoolRef(id="c", path="/sim/c"), name="a")
    assert isinstance(client.call(CreateLayer(layer=ref, size_bytes=1 << 20)), LayerInfo)
    target = LayerRef(pool=PoolRef(id="d", path="/sim/d"), name="a")
    copied = client.call(CopyLayer(source=ref, target=target))  # long-running: waited for transparently
    assert isinstance(copied, LayerInfo) and copied.virtual_size == 1 << 20


def test_unauthorized_is_typed(sim_agent: AgentProcess) -> None:
    with pytest.raises(AgentCallError) as err:
        sim_agent.client(token="nope").call(GetHostInfo())
    assert (err.value.code, err.value.status) == (ErrorCode.UNAUTHORIZED, 401)


def test_connection_refused_is_unreachable() -> None:
    with (
        AgentClient(f"http://127.0.0.1:{free_port()}", "t", timeout=2) as client,
        pytest.raises(AgentUnreachable),
    ):
        client.health()


def test_timeout_is_unreachable_and_agent_recovers(sim_agent: AgentProcess) -> None:
    sim_agent.client().call(ConfigureSimulator(command="get_state", delay_s=1.5))
    try:
        with pytest.raises(AgentUnreachable, match="timed out"):
            sim_agent.client(timeout=0.3).call(GetState())
    finally:
        sim_agent.client().call(ConfigureSimulator(command="get_state", delay_s=0))
    assert sim_agent.client().health().ok


def test_one_client_shared_by_threads(sim_agent: AgentProcess) -> None:
    client = sim_agent.client()
    barrier = threading.Barrier(8)

    def work(n: int) -> set[str]:
        barrier.wait()
        return {client.call(GetHostInfo()).driver for _ in range(25)}

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(work, range(8)))
    assert all(result == {"simulator"} for result in results)


def test_a_command_that_declares_a_longer_answer_time_is_waited_for(sim_agent: AgentProcess) -> None:
    """stop_vm may take its own timeout_s and a grace (declared): a short client timeout does not cut it."""
    client = sim_agent.client()
    ref = LayerRef(pool=PoolRef(id="t", path="/sim/t"), name="root")
    client.call(CreateLayer(layer=ref, size_bytes=1 << 20))
    spec = VmSpec(name="slow", uuid="00000000-0000-4000-8000-000000000001", cpus=1, memory_mib=64,
                  disks=[DiskSpec(device_id=0, layer=ref)])  # fmt: skip
    client.call(StartVm(spec=spec))
    client.call(ConfigureSimulator(command="stop_vm", delay_s=0.8))
    try:
        impatient = sim_agent.client(timeout=0.3)
        assert impatient.call(StopVm(name="slow", timeout_s=1.0)).power_state == PowerState.STOPPED
    finally:
        client.call(ConfigureSimulator(command="stop_vm", delay_s=0))
