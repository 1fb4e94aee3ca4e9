"""Live disk moves on one host (the QEMU driver's BlockJobs role) against real QEMU with the tiny guest
under TCG: the guest keeps writing self-checking blocks while its disk moves to another pool and
verifies every block afterwards; a linked clone keeps reading its template from the target pool's
copy; a cancelled move leaves the VM on its source; the bandwidth limit shows in the progress.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import shutil
import subprocess
import time
import uuid
from pathlib import Path

import pytest
from drvlib import wait_console

from helpers.vnc import end_loop, vnc_port_of
from strato.agent.drivers.base import DriverError
from strato.agent.drivers.qemu import QemuDriver
from strato.agent.drivers.qemu.mirror import DiskMotion
from strato.agent.drivers.qemu.process import RunDir
from strato.agent.drivers.roles import set_phase_sink
from strato.image.integrity import encode_block, encode_superblock, parse_generations, verify_image
from strato.protocol.messages import DiskSpec, ErrorCode, LayerRef, PoolRef, PowerState, SnapshotDisk, VmSpec

pytestmark = [
    pytest.mark.qemu,
    pytest.mark.anyio,
    pytest.mark.skipif(
        shutil.which("qemu-system-x86_64") is None or shutil.which("qemu-io") is None,
        reason="needs qemu-system-x86_64, qemu-img and qemu-io",
    ),
]

MiB = 1024 * 1024
BLOCKS = 64
BS = 4096
TEMPLATE_FILL_MIB = 8
"""Data in the template beyond its integrity blocks: what a clone's move must not copy."""


# --- helpers -------------------------------------------------------------------------------------------


def local(drv: QemuDriver, name: str) -> LayerRef:
    return LayerRef(pool=drv.local_pool, name=name)


async def other_pool(drv: QemuDriver) -> PoolRef:
    pool = PoolRef(id="fast", path=str(drv.data_dir / "pools" / "fast"))
    await drv.attach_pool(pool, create=True)
    return pool


def path_of(ref: LayerRef) -> Path:
    return Path(ref.pool.path) / ref.name


async def start_vm(
    drv: QemuDriver, image: Path, data: LayerRef, guest_commands: str | None, memory_mib: int = 128
) -> VmSpec:
    """vm1: the tiny guest on a linked clone (device 0) with `data` as its second disk (device 1, vdb)."""
    images = PoolRef(id="images", path=str(image.parent))
    root = local(drv, "root.qcow2")
    await drv.create_layer(root, None, LayerRef(pool=images, name=image.name))
    spec = VmSpec(
        name="vm1",
        uuid=str(uuid.uuid4()),
        cpus=1,
        memory_mib=memory_mib,
        disks=[DiskSpec(device_id=0, layer=root), DiskSpec(device_id=1, layer=data)],
        guest_commands=guest_commands,
    )
    assert (await drv.start_vm(spec)).power_state == PowerState.RUNNING
    return spec


async def open_files(drv: QemuDriver) -> set[str]:
    """Every file QEMU has open for vm1, as top or backing layer."""
    nodes = await drv.monitor("vm1").execute("query-named-block-nodes", {"flat": True})
    return {os.path.realpath(str(n["file"])) for n in nodes if n.get("drv") == "file"}


async def disk_file(drv: QemuDriver, device: str = "disk1") -> str:
    for block in await drv.monitor("vm1").execute("query-block"):
        qdev = str(block.get("qdev", "")).removeprefix("/machine/peripheral/").removesuffix("/virtio-backend")
        if qdev == device and block.get("inserted"):
            return str(block["inserted"]["file"])
    raise AssertionError(f"no {device}")


def write_data(path: Path, mib: int, offset_mib: int = 0) -> None:
    subprocess.run(
        ["qemu-io", "-f", "qcow2", "-c", f"write -P 0x5a {offset_mib}M {mib}M", str(path)],
        check=True,
        capture_output=True,
    )


def own_allocation(path: Path) -> int:
    """Bytes allocated in this layer itself (not in its backing chain)."""
    out = subprocess.run(
        ["qemu-img", "map", "-U", "--output=json", str(path)], check=True, capture_output=True, text=True
    ).stdout
    return sum(e["length"] for e in json.loads(out) if e.get("data") and e.get("depth") == 0)


class Progress:
    """The samples a long command reports, with when they came."""

    def __init__(self) -> None:
        self.samples: list[tuple[float, int, int]] = []

    def __call__(self, done: int, total: int) -> None:
        self.samples.append((time.monotonic(), done, total))

    @property
    def done(self) -> int:
        return self.samples[-1][1] if self.samples else 0

    async def until(self, done: int, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while self.done < done:
            assert time.monotonic() < deadline, self.samples[-5:]
            await asyncio.sleep(0.1)


# --- (a) a data disk moves while the guest writes ---------------------------------------------------

LOOP_S = 600
"""The ceiling of the guest's write loop: a test ends it with a key (end_vm1_loop) once its move is done."""


def end_vm1_loop(driver: QemuDriver) -> None:
    """A key on vm1's keyboard (VNC) ends its write loop; blocks the event loop meanwhile (only waiting)."""
    run = RunDir(driver.vms_dir / "vm1")
    end_loop(vnc_port_of("vm1", driver.vms_dir.parent), lambda: run.serial_log.read_text(errors="replace"))


async def test_data_disk_moves_while_the_guest_writes(driver: QemuDriver, tiny_image: Path) -> None:
    fast = await other_pool(driver)
    data = local(driver, "data.qcow2")
    await driver.create_layer(data, 16 * MiB, None)
    commands = f"integrity-write:vdb:{BLOCKS},integrity-loop:vdb:{LOOP_S},integrity-gens:vdb,integrity-verify:vdb"
    await start_vm(driver, tiny_image, data, commands)
    await wait_console(driver, "STRATO-INTEGRITY LOOP-START")

    target = LayerRef(pool=fast, name="vols/data-moved.qcow2")
    progress = Progress()
    started = time.monotonic()
    moved = await driver.mirror_disk("vm1", 1, target, None, None, progress)
    mirror_s = time.monotonic() - started
    assert "LOOP-DONE" not in await driver.console_log("vm1", None), "the guest stopped writing before the pivot"
    assert moved == DiskSpec(device_id=1, layer=target)
    assert progress.samples and progress.samples[-1][1] == progress.samples[-1][2] > 0

    # QEMU reads the target now; the source file is open no more; the recorded spec names the target.
    assert await disk_file(driver) == str(path_of(target))
    files = await open_files(driver)
    assert os.path.realpath(path_of(target)) in files
    assert os.path.realpath(path_of(data)) not in files
    spec = RunDir(driver.vms_dir / "vm1").read_spec()
    assert spec is not None and spec.disks[1] == moved
    assert (await driver.block_jobs("vm1")).jobs == []
    stats = await driver.vm_stats("vm1")
    assert sorted(d.device_id for d in stats.disks) == [0, 1]  # the moved disk's node is still known

    # The guest's writes after the pivot land on the target, and it verifies every block.
    end_vm1_loop(driver)
    text = await wait_console(driver, "STRATO-RUN-END integrity-verify:vdb")
    assert "STRATO-RUN-END integrity-verify:vdb rc=0" in text, text[-2000:]
    assert f"STRATO-INTEGRITY OK {BLOCKS} blocks" in text
    writes = int(re.search(r"LOOP-DONE writes (\d+)", text).group(1))  # type: ignore[union-attr]
    gens = parse_generations(re.search(r"^STRATO-INTEGRITY-GENS .*$", text, re.M).group(0))  # type: ignore[union-attr]
    assert writes > BLOCKS and max(gens.values()) > 1
    await driver.stop_vm("vm1", force=True, timeout_s=1)
    report = verify_image(path_of(target), gens)  # not one write lost on the host either
    assert report.ok and report.generations == gens, report.summary()

    # Restarted from its spec, the VM opens the moved disk (and the guest reads it).
    assert spec is not None
    await driver.start_vm(spec.model_copy(update={"guest_commands": "integrity-verify:vdb"}))
    assert await disk_file(driver) == str(path_of(target))
    assert os.path.realpath(path_of(data)) not in await open_files(driver)
    text = await wait_console(driver, "STRATO-RUN-END integrity-verify:vdb")
    assert f"STRATO-INTEGRITY OK {BLOCKS} blocks" in text, text[-2000:]
    await driver.stop_vm("vm1", force=True, timeout_s=1)
    print(f"mirror of a 16 MiB disk under guest writes: {mirror_s:.2f} s")


# --- (b) a linked clone keeps its template, from the target pool's copy ----------------------------


def build_template(path: Path) -> None:
    """A template holding integrity blocks (generation 1) and 8 MiB of other data."""
    path.parent.mkdir(parents=True, exist_ok=True)
    raw = path.with_suffix(".raw")
    with raw.open("wb") as f:
        f.write(encode_superblock(BS, BLOCKS))
        for n in range(1, BLOCKS + 1):
            f.write(encode_block(n, 1, BS))
        f.truncate(32 * MiB)
    subprocess.run(["qemu-img", "convert", "-q", "-f", "raw", "-O", "qcow2", str(raw), str(path)], check=True)
    raw.unlink()
    write_data(path, TEMPLATE_FILL_MIB, offset_mib=4)


async def test_linked_clone_moves_onto_the_copied_template(driver: QemuDriver, tiny_image: Path) -> None:
    fast = await other_pool(driver)
    base = local(driver, "tmpl/base.qcow2")
    build_template(path_of(base))
    top = local(driver, "clone.qcow2")
    await driver.create_layer(top, None, base)
    # The clone writes 8 blocks of its own; the other 56 are read from the template.
    commands = "integrity-loop:vdb:1:8,integrity-gens:vdb,sleep:25,integrity-verify:vdb"
    await start_vm(driver, tiny_image, top, commands)

    # As the server does: the frozen layer is copied to the target pool first (rebased onto its copied
    # parent; the template has none), then the top is mirrored onto the copy.
    base_copy = LayerRef(pool=fast, name="tmpl/base.qcow2")
    await driver.copy_layer(base, base_copy, None, lambda done, total: None)
    await driver.rebase_layer(base_copy, None)
    text = await wait_console(driver, "STRATO-RUN-BEGIN sleep:25")
    gens = parse_generations(re.search(r"^STRATO-INTEGRITY-GENS .*$", text, re.M).group(0))  # type: ignore[union-attr]
    assert sorted(n for n, g in gens.items() if g > 1) == list(range(1, 9))

    target = LayerRef(pool=fast, name="clone-moved.qcow2")
    moved = await driver.mirror_disk("vm1", 1, target, base_copy, None, Progress())
    assert moved.layer == target
    assert "RUN-BEGIN integrity-verify" not in await driver.console_log("vm1", None), "moved too late"
    info = await driver.layer_info(target)
    assert info.backing_file == str(path_of(base_copy))  # written as create_layer writes backing refs

    # Only the target pool's files are open: the clone's top and the template's copy.
    files = await open_files(driver)
    assert {os.path.realpath(path_of(target)), os.path.realpath(path_of(base_copy))} <= files
    assert not {os.path.realpath(path_of(base)), os.path.realpath(path_of(top))} & files

    # The guest still reads the template's blocks (and its own).
    text = await wait_console(driver, "STRATO-RUN-END integrity-verify:vdb")
    assert f"STRATO-INTEGRITY OK {BLOCKS} blocks" in text, text[-2000:]
    await driver.stop_vm("vm1", force=True, timeout_s=1)
    report = verify_image(path_of(target), gens)
    assert report.ok and report.generations == gens, report.summary()

    # The moved top holds the clone's own data, not a copy of the template.
    template_bytes = own_allocation(path_of(base))
    assert template_bytes >= TEMPLATE_FILL_MIB * MiB
    assert own_allocation(path_of(target)) <= own_allocation(path_of(top)) + MiB
    assert own_allocation(path_of(target)) < template_bytes // 4


async def test_move_after_a_live_snapshot_closes_the_frozen_layer(driver: QemuDriver, tiny_image: Path) -> None:
    """A live snapshot opens the disk's new top by blockdev-add on the old one, which stays a named node:
    after the move's pivot both old layers are closed, so their files can be removed."""
    fast = await other_pool(driver)
    frozen = local(driver, "data.qcow2")
    await driver.create_layer(frozen, 32 * MiB, None)
    write_data(path_of(frozen), 4)
    await start_vm(driver, tiny_image, frozen, None, memory_mib=64)
    top = local(driver, "data-s1.qcow2")
    await driver.snapshot_vm("vm1", [SnapshotDisk(device_id=1, new_top=top)], None, Progress())
    assert str(path_of(frozen)) in await open_files(driver)

    frozen_copy = LayerRef(pool=fast, name="data.qcow2")
    await driver.copy_layer(frozen, frozen_copy, None, Progress())
    target = LayerRef(pool=fast, name="data-s1.qcow2")
    moved = await driver.mirror_disk("vm1", 1, target, frozen_copy, None, Progress())
    assert moved.layer == target
    still = await open_files(driver)
    assert str(path_of(frozen_copy)) in still and str(path_of(target)) in still
    assert not {str(path_of(frozen)), str(path_of(top))} & still, still
    await driver.remove_layer(top, missing_ok=False)
    await driver.remove_layer(frozen, missing_ok=False)
    await driver.stop_vm("vm1", force=True, timeout_s=1)


# --- (c) cancelled: the VM stays on its source ------------------------------------------------------


async def test_cancelled_move_leaves_the_vm_on_its_source(driver: QemuDriver, tiny_image: Path) -> None:
    fast = await other_pool(driver)
    data = local(driver, "data.qcow2")
    await driver.create_layer(data, 32 * MiB, None)
    write_data(path_of(data), 16)
    await start_vm(driver, tiny_image, data, None, memory_mib=64)

    target = LayerRef(pool=fast, name="data-moved.qcow2")
    progress = Progress()
    task = asyncio.create_task(driver.mirror_disk("vm1", 1, target, None, 1 * MiB, progress))
    await progress.until(1)
    assert path_of(target).is_file()
    jobs = (await driver.block_jobs("vm1")).jobs
    assert [(j.job_id, j.kind, j.device_id, j.status) for j in jobs] == [("mirror-disk1", "mirror", 1, "running")]
    assert jobs[0].speed_bytes_per_s == MiB and 0 < jobs[0].offset < jobs[0].length
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task

    assert (await driver.get_vm("vm1")).power_state == PowerState.RUNNING
    assert (await driver.block_jobs("vm1")).jobs == []
    assert not path_of(target).exists()
    assert await disk_file(driver) == str(path_of(data))
    assert not [n for n in await driver.monitor("vm1").execute("query-named-block-nodes") if "-m" in n["node-name"]]
    spec = RunDir(driver.vms_dir / "vm1").read_spec()
    assert spec is not None and spec.disks[1].layer == data
    assert not list((driver.vms_dir / "vm1").glob("mirror-*.json"))

    # A new attempt (a retry) starts from scratch and moves the disk.
    moved = await driver.mirror_disk("vm1", 1, target, None, None, Progress())
    assert moved.layer == target and await disk_file(driver) == str(path_of(target))
    await driver.stop_vm("vm1", force=True, timeout_s=1)


# --- (d) bandwidth --------------------------------------------------------------------------------------


async def test_bandwidth_limit_and_speed_change(driver: QemuDriver, tiny_image: Path) -> None:
    fast = await other_pool(driver)
    data = local(driver, "data.qcow2")
    await driver.create_layer(data, 32 * MiB, None)
    write_data(path_of(data), 24)
    await start_vm(driver, tiny_image, data, None, memory_mib=64)
    with pytest.raises(DriverError) as refused:
        await driver.set_block_job_speed("vm1", 1, MiB)
    assert refused.value.code == ErrorCode.NOT_FOUND

    slow = 256 * 1024
    target = LayerRef(pool=fast, name="data-moved.qcow2")
    progress = Progress()
    task = asyncio.create_task(driver.mirror_disk("vm1", 1, target, None, slow, progress))
    try:
        await progress.until(1)
        first = progress.samples[-1]
        await asyncio.sleep(3)
        last = progress.samples[-1]
        # At 256 KiB/s (one 256 KiB burst allowed), 24 MiB are far from copied: about 1 MiB moved.
        assert last[1] < 4 * MiB, progress.samples
        assert last[1] - first[1] <= slow * (last[0] - first[0]) + 2 * slow, progress.samples
        assert last[2] >= 24 * MiB

        report = await driver.set_block_job_speed("vm1", 1, 8 * MiB)
        assert (report.job_id, report.device_id, report.speed_bytes_per_s) == ("mirror-disk1", 1, 8 * MiB)
        before = progress.samples[-1]
        await progress.until(before[1] + 4 * MiB, timeout=30)
        after = progress.samples[-1]
        assert (after[1] - before[1]) / (after[0] - before[0]) > 4 * slow, progress.samples  # faster now

        await driver.set_block_job_speed("vm1", 1, 0)  # unlimited: it finishes
        moved = await asyncio.wait_for(task, 60)
    finally:
        task.cancel()
    assert moved.layer == target and await disk_file(driver) == str(path_of(target))
    with pytest.raises(DriverError) as gone:
        await driver.set_block_job_speed("vm1", 1, MiB)
    assert gone.value.code == ErrorCode.NOT_FOUND
    await driver.stop_vm("vm1", force=True, timeout_s=1)


# --- a mirror that does not converge is restarted write-blocking ----------------------------------


async def test_mirror_outpaced_by_guest_writes_restarts_write_blocking(
    driver: QemuDriver, tiny_image: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The guest rewrites its blocks faster than a 32 KiB/s mirror copies them: the remaining bytes do
    not fall, so the move restarts in write-blocking mode, converges and pivots; no write is lost."""
    driver._motion = DiskMotion(driver, stall_s=3.0)
    fast = await other_pool(driver)
    data = local(driver, "data.qcow2")
    await driver.create_layer(data, 16 * MiB, None)
    commands = f"integrity-write:vdb:{BLOCKS},integrity-loop:vdb:{LOOP_S},integrity-gens:vdb,integrity-verify:vdb"
    await start_vm(driver, tiny_image, data, commands)
    await wait_console(driver, "STRATO-INTEGRITY LOOP-START")

    target = LayerRef(pool=fast, name="data-moved.qcow2")
    phases: list[str] = []  # what the agent's task report shows as its phase
    set_phase_sink(phases.append)
    with caplog.at_level(logging.INFO, logger="strato.agent.qemu.mirror"):
        moved = await asyncio.wait_for(driver.mirror_disk("vm1", 1, target, None, 32 * 1024, Progress()), 120)
    set_phase_sink(None)
    assert moved.layer == target and await disk_file(driver) == str(path_of(target))
    assert "restarting it in write-blocking mode" in caplog.text
    assert any("restarted in write-blocking mode" in p for p in phases), phases
    assert "write-blocking, speed" in caplog.text  # the second start
    assert "LOOP-DONE" not in await driver.console_log("vm1", None), "the guest stopped writing before the pivot"

    end_vm1_loop(driver)
    text = await wait_console(driver, "STRATO-RUN-END integrity-verify:vdb")
    assert f"STRATO-INTEGRITY OK {BLOCKS} blocks" in text, text[-2000:]
    gens = parse_generations(re.search(r"^STRATO-INTEGRITY-GENS .*$", text, re.M).group(0))  # type: ignore[union-attr]
    await driver.stop_vm("vm1", force=True, timeout_s=1)
    report = verify_image(path_of(target), gens)
    assert report.ok and report.generations == gens, report.summary()
