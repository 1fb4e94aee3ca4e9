"""The QEMU driver's storage and device commands against real qemu-img and QEMU (TCG).

fetch_image (file:// and a loopback HTTP server: checksums, raw conversion, refused images, broken and
cancelled downloads), convert_layer, resize_layer offline and live, disk hot-plug, CD change, config
drive, remove_vm, console log; one boot of the tiny guest with a config drive, a user CD, a data disk and
guest commands; and the long-running commands through a real agent process over HTTP.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import shutil
import subprocess
import threading
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from drvlib import layer, vm_spec
from imageserver import ImageServer

from helpers.agentproc import start_agent
from helpers.console import guest_timer
from helpers.faultlib import kill_qemus_under
from strato.agent.drivers.base import DriverError
from strato.agent.drivers.qemu import QemuDriver
from strato.agent.drivers.qemu.process import RunDir, live_pid
from strato.protocol.client import AgentCallError, AgentClient
from strato.protocol.messages import (
    AttachDisk,
    BuildConfigDrive,
    CdromSpec,
    ConvertLayer,
    CreateLayer,
    DetachDisk,
    DiskSpec,
    ErrorCode,
    FetchImage,
    GetConsoleLog,
    GetVmStats,
    LayerRef,
    PoolRef,
    PowerState,
    RemoveVm,
    StartVm,
    StopVm,
    TaskState,
)

pytestmark = [
    pytest.mark.qemu,
    pytest.mark.anyio,
    pytest.mark.skipif(
        shutil.which("qemu-system-x86_64") is None or shutil.which("qemu-img") is None,
        reason="needs qemu-system-x86_64 and qemu-img",
    ),
]

MiB = 1024 * 1024
KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGl0cyBub3QgYSByZWFsIGtleSBidXQgb2sgZm9yIHRlc3Q= alice@example"


@pytest.fixture
async def driver(data_dir: Path) -> AsyncIterator[QemuDriver]:
    """The conftest's driver with a short detach timeout, for the tests of a guest that ignores a detach."""
    drv = QemuDriver(data_dir, accel="tcg", detach_timeout_s=2.0)
    await drv.start()
    try:
        yield drv
    finally:
        await drv.close()


def pool_files(drv: QemuDriver) -> list[str]:
    """Every file in the local pool, hidden temporaries included."""
    root = Path(drv.local_pool.path)
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


def qemu_io(path: Path, command: str, fmt: str = "qcow2") -> str:
    out = subprocess.run(["qemu-io", "-f", fmt, "-c", command, str(path)], check=True, capture_output=True, text=True)
    assert "fail" not in out.stdout.lower() and "error" not in out.stdout.lower(), out.stdout
    return out.stdout


def img_info(path: Path) -> dict[str, object]:
    out = subprocess.run(
        ["qemu-img", "info", "-U", "--output=json", str(path)], check=True, capture_output=True, text=True
    )
    data: dict[str, object] = json.loads(out.stdout)
    return data


def make_raw(path: Path, size: int) -> Path:
    """A raw image with a pattern at 1 MiB (and holes elsewhere)."""
    with open(path, "wb") as f:
        f.truncate(size)
        f.seek(MiB)
        f.write(b"\xab" * MiB)
    return path


async def expect_error(code: ErrorCode, aw: object) -> DriverError:
    with pytest.raises(DriverError) as info:
        await aw  # type: ignore[misc]
    assert info.value.code == code, info.value.message
    return info.value


def no_progress(done: int, total: int) -> None:
    pass


async def query_block(driver: QemuDriver, run: Path) -> dict[str, dict[str, object]]:
    """qdev id (short) -> the `inserted` medium of each block device of a VM."""
    blocks = await driver.monitor(run.name).execute("query-block")  # the VM's one QMP connection
    result: dict[str, dict[str, object]] = {}
    for block in blocks:
        qdev = str(block.get("qdev", ""))
        name = qdev.removeprefix("/machine/peripheral/").removesuffix("/virtio-backend")
        result[name] = block.get("inserted") or {}
    return result


def disks_seen(client: AgentClient) -> set[int]:
    """Device ids of the disks QEMU has (its block stats), asked of the agent that holds the monitor."""
    return {disk.device_id for disk in client.call(GetVmStats(name="vm1")).disks}


# --- fetch_image ---------------------------------------------------------------------------------


async def test_fetch_file_url_checksums(driver: QemuDriver, data_dir: Path) -> None:
    source = data_dir / "import" / "image.qcow2"
    source.parent.mkdir()
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(source), "64M"], check=True)
    qemu_io(source, "write -P 0x5a 0 1M")
    data = source.read_bytes()
    url = source.as_uri()

    calls: list[tuple[int, int]] = []
    sha256 = hashlib.sha256(data).hexdigest()
    info = await driver.fetch_image(
        url, layer(driver, "t/a.qcow2"), "qcow2", "{sha256}" + sha256.upper(), lambda d, t: calls.append((d, t))
    )
    assert (info.name, info.format, info.virtual_size, info.backing_file) == ("t/a.qcow2", "qcow2", 64 * MiB, None)
    assert calls[-1] == (len(data), len(data))
    fetched = Path(driver.local_pool.path) / "t/a.qcow2"
    qemu_io(fetched, "read -P 0x5a 0 1M")

    checksums = [hashlib.md5(data).hexdigest(), "{sha1}" + hashlib.sha1(data).hexdigest(),
                 hashlib.sha512(data).hexdigest(), None, ""]  # fmt: skip
    for index, checksum in enumerate(checksums):
        await driver.fetch_image(url, layer(driver, f"c{index}.qcow2"), "qcow2", checksum, no_progress)

    wrong = hashlib.sha256(b"something else").hexdigest()
    err = await expect_error(
        ErrorCode.BAD_REQUEST, driver.fetch_image(url, layer(driver, "bad.qcow2"), "qcow2", wrong, no_progress)
    )
    assert wrong in err.message and sha256 in err.message and "sha256" in err.message
    for malformed in ("abc", "{crc32}00ff00ff", "{md5}" + sha256, "zz" * 16):
        await expect_error(
            ErrorCode.BAD_REQUEST,
            driver.fetch_image(url, layer(driver, "bad.qcow2"), "qcow2", malformed, no_progress),
        )
    await expect_error(
        ErrorCode.ALREADY_EXISTS, driver.fetch_image(url, layer(driver, "t/a.qcow2"), "qcow2", None, no_progress)
    )
    await expect_error(
        ErrorCode.NOT_FOUND,
        driver.fetch_image(url + ".missing", layer(driver, "m.qcow2"), "qcow2", None, no_progress),
    )
    await expect_error(
        ErrorCode.BAD_REQUEST,
        driver.fetch_image("ftp://example.com/x.qcow2", layer(driver, "m.qcow2"), "qcow2", None, no_progress),
    )
    assert "bad.qcow2" not in pool_files(driver)
    assert not [f for f in pool_files(driver) if f.split("/")[-1].startswith(".")]


async def test_fetch_refuses_backing_file_and_wrong_format(driver: QemuDriver, data_dir: Path) -> None:
    base = data_dir / "base.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(base), "16M"], check=True)
    evil = data_dir / "evil.qcow2"
    subprocess.run(
        ["qemu-img", "create", "-q", "-f", "qcow2", "-b", "/etc/passwd", "-F", "raw", str(evil), "16M"],
        check=True,
    )
    err = await expect_error(
        ErrorCode.BAD_REQUEST,
        driver.fetch_image(evil.as_uri(), layer(driver, "evil.qcow2"), "qcow2", None, no_progress),
    )
    assert "backing file" in err.message and "/etc/passwd" in err.message
    raw = make_raw(data_dir / "disk.raw", 4 * MiB)
    err = await expect_error(
        ErrorCode.BAD_REQUEST,
        driver.fetch_image(raw.as_uri(), layer(driver, "raw.qcow2"), "qcow2", None, no_progress),
    )
    assert "not a qcow2" in err.message
    assert pool_files(driver) == []

    # An ISO is kept as it is.
    iso = data_dir / "cd.iso"
    iso.write_bytes(b"\x01" * 300_000)
    info = await driver.fetch_image(iso.as_uri(), layer(driver, "cd.iso"), "iso", None, no_progress)
    assert (info.format, info.virtual_size, info.physical_size) == ("iso", 300_000, 300_000)
    assert (Path(driver.local_pool.path) / "cd.iso").read_bytes() == iso.read_bytes()


async def test_fetch_http_raw_converted_and_failures_leave_nothing(
    driver: QemuDriver, image_server: ImageServer
) -> None:
    raw = make_raw(image_server.root / "disk.raw", 8 * MiB)
    data = raw.read_bytes()
    calls: list[tuple[int, int]] = []
    info = await driver.fetch_image(
        image_server.url("disk.raw"),
        layer(driver, "disk.qcow2"),
        "raw",
        hashlib.sha1(data).hexdigest(),
        lambda d, t: calls.append((d, t)),
    )
    assert (info.format, info.virtual_size, info.backing_file) == ("qcow2", 8 * MiB, None)
    assert info.physical_size < 4 * MiB  # the holes stayed holes
    assert calls[0] == (0, len(data)) and calls[-1] == (len(data), len(data))
    converted = Path(driver.local_pool.path) / "disk.qcow2"
    assert img_info(converted)["format"] == "qcow2"
    qemu_io(converted, f"read -P 0xab {MiB} {MiB}")
    qemu_io(converted, f"read -P 0 0 {MiB}")

    wrong = "{md5}" + "0" * 32
    err = await expect_error(
        ErrorCode.BAD_REQUEST,
        driver.fetch_image(image_server.url("disk.raw"), layer(driver, "w.qcow2"), "raw", wrong, no_progress),
    )
    assert hashlib.md5(data).hexdigest() in err.message and "0" * 32 in err.message

    err = await expect_error(
        ErrorCode.INTERNAL,
        driver.fetch_image(image_server.url("disk.raw", "broken"), layer(driver, "b.qcow2"), "raw", None, no_progress),
    )
    assert "disk.raw" in err.message
    await expect_error(
        ErrorCode.NOT_FOUND,
        driver.fetch_image(image_server.url("nope.raw"), layer(driver, "n.qcow2"), "raw", None, no_progress),
    )
    assert pool_files(driver) == ["disk.qcow2"]


# --- convert_layer and resize_layer ---------------------------------------------------------------


async def test_convert_flattens_a_chain_into_another_pool(driver: QemuDriver, data_dir: Path) -> None:
    base = layer(driver, "base.qcow2")
    await driver.create_layer(base, 64 * MiB, None)
    top = layer(driver, "top.qcow2")
    await driver.create_layer(top, None, base)
    pool = Path(driver.local_pool.path)
    qemu_io(pool / "base.qcow2", "write -P 0x11 0 2M")
    qemu_io(pool / "top.qcow2", f"write -P 0x22 {MiB} 2M")

    images = PoolRef(id="images", path=str(data_dir / "images"))
    target = LayerRef(pool=images, name="flat.qcow2")
    calls: list[tuple[int, int]] = []
    info = await driver.convert_layer(top, target, lambda d, t: calls.append((d, t)))
    assert (info.format, info.virtual_size, info.backing_file) == ("qcow2", 64 * MiB, None)
    assert calls[-1] == (64 * MiB, 64 * MiB)
    flat = data_dir / "images" / "flat.qcow2"
    assert "backing-filename" not in img_info(flat)
    qemu_io(flat, f"read -P 0x11 0 {MiB}")  # from the base
    qemu_io(flat, f"read -P 0x22 {MiB} 2M")  # from the top
    assert sorted(p.name for p in (data_dir / "images").iterdir()) == ["flat.qcow2"]

    await expect_error(ErrorCode.ALREADY_EXISTS, driver.convert_layer(top, target, no_progress))
    await expect_error(
        ErrorCode.NOT_FOUND, driver.convert_layer(layer(driver, "nope.qcow2"), layer(driver, "x"), no_progress)
    )


async def test_resize_offline_and_live(driver: QemuDriver, data_dir: Path) -> None:
    data = layer(driver, "data.qcow2")
    await driver.create_layer(data, 16 * MiB, None)
    grown = await driver.resize_layer(data, 32 * MiB, None, None)
    assert grown.virtual_size == 32 * MiB
    assert img_info(Path(driver.local_pool.path) / "data.qcow2")["virtual-size"] == 32 * MiB
    err = await expect_error(ErrorCode.BAD_REQUEST, driver.resize_layer(data, 16 * MiB, None, None))
    assert "shrink" in err.message
    assert (await driver.resize_layer(data, 32 * MiB, None, None)).virtual_size == 32 * MiB
    await expect_error(ErrorCode.NOT_FOUND, driver.resize_layer(layer(driver, "no.qcow2"), MiB, None, None))

    root = layer(driver, "root.qcow2")
    await driver.create_layer(root, 16 * MiB, None)
    await driver.start_vm(vm_spec("vm1", [DiskSpec(device_id=0, layer=root), DiskSpec(device_id=1, layer=data)]))
    run = data_dir / "vms" / "vm1"
    # Offline resize of a layer a running VM writes is refused by QEMU's image lock.
    await expect_error(ErrorCode.INVALID_STATE, driver.resize_layer(data, 48 * MiB, None, None))
    await expect_error(ErrorCode.BAD_REQUEST, driver.resize_layer(root, 48 * MiB, "vm1", 1))
    live = await driver.resize_layer(data, 48 * MiB, "vm1", 1)
    assert live.virtual_size == 48 * MiB
    image = (await query_block(driver, run))["disk1"]["image"]
    assert isinstance(image, dict) and image["virtual-size"] == 48 * MiB
    await driver.stop_vm("vm1", force=True, timeout_s=1)
    # A VM that is not running: offline.
    assert (await driver.resize_layer(data, 64 * MiB, "vm1", 1)).virtual_size == 64 * MiB


# --- devices of a running VM (no guest OS) ---------------------------------------------------------


async def test_hotplug_detach_cdrom_and_remove_vm(driver: QemuDriver, data_dir: Path) -> None:
    root = layer(driver, "root.qcow2")
    await driver.create_layer(root, 16 * MiB, None)
    for name in ("a.qcow2", "b.qcow2"):
        await driver.create_layer(layer(driver, name), 8 * MiB, None)
    iso = data_dir / "cd.iso"
    iso.write_bytes(b"\0" * MiB)
    disk_a = DiskSpec(device_id=1, layer=layer(driver, "a.qcow2"), serial="data-a")
    disk_b = DiskSpec(device_id=2, layer=layer(driver, "b.qcow2"), bus="scsi")

    await expect_error(ErrorCode.NOT_FOUND, driver.attach_disk("vm1", disk_a))
    spec = vm_spec("vm1", [DiskSpec(device_id=0, layer=root)], cdrom=CdromSpec(path=str(iso)))
    await driver.start_vm(spec)
    run = data_dir / "vms" / "vm1"

    report = await driver.attach_disk("vm1", disk_a)
    assert report.power_state == PowerState.RUNNING
    await driver.attach_disk("vm1", disk_b)
    blocks = await query_block(driver, run)
    assert blocks["disk1"]["node-name"] == "disk1-fmt" and blocks["disk2"]["node-name"] == "disk2-fmt"
    assert str(blocks["disk1"]["file"]).endswith("/a.qcow2")
    persisted = RunDir(run).read_spec()
    assert persisted is not None and [d.device_id for d in persisted.disks] == [0, 1, 2]
    await expect_error(ErrorCode.ALREADY_EXISTS, driver.attach_disk("vm1", disk_a))
    await expect_error(
        ErrorCode.BAD_REQUEST, driver.attach_disk("vm1", disk_a.model_copy(update={"device_id": 3, "bus": "ide"}))
    )
    # The layer is open in QEMU now: protected from removal.
    await expect_error(ErrorCode.INVALID_STATE, driver.remove_layer(disk_a.layer, missing_ok=False))

    # SCSI: unplugged at once. Virtio on PCI: needs the guest's ACPI cooperation, and there is no OS.
    await driver.detach_disk("vm1", 2)
    assert "disk2" not in await query_block(driver, run)
    started = time.monotonic()
    err = await expect_error(ErrorCode.INVALID_STATE, driver.detach_disk("vm1", 1))
    assert 1.9 < time.monotonic() - started < 10
    assert "did not release disk 1" in err.message and "stays attached" in err.message
    assert "disk1" in await query_block(driver, run)
    persisted = RunDir(run).read_spec()
    assert persisted is not None and [d.device_id for d in persisted.disks] == [0, 1]
    await expect_error(ErrorCode.NOT_FOUND, driver.detach_disk("vm1", 7))
    # The unplug request stays pending in QEMU; a reset completes it, and detach_disk then tidies up.
    await driver.reboot_vm("vm1")
    await driver.detach_disk("vm1", 1)
    assert "disk1" not in await query_block(driver, run)
    persisted = RunDir(run).read_spec()
    assert persisted is not None and [d.device_id for d in persisted.disks] == [0]
    await driver.attach_disk("vm1", disk_a)  # same node names and id again

    # The user CD (started with the ISO): eject, insert, eject.
    assert (await query_block(driver, run))["cdrom0"]["file"] == str(iso)
    await driver.change_cdrom("vm1", None)
    assert (await query_block(driver, run))["cdrom0"] == {}
    await driver.change_cdrom("vm1", str(iso))
    assert (await query_block(driver, run))["cdrom0"]["file"] == str(iso)
    persisted = RunDir(run).read_spec()
    assert persisted is not None and persisted.cdrom == CdromSpec(path=str(iso))
    await driver.change_cdrom("vm1", None)
    assert (await query_block(driver, run))["cdrom0"] == {}
    await expect_error(ErrorCode.NOT_FOUND, driver.change_cdrom("vm1", str(data_dir / "none.iso")))
    await expect_error(ErrorCode.BAD_REQUEST, driver.change_cdrom("vm1", "relative.iso"))

    await expect_error(ErrorCode.INVALID_STATE, driver.remove_vm("vm1"))
    assert isinstance(await driver.console_log("vm1", None), str)
    await driver.stop_vm("vm1", force=True, timeout_s=1)
    for call in (
        driver.attach_disk("vm1", disk_b),
        driver.detach_disk("vm1", 1),
        driver.change_cdrom("vm1", None),
    ):
        await expect_error(ErrorCode.INVALID_STATE, call)
    # A restart knows the disk attached while it ran; without an ISO there is still an empty CD drive.
    restarted = RunDir(run).read_spec()
    assert restarted is not None
    await driver.start_vm(restarted.model_copy(update={"cdrom": None}))
    assert "disk1" in await query_block(driver, run)
    assert (await query_block(driver, run))["cdrom0"] == {}
    await driver.change_cdrom("vm1", str(iso))
    assert (await query_block(driver, run))["cdrom0"]["file"] == str(iso)
    await driver.stop_vm("vm1", force=True, timeout_s=1)

    await driver.remove_vm("vm1")
    assert not run.exists()
    await driver.remove_vm("vm1")  # already gone: still fine
    await expect_error(ErrorCode.NOT_FOUND, driver.console_log("vm1", None))


# --- the tiny guest: config drive, user CD, data disk, guest commands, hot-plug with an OS -----------


async def test_tiny_guest_reads_config_drive_and_runs_guest_commands(data_dir: Path, tiny_image: Path) -> None:
    """Through a real agent over HTTP. One TCG boot (~10 s)."""
    from strato.image.configdrive import build_config_drive
    from strato.image.integrity import verify_image

    agent = start_agent(data_dir / "agent", driver="qemu", accel="tcg")
    try:
        client = agent.client(timeout=60)
        pool = PoolRef(id="local", path=str(data_dir / "agent" / "pools" / "local"))
        images = PoolRef(id="images", path=str(tiny_image.parent))
        ref = lambda name: LayerRef(pool=pool, name=name)  # noqa: E731
        client.call(ConvertLayer(source=LayerRef(pool=images, name=tiny_image.name), target=ref("tiny.qcow2")))
        client.call(CreateLayer(layer=ref("root.qcow2"), backing=ref("tiny.qcow2")))
        client.call(CreateLayer(layer=ref("data.qcow2"), size_bytes=16 * MiB))
        client.call(CreateLayer(layer=ref("hot.qcow2"), size_bytes=8 * MiB))
        cfg = client.call(
            BuildConfigDrive(target=ref("cfg/vm1.iso"), hostname="web-7", instance_id="i-7", public_keys=[KEY])
        )
        assert cfg.format == "iso" and cfg.virtual_size == cfg.physical_size > 0
        user_iso = build_config_drive(data_dir / "user.iso", hostname="not-me", user_data=None, public_keys=[])
        spec = vm_spec(
            "vm1",
            [DiskSpec(device_id=0, layer=ref("root.qcow2")), DiskSpec(device_id=1, layer=ref("data.qcow2"))],
            memory_mib=128,
            cdrom={"path": str(user_iso)},
            config_drive={"path": f"{pool.path}/cfg/vm1.iso"},
            guest_commands="integrity-write:vdb:64,integrity-verify:vdb",
        )
        client.call(StartVm(spec=spec))

        over = guest_timer(lambda: live_pid(RunDir(data_dir / "agent" / "vms" / "vm1")), 90)
        text = ""
        while "STRATO-READY" not in text:
            assert not over(), text[-3000:]
            await asyncio.sleep(0.5)
            text = client.call(GetConsoleLog(name="vm1")).text
        lines = text.splitlines()
        assert "STRATO-HOSTNAME: web-7" in lines
        assert any(line.startswith("STRATO-SSHKEY: MD5:") and line.endswith("alice@example") for line in lines)
        disks = next(line for line in lines if line.startswith("STRATO-DISKS:")).split()[1:]
        assert "vdb:16777216" in disks
        assert {d.split(":")[0] for d in disks} >= {"sr0", "sr1", "vda", "vdb"}  # both CDs seen
        assert "STRATO-INTEGRITY OK 64 blocks" in lines
        assert "STRATO-RUN-END integrity-verify:vdb rc=0" in lines
        tail = client.call(GetConsoleLog(name="vm1", tail_bytes=100)).text
        assert 0 < len(tail.encode()) <= 100
        assert tail in client.call(GetConsoleLog(name="vm1", tail_bytes=None)).text  # the log only grows

        # Hot-plug into the booted guest; with an OS, the guest releases a PCI disk on detach.
        run = data_dir / "agent" / "vms" / "vm1"
        client.call(AttachDisk(vm_name="vm1", disk=DiskSpec(device_id=2, layer=ref("hot.qcow2"))))
        assert 2 in disks_seen(client)
        await asyncio.sleep(2)  # let the guest bind the new device before asking it to let go
        client.call(DetachDisk(vm_name="vm1", device_id=2))
        assert 2 not in disks_seen(client)
        persisted = RunDir(run).read_spec()
        assert persisted is not None and [d.device_id for d in persisted.disks] == [0, 1]

        client.call(StopVm(name="vm1", force=True))
        report = verify_image(Path(pool.path) / "data.qcow2")
        assert report.ok and len(report.generations) == 64, report.summary()
        client.call(RemoveVm(name="vm1"))
        client.call(RemoveVm(name="vm1"))
    finally:
        agent.stop()
        kill_qemus_under(data_dir)


# --- long tasks over HTTP: progress and cancel -------------------------------------------------------


async def test_long_tasks_over_http_progress_and_cancel(data_dir: Path, image_server: ImageServer) -> None:
    agent = start_agent(data_dir / "agent", driver="qemu", accel="tcg")
    try:
        client = agent.client(timeout=30)
        pool = PoolRef(id="local", path=str(data_dir / "agent" / "pools" / "local"))
        ref = lambda name: LayerRef(pool=pool, name=name)  # noqa: E731
        raw = make_raw(image_server.root / "disk.raw", 4 * MiB)
        digest = hashlib.sha256(raw.read_bytes()).hexdigest()

        seen: list[tuple[int, int]] = []
        info = client.run_long(
            FetchImage(url=image_server.url("disk.raw", "slow"), target=ref("a.qcow2"), format="raw",
                       checksum=digest),
            on_progress=lambda d, t: seen.append((d, t)),
            poll_interval=0.05,
        )  # fmt: skip
        assert info.format == "qcow2" and info.virtual_size == 4 * MiB
        assert len(seen) >= 3 and seen[-1] == (4 * MiB, 4 * MiB)
        assert [d for d, _ in seen] == sorted(d for d, _ in seen)

        with pytest.raises(AgentCallError) as err:
            client.call(FetchImage(url=image_server.url("disk.raw"), target=ref("b.qcow2"), format="raw",
                                   checksum="f" * 64))  # fmt: skip
        assert err.value.code == ErrorCode.BAD_REQUEST and digest in err.value.message

        # Cancel a slow download part-way: the task ends cancelled and leaves no file.
        task_id = client.start_task(
            FetchImage(url=image_server.url("disk.raw", "slow"), target=ref("c.qcow2"), format="raw")
        )
        deadline = time.monotonic() + 10
        while client.task(task_id).progress_done == 0:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        final = client.cancel_task(task_id)
        assert final.state == TaskState.CANCELLED
        assert sorted(p.name for p in Path(pool.path).iterdir()) == ["a.qcow2"]

        # The same through the client's cancel event.
        stop = threading.Event()
        threading.Timer(0.3, stop.set).start()
        with pytest.raises(AgentCallError) as err:
            client.run_long(
                FetchImage(url=image_server.url("disk.raw", "slow"), target=ref("d.qcow2"), format="raw"),
                cancel_event=stop,
                poll_interval=0.05,
            )
        assert err.value.code == ErrorCode.CANCELLED
        assert sorted(p.name for p in Path(pool.path).iterdir()) == ["a.qcow2"]

        converted = client.call(ConvertLayer(source=ref("a.qcow2"), target=ref("flat.qcow2")))
        assert converted.virtual_size == 4 * MiB and converted.backing_file is None
    finally:
        agent.stop()
