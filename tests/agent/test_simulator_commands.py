"""The simulator's storage and device commands over real HTTP, with the same rules as the QEMU driver:
checksums and qcow2 header checks on real files behind file:// URLs, grow-only resize, hot-plug records,
CD changes, config drives, VM removal and a made-up console log."""

from __future__ import annotations

import hashlib
import struct
import threading
from pathlib import Path

import pytest

from helpers.agentproc import AgentProcess
from helpers.fixtures import StartAgent
from strato.agent.drivers.simulator import CONFIG_DRIVE_BYTES, EMPTY_QCOW2_BYTES, SimulatorConfig
from strato.protocol.client import AgentCallError, AgentClient
from strato.protocol.messages import (
    Ack,
    AttachDisk,
    BuildConfigDrive,
    ChangeCdrom,
    ConfigureSimulator,
    ConvertLayer,
    CreateLayer,
    DetachDisk,
    DiskSpec,
    ErrorCode,
    FetchImage,
    GetConsoleLog,
    GetLayerInfo,
    GetVm,
    LayerRef,
    PoolRef,
    PowerState,
    RemoveVm,
    ResizeLayer,
    StartVm,
    StopVm,
    VmSpec,
)

MIB = 1 << 20
GIB = 1 << 30


def pool(name: str) -> PoolRef:
    return PoolRef(id=name, path=f"/sim/{name}")


def layer(pool_name: str, name: str) -> LayerRef:
    return LayerRef(pool=pool(pool_name), name=name)


def fake_qcow2(path: Path, virtual_size: int, backing: str | None = None) -> Path:
    """A qcow2 v3 header (enough for the header checks), optionally naming a backing file."""
    backing_bytes = (backing or "").encode()
    header = b"QFI\xfb" + struct.pack(
        ">IQIIQIIQQIIQQQQI",
        3,  # version
        112 if backing else 0,  # backing_file_offset
        len(backing_bytes),  # backing_file_size
        16,  # cluster_bits
        virtual_size,
        0,  # crypt_method
        0,  # l1_size
        0x30000,  # l1_table_offset
        0x10000,  # refcount_table_offset
        1,  # refcount_table_clusters
        0,  # nb_snapshots
        0,  # snapshots_offset
        0,  # incompatible_features
        0,  # compatible_features
        0,  # autoclear_features
        4,  # refcount_order
    )
    header += struct.pack(">I", 104)  # header_length
    path.write_bytes(header.ljust(112, b"\0") + backing_bytes + b"\0" * 4096)
    return path


def expect(code: ErrorCode, client: AgentClient, command: object) -> AgentCallError:
    with pytest.raises(AgentCallError) as err:
        client.call(command)  # type: ignore[call-overload]
    assert err.value.code == code, err.value.message
    return err.value


@pytest.fixture
def client(sim_agent: AgentProcess) -> AgentClient:
    return sim_agent.client()


def test_fetch_file_urls_checked_like_the_real_driver(client: AgentClient, tmp_path: Path) -> None:
    image = fake_qcow2(tmp_path / "image.qcow2", 3 * GIB)
    data = image.read_bytes()
    info = client.call(
        FetchImage(url=image.as_uri(), target=layer("f1", "tpl.qcow2"), format="qcow2",
                   checksum="{sha256}" + hashlib.sha256(data).hexdigest())
    )  # fmt: skip
    assert (info.format, info.virtual_size, info.physical_size, info.backing_file) == (
        "qcow2",
        3 * GIB,
        len(data),
        None,
    )
    assert client.call(GetLayerInfo(layer=layer("f1", "tpl.qcow2"))) == info
    client.call(FetchImage(url=image.as_uri(), target=layer("f1", "md5.qcow2"), format="qcow2",
                           checksum=hashlib.md5(data).hexdigest()))  # fmt: skip

    wrong = "{sha1}" + "0" * 40
    err = expect(
        ErrorCode.BAD_REQUEST,
        client,
        FetchImage(url=image.as_uri(), target=layer("f1", "w.qcow2"), format="qcow2", checksum=wrong),
    )
    assert "0" * 40 in err.message and hashlib.sha1(data).hexdigest() in err.message
    expect(ErrorCode.NOT_FOUND, client, GetLayerInfo(layer=layer("f1", "w.qcow2")))
    expect(
        ErrorCode.BAD_REQUEST,
        client,
        FetchImage(url=image.as_uri(), target=layer("f1", "w.qcow2"), format="qcow2", checksum="xyz"),
    )

    evil = fake_qcow2(tmp_path / "evil.qcow2", GIB, backing="/etc/passwd")
    err = expect(
        ErrorCode.BAD_REQUEST, client, FetchImage(url=evil.as_uri(), target=layer("f1", "e.qcow2"), format="qcow2")
    )
    assert "backing file" in err.message and "/etc/passwd" in err.message

    raw = tmp_path / "disk.raw"
    raw.write_bytes(b"\1" * MIB)
    expect(ErrorCode.BAD_REQUEST, client, FetchImage(url=raw.as_uri(), target=layer("f1", "r.qcow2"), format="qcow2"))
    converted = client.call(FetchImage(url=raw.as_uri(), target=layer("f1", "r.qcow2"), format="raw"))
    assert (converted.format, converted.virtual_size) == ("qcow2", MIB)
    assert converted.physical_size == MIB + EMPTY_QCOW2_BYTES
    iso = client.call(FetchImage(url=raw.as_uri(), target=layer("f1", "cd.iso"), format="iso"))
    assert (iso.format, iso.virtual_size, iso.physical_size) == ("iso", MIB, MIB)

    expect(
        ErrorCode.NOT_FOUND,
        client,
        FetchImage(url=(tmp_path / "missing").as_uri(), target=layer("f1", "m.qcow2"), format="qcow2"),
    )
    expect(
        ErrorCode.ALREADY_EXISTS,
        client,
        FetchImage(url=image.as_uri(), target=layer("f1", "tpl.qcow2"), format="qcow2"),
    )
    expect(
        ErrorCode.BAD_REQUEST,
        client,
        FetchImage(url="gopher://x/y", target=layer("f1", "g.qcow2"), format="qcow2"),
    )


def test_fetch_http_is_recorded_not_downloaded(client: AgentClient) -> None:
    """Scale tests use made-up URLs: nothing is fetched; sizes come from the simulator's config."""
    defaults = SimulatorConfig()
    info = client.call(
        FetchImage(url="http://images.invalid/centos.qcow2", target=layer("f2", "centos.qcow2"), format="qcow2",
                   checksum="a" * 64)
    )  # fmt: skip
    assert (info.virtual_size, info.physical_size) == (
        defaults.http_image_virtual_bytes,
        defaults.http_image_physical_bytes,
    )
    iso = client.call(FetchImage(url="https://images.invalid/x.iso", target=layer("f2", "x.iso"), format="iso"))
    assert iso.format == "iso" and iso.virtual_size == iso.physical_size
    expect(
        ErrorCode.BAD_REQUEST,
        client,
        FetchImage(url="http://images.invalid/y.qcow2", target=layer("f2", "y.qcow2"), format="qcow2",
                   checksum="{md5}abc"),
    )  # fmt: skip


def test_long_commands_progress_cancel_and_injected_failure(agent_factory: StartAgent) -> None:
    agent = agent_factory()
    client = agent.client()
    client.call(ConfigureSimulator(command="fetch_image", delay_s=0.6))
    seen: list[tuple[int, int]] = []
    client.run_long(
        FetchImage(url="http://images.invalid/a.qcow2", target=layer("p", "a.qcow2"), format="qcow2"),
        on_progress=lambda d, t: seen.append((d, t)),
        poll_interval=0.02,
    )
    assert len(seen) >= 3 and seen[-1][0] == seen[-1][1] == SimulatorConfig().http_image_physical_bytes

    stop = threading.Event()
    threading.Timer(0.2, stop.set).start()
    with pytest.raises(AgentCallError) as err:
        client.run_long(
            FetchImage(url="http://images.invalid/b.qcow2", target=layer("p", "b.qcow2"), format="qcow2"),
            cancel_event=stop,
            poll_interval=0.02,
        )
    assert err.value.code == ErrorCode.CANCELLED
    expect(ErrorCode.NOT_FOUND, client, GetLayerInfo(layer=layer("p", "b.qcow2")))

    client.call(ConfigureSimulator(command="convert_layer", delay_s=0.6))
    stop = threading.Event()
    threading.Timer(0.2, stop.set).start()
    with pytest.raises(AgentCallError) as err:
        client.run_long(
            ConvertLayer(source=layer("p", "a.qcow2"), target=layer("p", "flat.qcow2")),
            cancel_event=stop,
            poll_interval=0.02,
        )
    assert err.value.code == ErrorCode.CANCELLED
    expect(ErrorCode.NOT_FOUND, client, GetLayerInfo(layer=layer("p", "flat.qcow2")))

    client.call(ConfigureSimulator(command="fetch_image", delay_s=0, fail_count=1, fail_message="disk on fire"))
    err = expect(
        ErrorCode.INJECTED_FAILURE,
        client,
        FetchImage(url="http://images.invalid/c.qcow2", target=layer("p", "c.qcow2"), format="qcow2"),
    )
    assert err.message == "disk on fire"
    client.call(FetchImage(url="http://images.invalid/c.qcow2", target=layer("p", "c.qcow2"), format="qcow2"))


def test_convert_flattens_and_resize_grows(client: AgentClient) -> None:
    base, top = layer("c1", "base.qcow2"), layer("c1", "top.qcow2")
    client.call(CreateLayer(layer=base, size_bytes=GIB))
    client.call(CreateLayer(layer=top, backing=base))
    flat = client.call(ConvertLayer(source=top, target=layer("c2", "flat.qcow2")))
    assert flat.backing_file is None and flat.virtual_size == GIB and flat.format == "qcow2"
    expect(ErrorCode.ALREADY_EXISTS, client, ConvertLayer(source=top, target=layer("c2", "flat.qcow2")))
    expect(ErrorCode.NOT_FOUND, client, ConvertLayer(source=layer("c1", "no"), target=layer("c2", "x")))

    assert client.call(ResizeLayer(layer=top, size_bytes=2 * GIB)).virtual_size == 2 * GIB
    err = expect(ErrorCode.BAD_REQUEST, client, ResizeLayer(layer=top, size_bytes=GIB))
    assert "shrink" in err.message
    expect(ErrorCode.BAD_REQUEST, client, ResizeLayer(layer=top, size_bytes=2 * GIB + 1))

    data = layer("c1", "data.qcow2")
    client.call(CreateLayer(layer=data, size_bytes=GIB))
    disks = [DiskSpec(device_id=0, layer=top), DiskSpec(device_id=1, layer=data)]
    client.call(StartVm(spec=VmSpec(name="rs-vm", uuid="u-rs", cpus=1, memory_mib=256, disks=disks)))
    # In use: only through the VM's disk (as QEMU's image locking makes it on a real host).
    expect(ErrorCode.INVALID_STATE, client, ResizeLayer(layer=data, size_bytes=2 * GIB))
    expect(ErrorCode.BAD_REQUEST, client, ResizeLayer(layer=data, size_bytes=2 * GIB, vm_name="rs-vm", device_id=0))
    live = client.call(ResizeLayer(layer=data, size_bytes=2 * GIB, vm_name="rs-vm", device_id=1))
    assert live.virtual_size == 2 * GIB
    client.call(StopVm(name="rs-vm"))
    client.call(RemoveVm(name="rs-vm"))


def test_devices_config_drive_console_and_remove(agent_factory: StartAgent) -> None:
    agent = agent_factory()
    client = agent.client()
    root, data = layer("d", "root.qcow2"), layer("d", "data.qcow2")
    client.call(CreateLayer(layer=root, size_bytes=GIB))
    client.call(CreateLayer(layer=data, size_bytes=GIB))
    cfg = client.call(
        BuildConfigDrive(target=layer("d", "cfg/vm.iso"), hostname="web-1", instance_id="i-1", user_data="#!/bin/sh")
    )
    assert cfg.format == "iso" and cfg.virtual_size == cfg.physical_size == CONFIG_DRIVE_BYTES + 9
    again = client.call(BuildConfigDrive(target=layer("d", "cfg/vm.iso"), hostname="web-1", instance_id="i-1"))
    assert again.physical_size == CONFIG_DRIVE_BYTES  # regenerated in place
    expect(ErrorCode.BAD_REQUEST, client, BuildConfigDrive(target=layer("d", "c2.iso"), hostname=" ", instance_id="i"))

    hot = DiskSpec(device_id=1, layer=data)
    expect(ErrorCode.NOT_FOUND, client, AttachDisk(vm_name="vm", disk=hot))
    spec = VmSpec(
        name="vm",
        uuid="u-vm",
        cpus=1,
        memory_mib=256,
        disks=[DiskSpec(device_id=0, layer=root)],
        config_drive={"path": "/sim/d/cfg/vm.iso"},
        guest_commands="poweroff",
    )
    client.call(StartVm(spec=spec))
    console = client.call(GetConsoleLog(name="vm")).text
    assert "STRATO-SIM-BOOTED vm" in console and "STRATO-CONFIGDRIVE: /sim/d/cfg/vm.iso" in console
    assert client.call(GetConsoleLog(name="vm", tail_bytes=10)).text == console[-10:]

    assert client.call(AttachDisk(vm_name="vm", disk=hot)).power_state == PowerState.RUNNING
    expect(ErrorCode.ALREADY_EXISTS, client, AttachDisk(vm_name="vm", disk=hot))
    expect(ErrorCode.BAD_REQUEST, client, AttachDisk(vm_name="vm", disk=DiskSpec(device_id=2, layer=data, bus="ide")))
    expect(ErrorCode.NOT_FOUND, client, AttachDisk(vm_name="vm", disk=DiskSpec(device_id=3, layer=layer("d", "x"))))
    # The attached layer is protected like a disk given at start.
    client.call(StartVm(spec=VmSpec(name="other", uuid="u-o", cpus=1, memory_mib=256)))
    expect(ErrorCode.INVALID_STATE, client, AttachDisk(vm_name="other", disk=DiskSpec(device_id=1, layer=data)))
    client.call(ChangeCdrom(vm_name="vm", path="/sim/isos/x.iso"))
    client.call(ChangeCdrom(vm_name="vm", path=None))
    expect(ErrorCode.BAD_REQUEST, client, ChangeCdrom(vm_name="vm", path="x.iso"))
    expect(ErrorCode.INVALID_STATE, client, RemoveVm(name="vm"))

    # The state survives an agent restart.
    agent.stop()
    agent = agent_factory(data_dir=agent.data_dir)
    client = agent.client()
    client.call(DetachDisk(vm_name="vm", device_id=1))
    expect(ErrorCode.NOT_FOUND, client, DetachDisk(vm_name="vm", device_id=1))
    client.call(StopVm(name="vm"))
    for command in (AttachDisk(vm_name="vm", disk=hot), DetachDisk(vm_name="vm", device_id=0),
                    ChangeCdrom(vm_name="vm", path=None)):  # fmt: skip
        expect(ErrorCode.INVALID_STATE, client, command)
    assert "STRATO-SIM-BOOTED" not in client.call(GetConsoleLog(name="vm")).text
    assert client.call(RemoveVm(name="vm")) == Ack()
    assert client.call(RemoveVm(name="vm")) == Ack()  # already gone: fine for expunge retries
    expect(ErrorCode.NOT_FOUND, client, GetVm(name="vm"))
    expect(ErrorCode.NOT_FOUND, client, GetConsoleLog(name="vm"))
