"""The per-VM QMP connection under a long block job, against real QEMU (TCG).

A rate-limited `blockdev-mirror` runs for tens of seconds; meanwhile the driver's status and block
stats calls to the same VM are answered at once, the job's progress grows, and cancelling it leaves
no job and no target file. The job outlives a restart of the driver and is found again.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import time
import uuid
from pathlib import Path

import pytest
from drvlib import layer

from strato.agent.drivers.qemu import QemuDriver
from strato.agent.drivers.qemu.blockjobs import BlockJobs, target_node
from strato.agent.drivers.qemu.monitor import EventsMissed
from strato.protocol.messages import DiskSpec, LayerRef, PoolRef, PowerState, VmSpec

pytestmark = [
    pytest.mark.qemu,
    pytest.mark.anyio,
    pytest.mark.skipif(
        shutil.which("qemu-system-x86_64") is None or shutil.which("qemu-io") is None,
        reason="needs qemu-system-x86_64, qemu-img and qemu-io",
    ),
]

MiB = 1024 * 1024
DATA_MIB = 32
SPEED = 1 * MiB
BURST = MiB // 4
"""buf-size of the throttled mirrors: QEMU lets this much through before the rate limit applies."""
ANSWER_S = 1.0


async def start_guest(drv: QemuDriver, image: Path, wait_boot: bool) -> Path:
    """The tiny guest on a linked clone, with a 64 MiB data disk (device 1) holding 32 MiB of data;
    returns the data disk's file."""
    images = PoolRef(id="images", path=str(image.parent))
    root = layer(drv, "root.qcow2")
    await drv.create_layer(root, None, LayerRef(pool=images, name=image.name))
    data = layer(drv, "data.qcow2")
    await drv.create_layer(data, 64 * MiB, None)
    data_path = Path(drv.local_pool.path) / "data.qcow2"
    subprocess.run(
        ["qemu-io", "-f", "qcow2", "-c", f"write -P 0x5a 0 {DATA_MIB}M", str(data_path)],
        check=True,
        capture_output=True,
    )
    spec = VmSpec.model_validate(
        {
            "name": "vm1",
            "uuid": str(uuid.uuid4()),
            "cpus": 1,
            "memory_mib": 128,
            "disks": [DiskSpec(device_id=0, layer=root), DiskSpec(device_id=1, layer=data)],
        }
    )
    assert (await drv.start_vm(spec)).power_state == PowerState.RUNNING
    if wait_boot:
        serial = drv.data_dir / "vms" / "vm1" / "serial.log"
        deadline = time.monotonic() + 120
        while b"STRATO-TINY-BOOTED" not in serial.read_bytes():
            assert time.monotonic() < deadline, serial.read_text(errors="replace")[-2000:]
            await asyncio.sleep(0.2)
    return data_path


async def timed(aw: object) -> tuple[object, float]:
    started = time.monotonic()
    result = await aw  # type: ignore[misc]
    return result, time.monotonic() - started


async def answered_at_once(drv: QemuDriver) -> None:
    """Status and block stats of vm1, several at once on the one connection: each in under a second."""
    calls = [drv.get_vm("vm1"), drv.vm_stats("vm1"), drv.get_vm("vm1"), drv.vm_stats("vm1")]
    results = await asyncio.gather(*(timed(call) for call in calls))
    for result, elapsed in results:
        assert elapsed < ANSWER_S, f"{result!r} took {elapsed:.2f} s"
    report, stats = results[0][0], results[1][0]
    assert getattr(report, "power_state", None) == PowerState.RUNNING
    assert sorted(d.device_id for d in getattr(stats, "disks", [])) == [0, 1]


async def watch_progress(drv: QemuDriver, jobs: BlockJobs, job_id: str, seconds: float) -> list[int]:
    """Progress samples of a running job while the VM's other calls are being answered."""
    samples: list[int] = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        await answered_at_once(drv)
        job, elapsed = await timed(jobs.get(job_id))
        assert elapsed < ANSWER_S
        assert job is not None and getattr(job, "status", None) == "running", job
        samples.append(getattr(job, "current", 0))
        total = getattr(job, "total", 0)  # 0 until QEMU has scanned what to copy
        assert total == 0 or (DATA_MIB - 1) * MiB <= total <= 64 * MiB, total
        await asyncio.sleep(0.3)
    assert (DATA_MIB - 1) * MiB <= total, total
    return samples


async def block_node_names(drv: QemuDriver) -> set[str]:
    nodes = await drv.monitor("vm1").execute("query-named-block-nodes", {"flat": True})
    return {str(node["node-name"]) for node in nodes}


async def test_rate_limited_mirror_blocks_no_other_call(driver: QemuDriver, tiny_image: Path) -> None:
    await start_guest(driver, tiny_image, wait_boot=True)
    jobs = driver.jobs_of("vm1")
    target = Path(driver.local_pool.path) / "data-copy.qcow2"
    started = time.monotonic()
    await jobs.mirror_to_new_file("mirror-1", "disk1-fmt", target, sync="full", speed=SPEED, buf_size=BURST)
    assert target.is_file()

    samples = await watch_progress(driver, jobs, "mirror-1", seconds=4.0)
    assert len(samples) >= 3
    assert samples == sorted(samples) and samples[-1] - samples[0] >= MiB, samples
    # About the rate limit: far from the 32 MiB it would copy unthrottled in well under a second.
    assert samples[-1] <= SPEED * (time.monotonic() - started) + 2 * MiB, samples

    final, elapsed = await timed(jobs.cancel("mirror-1"))
    assert elapsed < 5
    assert getattr(final, "status", None) in ("concluded", "null")
    assert [job.id for job in await jobs.list()] == []
    assert await jobs.discard_target("mirror-1") == target
    assert not target.exists()
    assert not set(target_node("mirror-1")) & await block_node_names(driver)
    await answered_at_once(driver)  # the guest and its disks are as they were

    # Unthrottled, the same copy reaches READY and pivots; READY is waited for by event.
    copy = Path(driver.local_pool.path) / "data-copy2.qcow2"
    await jobs.mirror_to_new_file("mirror-2", "disk1-fmt", copy, sync="full")
    ready = await jobs.wait_ready("mirror-2", timeout=60)
    assert ready.current == ready.total >= (DATA_MIB - 1) * MiB
    await jobs.complete("mirror-2", timeout=60)
    assert await jobs.list() == []
    blocks = await driver.monitor("vm1").execute("query-block")
    files = {
        str(b.get("qdev", "")).removeprefix("/machine/peripheral/").removesuffix("/virtio-backend"): b["inserted"][
            "file"
        ]
        for b in blocks
        if b.get("inserted")
    }
    assert files["disk1"] == str(copy)
    await driver.stop_vm("vm1", force=True, timeout_s=1)


async def test_mirror_found_again_after_agent_restart(data_dir: Path, tiny_image: Path) -> None:
    first = QemuDriver(data_dir, accel="tcg")
    await first.start()
    second: QemuDriver | None = None
    try:
        await start_guest(first, tiny_image, wait_boot=False)
        target = Path(first.local_pool.path) / "data-copy.qcow2"
        await first.jobs_of("vm1").mirror_to_new_file("mirror-1", "disk1-fmt", target, speed=SPEED, buf_size=BURST)
        await asyncio.sleep(1)
        pid = (await first.get_vm("vm1")).pid
        await first.close()  # the agent stops; QEMU and its job go on

        second = QemuDriver(data_dir, accel="tcg")
        await second.start()
        assert (await second.get_vm("vm1")).pid == pid
        jobs = second.jobs_of("vm1")
        found = await jobs.list()
        assert [(job.id, job.type, job.status) for job in found] == [("mirror-1", "mirror", "running")]
        samples = await watch_progress(second, jobs, "mirror-1", seconds=2.0)
        assert 0 < samples[0] < samples[-1], samples

        await jobs.cancel("mirror-1")
        assert await jobs.list() == []
        assert await jobs.discard_target("mirror-1") == target  # found by its node name
        assert not target.exists()
        await answered_at_once(second)
        await second.stop_vm("vm1", force=True, timeout_s=1)
    finally:
        await first.close()
        if second is not None:
            await second.close()


async def test_events_and_reconnect(driver: QemuDriver) -> None:
    """STOP/RESUME are heard when subscribed before the command; a dropped connection is re-made
    while QEMU lives, and a waiter is told that events may have been missed."""
    root = layer(driver, "blank.qcow2")
    await driver.create_layer(root, 16 * MiB, None)
    spec = VmSpec.model_validate(
        {"name": "vm1", "uuid": str(uuid.uuid4()), "cpus": 1, "memory_mib": 64,
         "disks": [DiskSpec(device_id=0, layer=root)]}
    )  # fmt: skip
    await driver.start_vm(spec)
    monitor = driver.monitor("vm1")
    with monitor.subscribe({"STOP", "RESUME"}) as events:
        await monitor.execute("stop")
        assert (await events.next(5))["event"] == "STOP"
        assert monitor.paused is True
        assert (await driver.get_vm("vm1")).power_state == PowerState.PAUSED
        await monitor.execute("cont")
        assert (await events.next(5))["event"] == "RESUME"
    assert (await driver.get_vm("vm1")).power_state == PowerState.RUNNING

    assert monitor.connections == 1
    with monitor.subscribe({"STOP"}) as events:
        session = monitor._session
        assert session is not None
        await session.disconnect()  # as if the socket broke
        with pytest.raises(EventsMissed):
            await events.next(10)
    assert (await driver.get_vm("vm1")).power_state == PowerState.RUNNING
    assert driver.monitor("vm1") is monitor and monitor.connections == 2

    pid = (await driver.get_vm("vm1")).pid
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while not monitor.closed:
        assert time.monotonic() < deadline
        await asyncio.sleep(0.05)
    assert (await driver.get_vm("vm1")).power_state == PowerState.STOPPED


async def test_stream_and_commit(driver: QemuDriver) -> None:
    """block-stream (throttled and cancelled, then to the end) and an active block-commit (READY,
    then pivot) on a VM without OS: two disks, each an overlay on a base with 8 MiB of data."""
    pool = Path(driver.local_pool.path)
    disks = []
    for device_id in (0, 1):
        base, top = layer(driver, f"base{device_id}.qcow2"), layer(driver, f"top{device_id}.qcow2")
        await driver.create_layer(base, 16 * MiB, None)
        subprocess.run(
            ["qemu-io", "-f", "qcow2", "-c", "write -P 0x33 0 8M", str(pool / base.name)],
            check=True,
            capture_output=True,
        )
        await driver.create_layer(top, None, base)
        disks.append(DiskSpec(device_id=device_id, layer=top))
    spec = VmSpec.model_validate(
        {"name": "vm1", "uuid": str(uuid.uuid4()), "cpus": 1, "memory_mib": 64, "disks": disks}
    )
    await driver.start_vm(spec)
    jobs = driver.jobs_of("vm1")

    await jobs.start_stream("stream-1", "disk1-fmt", speed=SPEED)
    await asyncio.sleep(0.5)
    await answered_at_once_blank(driver)
    job = await jobs.get("stream-1")
    assert job is not None and job.type == "stream" and job.status == "running" and job.total >= 8 * MiB
    await jobs.cancel("stream-1")
    assert await jobs.list() == []
    await jobs.start_stream("stream-2", "disk1-fmt")
    await jobs.wait_ended("stream-2", timeout=60)

    await jobs.start_commit("commit-1", "disk0-fmt")
    ready = await jobs.wait_ready("commit-1", timeout=60)
    assert ready.type == "commit"
    await jobs.complete("commit-1", timeout=60)
    assert await jobs.list() == []

    blocks = await driver.monitor("vm1").execute("query-block")
    media = {
        str(b.get("qdev", "")).removeprefix("/machine/peripheral/").removesuffix("/virtio-backend"): b["inserted"]
        for b in blocks
        if b.get("inserted")
    }
    assert media["disk0"]["file"] == str(pool / "base0.qcow2")  # committed down, pivoted to the base
    assert media["disk1"]["file"] == str(pool / "top1.qcow2") and "backing_file" not in media["disk1"]["image"]
    await driver.stop_vm("vm1", force=True, timeout_s=1)


async def answered_at_once_blank(drv: QemuDriver) -> None:
    results = await asyncio.gather(timed(drv.get_vm("vm1")), timed(drv.vm_stats("vm1")))
    assert all(elapsed < ANSWER_S for _, elapsed in results), results
