"""The QEMU driver against real QEMU (TCG: guest kernels hang under this host's KVM)."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
from drvlib import layer, vm_spec

from helpers.console import guest_timer
from strato.agent.drivers.base import DriverError
from strato.agent.drivers.qemu import QemuDriver
from strato.agent.drivers.qemu.process import RunDir, live_pid, resolve_accel
from strato.protocol.messages import (
    CdromSpec,
    DiskSpec,
    ErrorCode,
    LayerRef,
    PoolRef,
    PowerState,
    VmSpec,
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


async def blank_vm(drv: QemuDriver, name: str = "vm1") -> VmSpec:
    top = layer(drv, f"{name}-root.qcow2")
    await drv.create_layer(top, 32 * MiB, None)
    return vm_spec(name, [DiskSpec(device_id=0, layer=top, serial="root-0")])


def write_pattern(path: Path, offset: int, length: int) -> None:
    subprocess.run(
        ["qemu-io", "-f", "qcow2", "-c", f"write -P 0xab {offset} {length}", str(path)],
        check=True,
        capture_output=True,
    )


async def expect_error(code: ErrorCode, aw: object) -> DriverError:
    with pytest.raises(DriverError) as info:
        await aw  # type: ignore[misc]
    assert info.value.code == code, info.value.message
    return info.value


# --- host and pools ------------------------------------------------------------------------------


async def test_host_info_and_pools(driver: QemuDriver, data_dir: Path) -> None:
    info = await driver.host_info()
    assert info.driver == "qemu" and info.hypervisor == "KVM"
    assert info.hypervisor_version[0].isdigit()
    assert info.cpus >= 1 and info.memory_bytes > 0
    assert info.local_pool.id == "local"
    assert Path(info.local_pool.path) == data_dir / "pools" / "local"
    assert info.local_pool.capacity_bytes >= info.local_pool.used_bytes > 0

    other = PoolRef(id="p2", path=str(data_dir / "other"))
    await expect_error(ErrorCode.NOT_FOUND, driver.attach_pool(other, create=False))
    report = await driver.attach_pool(other, create=True)
    assert report.id == "p2" and (data_dir / "other").is_dir()
    await expect_error(ErrorCode.BAD_REQUEST, driver.attach_pool(PoolRef(id="r", path="rel"), create=True))

    missing = PoolRef(id="gone", path=str(data_dir / "gone"))
    state = await driver.state([driver.local_pool, other, missing])
    assert [p.id for p in state.pools] == ["local", "p2"]
    assert state.vms == []


def test_accel_resolution() -> None:
    assert resolve_accel("tcg") == "tcg"
    assert resolve_accel("kvm") == "kvm"
    expected = "kvm" if os.access("/dev/kvm", os.R_OK | os.W_OK) else "tcg"
    assert resolve_accel("auto") == expected


@pytest.mark.skipif(resolve_accel("auto") != "kvm", reason="/dev/kvm is not usable here")
async def test_kvm_accel_runs_a_vm_without_os(data_dir: Path) -> None:
    """KVM itself works on this host (only guest kernels hang), so the kvm command line is checked too."""
    drv = QemuDriver(data_dir, accel="auto")
    await drv.start()
    report = await drv.start_vm(await blank_vm(drv))
    assert report.power_state == PowerState.RUNNING
    assert json.loads((data_dir / "vms" / "vm1" / "runtime.json").read_text())["accel"] == "kvm"
    await drv.stop_vm("vm1", force=True, timeout_s=1)


# --- layers --------------------------------------------------------------------------------------


async def test_layer_create_info_rebase_remove(driver: QemuDriver) -> None:
    base = layer(driver, "templates/base.qcow2")
    info = await driver.create_layer(base, 64 * MiB, None)
    assert (info.name, info.format, info.virtual_size, info.backing_file) == (
        base.name,
        "qcow2",
        64 * MiB,
        None,
    )
    top = layer(driver, "top.qcow2")
    top_info = await driver.create_layer(top, None, base)
    assert top_info.virtual_size == 64 * MiB
    assert top_info.backing_file == str(Path(driver.local_pool.path) / "templates/base.qcow2")
    assert (await driver.layer_info(top)) == top_info

    await expect_error(ErrorCode.ALREADY_EXISTS, driver.create_layer(top, MiB, None))
    await expect_error(ErrorCode.NOT_FOUND, driver.create_layer(layer(driver, "x"), None, layer(driver, "no")))
    await expect_error(ErrorCode.BAD_REQUEST, driver.create_layer(layer(driver, "y"), None, None))
    await expect_error(ErrorCode.NOT_FOUND, driver.layer_info(layer(driver, "missing.qcow2")))
    assert not (Path(driver.local_pool.path) / "x").exists()

    base2 = layer(driver, "base2.qcow2")
    await driver.create_layer(base2, 64 * MiB, None)
    rebased = await driver.rebase_layer(top, base2)
    assert rebased.backing_file == str(Path(driver.local_pool.path) / "base2.qcow2")
    flat = await driver.rebase_layer(top, None)
    assert flat.backing_file is None
    await expect_error(ErrorCode.NOT_FOUND, driver.rebase_layer(top, layer(driver, "nope")))

    await driver.remove_layer(top, missing_ok=False)
    assert not (Path(driver.local_pool.path) / "top.qcow2").exists()
    await driver.remove_layer(top, missing_ok=True)
    await expect_error(ErrorCode.NOT_FOUND, driver.remove_layer(top, missing_ok=False))

    # A volume's directory goes with its last layer; the pool's own directory and busy ones stay.
    pool_dir = Path(driver.local_pool.path)
    first, second = layer(driver, "volumes/v1/a.qcow2"), layer(driver, "volumes/v1/b.qcow2")
    await driver.create_layer(first, MiB, None)
    await driver.create_layer(second, MiB, None)
    await driver.remove_layer(first, missing_ok=False)
    assert (pool_dir / "volumes/v1").is_dir()
    await driver.remove_layer(second, missing_ok=False)
    assert not (pool_dir / "volumes").exists() and pool_dir.is_dir()


async def test_partial_files_of_an_earlier_agent_life_are_swept(data_dir: Path) -> None:
    """A copy interrupted by an agent crash leaves a hidden partial file; the next agent removes it the
    first time it sees the pool, and leaves the files of its own running tasks and real layers alone."""
    pool_dir = data_dir / "pools" / "swept"
    (pool_dir / "volumes" / "v9").mkdir(parents=True)
    stale = pool_dir / "volumes" / "v9" / ".top.qcow2.0123abcd.copying"
    stale.write_bytes(b"half a copy")
    old = time.time() - 60
    os.utime(stale, (old, old))
    real = pool_dir / "volumes" / "v9" / "top.qcow2"
    real.write_bytes(b"a layer")
    os.utime(real, (old, old))
    drv = QemuDriver(data_dir, accel="tcg")
    fresh = pool_dir / ".base.qcow2.89abcdef.fetching"  # a task of this agent life
    fresh.write_bytes(b"downloading")
    report = await drv.state([PoolRef(id="swept", path=str(pool_dir))])
    assert [p.id for p in report.pools] == ["swept"]
    assert not stale.exists() and real.exists() and fresh.exists()


@pytest.mark.parametrize("name", ["../escape.qcow2", "/etc/passwd", "a/../../b", "a/./b", "", "sub/"])
async def test_layer_path_escape_refused(driver: QemuDriver, name: str) -> None:
    await expect_error(ErrorCode.BAD_REQUEST, driver.create_layer(layer(driver, name), MiB, None))
    await expect_error(ErrorCode.BAD_REQUEST, driver.layer_info(layer(driver, name)))
    await expect_error(ErrorCode.BAD_REQUEST, driver.remove_layer(layer(driver, name), missing_ok=True))


async def test_layer_symlink_escape_refused(driver: QemuDriver, data_dir: Path) -> None:
    outside = data_dir / "outside"
    outside.mkdir()
    (Path(driver.local_pool.path) / "link").symlink_to(outside)
    await expect_error(ErrorCode.BAD_REQUEST, driver.create_layer(layer(driver, "link/x.qcow2"), MiB, None))
    assert list(outside.iterdir()) == []


async def test_copy_layer_sparse_keeps_backing(driver: QemuDriver, data_dir: Path) -> None:
    base = layer(driver, "base.qcow2")
    await driver.create_layer(base, 256 * MiB, None)
    top = layer(driver, "top.qcow2")
    await driver.create_layer(top, None, base)
    write_pattern(Path(driver.local_pool.path) / "top.qcow2", 0, 2 * MiB)
    write_pattern(Path(driver.local_pool.path) / "top.qcow2", 200 * MiB, 2 * MiB)

    pool2 = PoolRef(id="p2", path=str(data_dir / "p2"))
    await driver.attach_pool(pool2, create=True)
    target = LayerRef(pool=pool2, name="top.qcow2")
    calls: list[tuple[int, int]] = []
    info = await driver.copy_layer(top, target, None, lambda done, total: calls.append((done, total)))

    src = Path(driver.local_pool.path) / "top.qcow2"
    dst = Path(pool2.path) / "top.qcow2"
    assert dst.read_bytes() == src.read_bytes()
    assert info.backing_file == str(Path(driver.local_pool.path) / "base.qcow2")
    assert info.virtual_size == 256 * MiB
    assert dst.stat().st_blocks * 512 <= src.stat().st_blocks * 512 + MiB  # still sparse
    assert calls and calls[-1][0] == calls[-1][1] > 4 * MiB
    assert [d for d, _ in calls] == sorted(d for d, _ in calls)
    assert sorted(p.name for p in Path(pool2.path).iterdir()) == ["top.qcow2"]

    await expect_error(ErrorCode.ALREADY_EXISTS, driver.copy_layer(top, target, None, lambda d, t: None))
    missing = layer(driver, "missing.qcow2")
    await expect_error(ErrorCode.NOT_FOUND, driver.copy_layer(missing, layer(driver, "m2"), None, lambda d, t: None))

    # The copy can then be pointed at a copy of its backing file.
    base_copy = LayerRef(pool=pool2, name="base.qcow2")
    await driver.copy_layer(base, base_copy, None, lambda d, t: None)
    rebased = await driver.rebase_layer(target, base_copy)
    assert rebased.backing_file == str(Path(pool2.path) / "base.qcow2")


async def test_copy_layer_throttled_and_cancelled(driver: QemuDriver) -> None:
    src = layer(driver, "big.qcow2")
    await driver.create_layer(src, 64 * MiB, None)
    write_pattern(Path(driver.local_pool.path) / "big.qcow2", 0, 8 * MiB)

    # Throttled: ~8.2 MiB at 16 MiB/s takes about half a second.
    started = time.monotonic()
    await driver.copy_layer(src, layer(driver, "throttled.qcow2"), 16 * MiB, lambda d, t: None)
    assert time.monotonic() - started >= 0.4

    # Cancelled mid-way: the task ends cancelled and nothing is left behind.
    progress: list[int] = []
    task = asyncio.ensure_future(
        driver.copy_layer(src, layer(driver, "cancelled.qcow2"), 4 * MiB, lambda d, t: progress.append(d))
    )
    while not progress or progress[-1] == 0:
        await asyncio.sleep(0.02)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    names = sorted(p.name for p in Path(driver.local_pool.path).iterdir())
    assert names == ["big.qcow2", "throttled.qcow2"]


# --- VMs -----------------------------------------------------------------------------------------


async def test_vm_lifecycle(driver: QemuDriver, data_dir: Path) -> None:
    iso = data_dir / "empty.iso"
    iso.write_bytes(b"\0" * 2 * MiB)
    spec = await blank_vm(driver)
    spec = spec.model_copy(update={"cdrom": CdromSpec(path=str(iso))})

    report = await driver.start_vm(spec)
    assert report.power_state == PowerState.RUNNING
    assert report.uuid == spec.uuid and report.pid is not None
    assert report.vnc_port is not None and report.vnc_port >= 5900
    run = data_dir / "vms" / "vm1"
    for name in ("qmp.sock", "qemu.pid", "serial.log", "spec.json"):
        assert (run / name).exists(), name
    assert VmSpec.model_validate_json((run / "spec.json").read_text()) == spec
    assert (await driver.get_vm("vm1")) == report

    await expect_error(ErrorCode.INVALID_STATE, driver.start_vm(spec))
    await expect_error(ErrorCode.NOT_FOUND, driver.get_vm("nosuchvm"))
    await expect_error(ErrorCode.NOT_FOUND, driver.stop_vm("nosuchvm", True, 1))
    await expect_error(ErrorCode.BAD_REQUEST, driver.get_vm("../etc"))

    await asyncio.sleep(0.5)  # let the firmware run and read the disk
    stats = await driver.vm_stats("vm1")
    assert stats.cpu_time_ns > 0 and stats.memory_mib == 64
    assert [(d.device_id, d.node_name) for d in stats.disks] == [(0, "disk0-fmt")]
    assert stats.disks[0].read_ops > 0 and stats.disks[0].read_bytes > 0

    # QEMU's monitor serves one client at a time: concurrent calls must still all succeed.
    many = await asyncio.gather(
        *[driver.get_vm("vm1") for _ in range(10)], *[driver.vm_stats("vm1") for _ in range(10)]
    )
    assert len(many) == 20

    rebooted = await driver.reboot_vm("vm1")
    assert rebooted.power_state == PowerState.RUNNING and rebooted.pid == report.pid

    state = await driver.state([])
    assert [(v.name, v.power_state) for v in state.vms] == [("vm1", PowerState.RUNNING)]

    started = time.monotonic()
    stopped = await driver.stop_vm("vm1", force=True, timeout_s=30)
    assert time.monotonic() - started < 5
    assert stopped.power_state == PowerState.STOPPED and stopped.pid is None
    assert sorted(p.name for p in run.iterdir()) == ["serial.log", "spec.json"]
    assert (await driver.get_vm("vm1")).power_state == PowerState.STOPPED
    await expect_error(ErrorCode.INVALID_STATE, driver.reboot_vm("vm1"))
    await expect_error(ErrorCode.INVALID_STATE, driver.vm_stats("vm1"))
    # Stopping a stopped VM is a no-op; it can be started again.
    assert (await driver.stop_vm("vm1", force=True, timeout_s=1)).power_state == PowerState.STOPPED
    again = await driver.start_vm(spec)
    assert again.power_state == PowerState.RUNNING and again.pid != report.pid
    await driver.stop_vm("vm1", force=True, timeout_s=1)


async def test_start_vm_errors(driver: QemuDriver) -> None:
    missing = vm_spec("vm2", [DiskSpec(device_id=0, layer=layer(driver, "nope.qcow2"))])
    await expect_error(ErrorCode.NOT_FOUND, driver.start_vm(missing))
    escape = vm_spec("vm2", [DiskSpec(device_id=0, layer=layer(driver, "../x.qcow2"))])
    await expect_error(ErrorCode.BAD_REQUEST, driver.start_vm(escape))
    await expect_error(ErrorCode.BAD_REQUEST, driver.start_vm(vm_spec("bad/name", [])))
    await expect_error(ErrorCode.NOT_FOUND, driver.start_vm(vm_spec("vm2", [], cdrom={"path": "/nonexistent.iso"})))


async def test_layers_in_use_are_protected(driver: QemuDriver) -> None:
    base = layer(driver, "base.qcow2")
    await driver.create_layer(base, 32 * MiB, None)
    top = layer(driver, "top.qcow2")
    await driver.create_layer(top, None, base)
    spec = vm_spec("vm1", [DiskSpec(device_id=0, layer=top)])
    await driver.start_vm(spec)

    await expect_error(ErrorCode.INVALID_STATE, driver.remove_layer(top, missing_ok=False))
    await expect_error(ErrorCode.INVALID_STATE, driver.remove_layer(base, missing_ok=False))
    # QEMU's image locking refuses a second writer of the same layer.
    await expect_error(ErrorCode.INVALID_STATE, driver.start_vm(vm_spec("vm2", spec.disks)))
    assert (await driver.get_vm("vm2")).power_state == PowerState.STOPPED

    await driver.stop_vm("vm1", force=True, timeout_s=1)
    await driver.remove_layer(top, missing_ok=False)
    await driver.remove_layer(base, missing_ok=False)


async def test_stop_timeout_kills_guest_without_os(driver: QemuDriver) -> None:
    """A guest with no OS ignores the ACPI power button: stop waits for the timeout, then kills."""
    await driver.start_vm(await blank_vm(driver))
    started = time.monotonic()
    report = await driver.stop_vm("vm1", force=False, timeout_s=1.0)
    elapsed = time.monotonic() - started
    assert report.power_state == PowerState.STOPPED
    assert 1.0 <= elapsed < 8


async def test_reattach_after_agent_restart(data_dir: Path) -> None:
    first = QemuDriver(data_dir, accel="tcg")
    await first.start()
    report = await first.start_vm(await blank_vm(first))
    await first.close()
    assert live_pid(RunDir(data_dir / "vms" / "vm1")) == report.pid  # close() left it running

    second = QemuDriver(data_dir, accel="tcg")
    await second.start()
    again = await second.get_vm("vm1")
    assert again == report
    state = await second.state([])
    assert [(v.name, v.pid, v.power_state) for v in state.vms] == [("vm1", report.pid, PowerState.RUNNING)]
    assert (await second.vm_stats("vm1")).cpu_time_ns > 0
    assert (await second.stop_vm("vm1", force=True, timeout_s=1)).power_state == PowerState.STOPPED


async def test_killed_from_outside_shows_stopped(driver: QemuDriver, data_dir: Path) -> None:
    spec = await blank_vm(driver)
    report = await driver.start_vm(spec)
    assert report.pid is not None
    os.kill(report.pid, signal.SIGKILL)
    run = data_dir / "vms" / "vm1"
    deadline = time.monotonic() + 5
    while live_pid(RunDir(run)) is not None and time.monotonic() < deadline:
        await asyncio.sleep(0.05)

    assert (await driver.get_vm("vm1")).power_state == PowerState.STOPPED
    state = await driver.state([])
    assert [(v.name, v.power_state) for v in state.vms] == [("vm1", PowerState.STOPPED)]
    assert sorted(p.name for p in run.iterdir()) == ["serial.log", "spec.json"]
    # A new driver (agent restart) agrees, and the VM can be started again.
    restarted = QemuDriver(data_dir, accel="tcg")
    await restarted.start()
    assert (await restarted.get_vm("vm1")).power_state == PowerState.STOPPED
    assert (await restarted.start_vm(spec)).power_state == PowerState.RUNNING
    await restarted.stop_vm("vm1", force=True, timeout_s=1)


async def test_boot_tiny_guest(driver: QemuDriver, data_dir: Path) -> None:
    """Boots the tiny guest (strato.image.tiny, ~1 s to build) on a linked clone; waits for its marker."""
    try:
        from strato.image.tiny import build_tiny_image
        from strato.image.tools import ImageToolError
    except ImportError:
        pytest.skip("strato.image.tiny (the tiny guest image builder) is not available")
    images = PoolRef(id="images", path=str(data_dir / "images"))
    try:
        image = build_tiny_image(data_dir / "images" / "tiny.qcow2")
    except ImageToolError as exc:
        pytest.skip(f"cannot build the tiny guest image here: {exc}")
    base = layer(driver, "tiny.qcow2")
    await driver.copy_layer(LayerRef(pool=images, name=image.name), base, None, lambda d, t: None)
    top = layer(driver, "tiny-top.qcow2")
    await driver.create_layer(top, None, base)
    await driver.start_vm(vm_spec("tiny", [DiskSpec(device_id=0, layer=top)], memory_mib=128))
    serial = data_dir / "vms" / "tiny" / "serial.log"
    over = guest_timer(lambda: live_pid(RunDir(data_dir / "vms" / "tiny")), 60)
    while b"STRATO-TINY-BOOTED" not in serial.read_bytes():
        assert not over(), serial.read_text(errors="replace")[-2000:]
        await asyncio.sleep(0.2)
    stats = await driver.vm_stats("tiny")
    assert stats.disks[0].read_bytes > MiB  # the kernel and initramfs came from the disk
    await driver.stop_vm("tiny", force=True, timeout_s=1)
