"""The simulator driver over real HTTP: layers, VMs, delays, failure injection, tasks, restarts."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pytest

from helpers.agentproc import AgentProcess
from helpers.fixtures import StartAgent
from strato.protocol.client import AgentCallError, AgentClient
from strato.protocol.messages import (
    AttachPool,
    ConfigureSimulator,
    CopyLayer,
    CreateLayer,
    DiskSpec,
    ErrorCode,
    GetHostInfo,
    GetLayerInfo,
    GetState,
    GetVm,
    GetVmStats,
    LayerRef,
    PoolRef,
    PowerState,
    RebaseLayer,
    RebootVm,
    RemoveLayer,
    StartVm,
    StopVm,
    TaskState,
    VmSpec,
)

GIB = 1 << 30
TIB = 1 << 40


def pool(name: str) -> PoolRef:
    return PoolRef(id=name, path=f"/sim/{name}")


def layer(pool_name: str, name: str) -> LayerRef:
    return LayerRef(pool=pool(pool_name), name=name)


def vm_spec(name: str, *layers: LayerRef, memory_mib: int = 512) -> VmSpec:
    disks = [DiskSpec(device_id=i, layer=ref) for i, ref in enumerate(layers)]
    return VmSpec(name=name, uuid=f"uuid-{name}", cpus=2, memory_mib=memory_mib, disks=disks)


@pytest.fixture
def client(sim_agent: AgentProcess) -> AgentClient:
    return sim_agent.client()


def test_host_info_says_simulator(client: AgentClient) -> None:
    info = client.call(GetHostInfo())
    assert info.driver == "simulator" and info.hypervisor == "Simulator"
    assert info.local_pool.capacity_bytes == TIB


def test_layers_chain_and_pool_capacity(client: AgentClient) -> None:
    p = pool("layers")
    report = client.call(AttachPool(pool=p))
    assert report.capacity_bytes == TIB and report.used_bytes == 0

    base = client.call(CreateLayer(layer=layer("layers", "base.qcow2"), size_bytes=10 * GIB))
    assert base.virtual_size == 10 * GIB and base.backing_file is None
    top = client.call(CreateLayer(layer=layer("layers", "top.qcow2"), backing=layer("layers", "base.qcow2")))
    assert top.virtual_size == 10 * GIB
    assert top.backing_file == "/sim/layers/base.qcow2"
    assert client.call(GetLayerInfo(layer=layer("layers", "top.qcow2"))) == top

    state = client.call(GetState(pools=[p]))
    assert state.pools[0].used_bytes == base.physical_size + top.physical_size
    assert state.pools[0].available_bytes == TIB - state.pools[0].used_bytes

    with pytest.raises(AgentCallError) as err:
        client.call(CreateLayer(layer=layer("layers", "top.qcow2"), size_bytes=GIB))
    assert err.value.code == ErrorCode.ALREADY_EXISTS and err.value.status == 409
    with pytest.raises(AgentCallError) as err:
        client.call(CreateLayer(layer=layer("layers", "orphan.qcow2"), backing=layer("layers", "none")))
    assert err.value.code == ErrorCode.NOT_FOUND
    with pytest.raises(AgentCallError) as err:
        client.call(RemoveLayer(layer=layer("layers", "base.qcow2")))
    assert err.value.code == ErrorCode.INVALID_STATE and "backing" in err.value.message

    client.call(RemoveLayer(layer=layer("layers", "top.qcow2")))
    client.call(RemoveLayer(layer=layer("layers", "base.qcow2")))
    client.call(RemoveLayer(layer=layer("layers", "base.qcow2")))  # missing_ok by default
    with pytest.raises(AgentCallError) as err:
        client.call(RemoveLayer(layer=layer("layers", "base.qcow2"), missing_ok=False))
    assert err.value.code == ErrorCode.NOT_FOUND
    assert client.call(GetState(pools=[p])).pools[0].used_bytes == 0


def test_vm_start_stop_reboot_stats(client: AgentClient) -> None:
    disk = layer("vms", "root.qcow2")
    client.call(CreateLayer(layer=disk, size_bytes=8 * GIB))
    running = client.call(StartVm(spec=vm_spec("web1", disk)))
    assert running.power_state == PowerState.RUNNING and running.pid and running.vnc_port
    assert client.call(GetVm(name="web1")) == running
    assert any(vm.name == "web1" for vm in client.call(GetState()).vms)

    with pytest.raises(AgentCallError) as err:
        client.call(StartVm(spec=vm_spec("web1", disk)))
    assert err.value.code == ErrorCode.INVALID_STATE
    with pytest.raises(AgentCallError) as err:
        client.call(StartVm(spec=vm_spec("web2", disk)))
    assert err.value.code == ErrorCode.INVALID_STATE and "web1" in err.value.message
    with pytest.raises(AgentCallError) as err:
        client.call(StartVm(spec=vm_spec("web3", layer("vms", "missing.qcow2"))))
    assert err.value.code == ErrorCode.NOT_FOUND
    with pytest.raises(AgentCallError) as err:
        client.call(RemoveLayer(layer=disk))
    assert err.value.code == ErrorCode.INVALID_STATE

    stats = client.call(GetVmStats(name="web1"))
    assert stats.memory_mib == 512 and len(stats.disks) == 1
    assert client.call(RebootVm(name="web1")).power_state == PowerState.RUNNING

    stopped = client.call(StopVm(name="web1"))
    assert stopped.power_state == PowerState.STOPPED and stopped.pid is None
    assert client.call(StopVm(name="web1")).power_state == PowerState.STOPPED
    assert client.call(GetVm(name="web1")).power_state == PowerState.STOPPED
    with pytest.raises(AgentCallError) as err:
        client.call(RebootVm(name="web1"))
    assert err.value.code == ErrorCode.INVALID_STATE
    assert client.call(StartVm(spec=vm_spec("web1", disk))).power_state == PowerState.RUNNING
    client.call(StopVm(name="web1", force=True))


def test_memory_capacity_is_enforced(client: AgentClient) -> None:
    with pytest.raises(AgentCallError) as err:
        client.call(StartVm(spec=vm_spec("huge", memory_mib=10 * 64 * 1024)))
    assert err.value.code == ErrorCode.INSUFFICIENT_CAPACITY and err.value.status == 507


def test_configured_delay(client: AgentClient) -> None:
    client.call(ConfigureSimulator(command="get_vm", delay_s=0.5))
    try:
        started = time.monotonic()
        with pytest.raises(AgentCallError):
            client.call(GetVm(name="nobody"))
        assert time.monotonic() - started >= 0.5
    finally:
        client.call(ConfigureSimulator(command="get_vm", delay_s=0))
    started = time.monotonic()
    with pytest.raises(AgentCallError):
        client.call(GetVm(name="nobody"))
    assert time.monotonic() - started < 0.4


def test_failure_injection_fails_next_n_calls(client: AgentClient) -> None:
    client.call(ConfigureSimulator(command="create_layer", fail_count=2, fail_message="disk on fire"))
    for n in range(2):
        with pytest.raises(AgentCallError) as err:
            client.call(CreateLayer(layer=layer("inject", f"l{n}"), size_bytes=GIB))
        assert err.value.code == ErrorCode.INJECTED_FAILURE and err.value.status == 500
        assert err.value.message == "disk on fire"
    assert client.call(CreateLayer(layer=layer("inject", "l2"), size_bytes=GIB)).virtual_size == GIB


def test_configure_rejects_unknown_command(client: AgentClient) -> None:
    with pytest.raises(AgentCallError) as err:
        client.call(ConfigureSimulator(command="fly", delay_s=1))
    assert err.value.code == ErrorCode.BAD_REQUEST and "fly" in err.value.message


def test_copy_layer_reports_progress(client: AgentClient) -> None:
    source = layer("src", "frozen.qcow2")
    client.call(CreateLayer(layer=source, size_bytes=4 * GIB))
    client.call(ConfigureSimulator(command="copy_layer", delay_s=1.0))
    try:
        seen: list[tuple[int, int]] = []
        copied = client.run_long(
            CopyLayer(source=source, target=layer("dst", "frozen.qcow2")),
            on_progress=lambda done, total: seen.append((done, total)),
            poll_interval=0.05,
        )
    finally:
        client.call(ConfigureSimulator(command="copy_layer", delay_s=0))
    assert copied.name == "frozen.qcow2" and copied.virtual_size == 4 * GIB
    assert len(seen) >= 3, seen
    assert [done for done, _ in seen] == sorted(done for done, _ in seen)
    assert seen[-1][0] == seen[-1][1] > 0
    assert client.call(GetLayerInfo(layer=layer("dst", "frozen.qcow2"))).physical_size == copied.physical_size


def test_copy_then_rebase_onto_copied_backing(client: AgentClient) -> None:
    client.call(CreateLayer(layer=layer("a", "base"), size_bytes=GIB))
    client.call(CreateLayer(layer=layer("a", "snap"), backing=layer("a", "base")))
    client.call(CopyLayer(source=layer("a", "base"), target=layer("b", "base")))
    copied = client.call(CopyLayer(source=layer("a", "snap"), target=layer("b", "snap")))
    assert copied.backing_file == "/sim/a/base"
    rebased = client.call(RebaseLayer(layer=layer("b", "snap"), backing=layer("b", "base")))
    assert rebased.backing_file == "/sim/b/base"
    client.call(RemoveLayer(layer=layer("a", "snap")))
    client.call(RemoveLayer(layer=layer("a", "base")))


def test_cancel_long_copy_leaves_nothing(client: AgentClient) -> None:
    source = layer("csrc", "big.qcow2")
    target = layer("cdst", "big.qcow2")
    client.call(CreateLayer(layer=source, size_bytes=GIB))
    client.call(ConfigureSimulator(command="copy_layer", delay_s=5.0))
    try:
        cancel = threading.Event()
        threading.Timer(0.5, cancel.set).start()
        started = time.monotonic()
        with pytest.raises(AgentCallError) as err:
            client.run_long(CopyLayer(source=source, target=target), cancel_event=cancel, poll_interval=0.05)
        assert err.value.code == ErrorCode.CANCELLED
        assert time.monotonic() - started < 3

        task_id = client.start_task(CopyLayer(source=source, target=target))
        assert client.task(task_id).state == TaskState.RUNNING
        report = client.cancel_task(task_id)
        assert report.state == TaskState.CANCELLED and report.error is not None
        assert client.task(task_id).state == TaskState.CANCELLED
    finally:
        client.call(ConfigureSimulator(command="copy_layer", delay_s=0))
    with pytest.raises(AgentCallError) as not_found:
        client.call(GetLayerInfo(layer=target))
    assert not_found.value.code == ErrorCode.NOT_FOUND


def test_failed_task_reports_typed_error(client: AgentClient) -> None:
    with pytest.raises(AgentCallError) as err:
        client.call(CopyLayer(source=layer("x", "missing"), target=layer("y", "missing")))
    assert err.value.code == ErrorCode.NOT_FOUND and err.value.status is None


def test_pool_capacity_from_config_file(agent_factory: StartAgent, tmp_path: Path) -> None:
    data_dir = tmp_path / "small"
    data_dir.mkdir()
    config = {"pool_capacity_bytes": 300_000, "pool_capacities": {"big": 5 * TIB}, "cpus": 4}
    (data_dir / "simulator-config.json").write_text(json.dumps(config))
    client = agent_factory(data_dir=data_dir).client()
    assert client.call(GetHostInfo()).cpus == 4
    assert client.call(AttachPool(pool=pool("big"))).capacity_bytes == 5 * TIB
    client.call(CreateLayer(layer=layer("tiny", "one"), size_bytes=GIB))
    with pytest.raises(AgentCallError) as err:
        client.call(CreateLayer(layer=layer("tiny", "two"), size_bytes=GIB))
    assert err.value.code == ErrorCode.INSUFFICIENT_CAPACITY and err.value.status == 507


def test_state_survives_agent_restart(agent_factory: StartAgent, tmp_path: Path) -> None:
    data_dir = tmp_path / "restart"
    agent = agent_factory(data_dir=data_dir)
    client = agent.client()
    client.call(CreateLayer(layer=layer("r", "root"), size_bytes=GIB))
    before = client.call(StartVm(spec=vm_spec("db1", layer("r", "root"))))
    client.call(ConfigureSimulator(command="get_host_info", fail_count=1))
    agent.kill()
    assert (data_dir / "simulator-state.json").exists()

    again = agent_factory(data_dir=data_dir).client()
    assert again.call(GetVm(name="db1")) == before
    assert [vm.name for vm in again.call(GetState()).vms if vm.power_state == PowerState.RUNNING] == ["db1"]
    assert again.call(GetLayerInfo(layer=layer("r", "root"))).virtual_size == GIB
    with pytest.raises(AgentCallError) as err:
        again.call(GetHostInfo())
    assert err.value.code == ErrorCode.INJECTED_FAILURE
    assert again.call(GetHostInfo()).driver == "simulator"


def test_orderly_shutdown_keeps_vms_running(agent_factory: StartAgent, tmp_path: Path) -> None:
    data_dir = tmp_path / "orderly"
    agent = agent_factory(data_dir=data_dir)
    agent.client().call(StartVm(spec=vm_spec("keep")))
    agent.stop()
    assert agent_factory(data_dir=data_dir).client().call(GetVm(name="keep")).power_state == PowerState.RUNNING
