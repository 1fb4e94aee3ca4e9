"""VM snapshots on the QEMU driver (its Snapshots role) against real QEMU and the tiny guest under TCG:
two disks frozen in one transaction while the guest writes, a failed or cancelled snapshot that leaves
the VM on its old tops, live stream and commit (active and not) with the data intact and the chain as
QEMU holds it matching the files, a memory snapshot restored without a second boot, hibernate, and the
offline merges.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import re
import shutil
import subprocess
import uuid
from pathlib import Path

import pytest
from drvlib import wait_console

from strato.agent.drivers.base import DriverError
from strato.agent.drivers.qemu import QemuDriver, snapshots
from strato.agent.drivers.qemu.merge import disk_chain
from strato.agent.drivers.qemu.process import RunDir
from strato.agent.drivers.roles import set_phase_sink
from strato.image.integrity import parse_generations, verify_image
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
BLOCKS = 48


def local(drv: QemuDriver, name: str) -> LayerRef:
    return LayerRef(pool=drv.local_pool, name=name)


def path_of(ref: LayerRef) -> Path:
    return Path(ref.pool.path) / ref.name


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def noop(done: int, total: int) -> None:
    pass


async def boot(drv: QemuDriver, image: Path, commands: str, data: LayerRef | None = None) -> VmSpec:
    """vm1: the tiny guest on a linked clone (device 0), optionally with a data disk (device 1, vdb)."""
    images = PoolRef(id="images", path=str(image.parent))
    root = local(drv, "root.qcow2")
    await drv.create_layer(root, None, LayerRef(pool=images, name=image.name))
    disks = [DiskSpec(device_id=0, layer=root)]
    if data is not None:
        disks.append(DiskSpec(device_id=1, layer=data))
    spec = VmSpec(name="vm1", uuid=str(uuid.uuid4()), cpus=1, memory_mib=128, disks=disks, guest_commands=commands)
    assert (await drv.start_vm(spec)).power_state == PowerState.RUNNING
    return spec


async def top_file(drv: QemuDriver, device_id: int) -> str:
    top = await drv._disk_top(RunDir(drv.vms_dir / "vm1"), device_id)
    assert top is not None
    return top[1]


async def chain_files(drv: QemuDriver, device_id: int) -> list[str]:
    """The disk's chain as QEMU holds it, top first."""
    return [node.path for node in await disk_chain(drv, RunDir(drv.vms_dir / "vm1"), device_id)]


def header_chain(path: Path) -> list[str]:
    """The chain as the files' headers name it, top first."""
    out = subprocess.run(
        ["qemu-img", "info", "-U", "--backing-chain", "--output=json", str(path)],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return [os.path.realpath(entry["filename"]) for entry in json.loads(out)]


def same_data(a: Path, b: Path) -> bool:
    return subprocess.run(["qemu-img", "compare", "-U", str(a), str(b)], capture_output=True).returncode == 0


def flat_copy(source: Path, target: Path) -> None:
    subprocess.run(["qemu-img", "convert", "-U", "-O", "qcow2", str(source), str(target)], check=True)


def real(ref: LayerRef) -> str:
    return os.path.realpath(path_of(ref))


# --- disks frozen in one transaction; failures; live merges -----------------------------------------


async def test_disk_snapshot_failures_and_live_merges(driver: QemuDriver, tiny_image: Path) -> None:
    data = local(driver, "data.qcow2")
    await driver.create_layer(data, 16 * MiB, None)
    commands = f"integrity-write:vdb:{BLOCKS},integrity-loop:vdb:6,integrity-gens:vdb,integrity-verify:vdb"
    await boot(driver, tiny_image, commands, data)
    root = local(driver, "root.qcow2")
    await wait_console(driver, "STRATO-INTEGRITY LOOP-START")

    # A new top that cannot be created: nothing changes, no new file is left.
    (Path(driver.local_pool.path) / "blocker").write_text("a file, not a directory")
    bad = [
        SnapshotDisk(device_id=0, new_top=local(driver, "root-x.qcow2")),
        SnapshotDisk(device_id=1, new_top=local(driver, "blocker/data-x.qcow2")),
    ]
    with pytest.raises(DriverError):
        await driver.snapshot_vm("vm1", bad, None, noop)
    assert not path_of(bad[0].new_top).exists()
    assert await top_file(driver, 0) == real(root) and await top_file(driver, 1) == real(data)

    # Both disks frozen in one transaction while the guest writes.
    s1 = [
        SnapshotDisk(device_id=0, new_top=local(driver, "root-s1.qcow2")),
        SnapshotDisk(device_id=1, new_top=local(driver, "data-s1.qcow2")),
    ]
    taken = await driver.snapshot_vm("vm1", s1, None, noop)
    assert [d.layer for d in taken.disks] == [s1[0].new_top, s1[1].new_top]
    assert taken.memory is None
    assert await top_file(driver, 0) == real(s1[0].new_top)
    assert await chain_files(driver, 1) == [real(s1[1].new_top), real(data)]
    spec = RunDir(driver.vms_dir / "vm1").read_spec()
    assert spec is not None and [d.layer for d in spec.disks] == [s1[0].new_top, s1[1].new_top]
    frozen = sha(path_of(data))
    text = await wait_console(driver, "STRATO-INTEGRITY-GENS")
    gens = parse_generations(re.search(r"^STRATO-INTEGRITY-GENS .*$", text, re.M).group(0))  # type: ignore[union-attr]
    assert sha(path_of(data)) == frozen, "the frozen layer was written after the snapshot"
    assert max(gens.values()) > 1
    await wait_console(driver, "STRATO-RUN-END integrity-verify:vdb")

    # Cancelled at the freeze: back on the old tops, no new file.
    s2 = [
        SnapshotDisk(device_id=0, new_top=local(driver, "root-s2.qcow2")),
        SnapshotDisk(device_id=1, new_top=local(driver, "data-s2.qcow2")),
    ]

    def cancel_at_freeze(phase: str) -> None:
        if phase.startswith("freezing"):
            task.cancel()

    set_phase_sink(cancel_at_freeze)  # the task copies this context: its phases come here
    try:
        task = asyncio.ensure_future(driver.snapshot_vm("vm1", s2, None, noop))
    finally:
        set_phase_sink(None)
    with pytest.raises(asyncio.CancelledError):
        await task
    for item, old in zip(s2, s1, strict=True):
        assert not path_of(item.new_top).exists()
        assert await top_file(driver, item.device_id) == real(old.new_top)
    assert (await driver.get_vm("vm1")).power_state == PowerState.RUNNING

    # Two more snapshots of the data disk: data-s3 -> data-s2 -> data-s1 -> data.
    for name in ("data-s2", "data-s3"):
        await driver.snapshot_vm("vm1", [SnapshotDisk(device_id=1, new_top=local(driver, f"{name}.qcow2"))], None, noop)
    s2l, s3l, s1l = local(driver, "data-s2.qcow2"), local(driver, "data-s3.qcow2"), s1[1].new_top
    assert await chain_files(driver, 1) == [real(s3l), real(s2l), real(s1l), real(data)]
    reference = Path(driver.data_dir) / "reference.qcow2"
    flat_copy(path_of(s3l), reference)

    # Commit, not active: data-s1 into data; data-s2 now rests on data.
    disk = await driver.commit_disk("vm1", 1, s1l, data, noop)
    assert disk.layer == s3l
    assert await chain_files(driver, 1) == [real(s3l), real(s2l), real(data)]
    assert header_chain(path_of(s3l)) == [real(s3l), real(s2l), real(data)]
    assert same_data(reference, path_of(s3l))
    await driver.remove_layer(s1l, missing_ok=False)  # closed by QEMU: removable

    # Stream data-s2 into data-s3 (base data).
    disk = await driver.stream_disk("vm1", 1, s3l, data, noop)
    assert await chain_files(driver, 1) == [real(s3l), real(data)]
    assert header_chain(path_of(s3l)) == [real(s3l), real(data)]
    assert same_data(reference, path_of(s3l))
    await driver.remove_layer(s2l, missing_ok=False)

    # Active commit: data-s3 into data, the VM writes to data now.
    disk = await driver.commit_disk("vm1", 1, s3l, data, noop)
    assert disk == DiskSpec(device_id=1, layer=data)
    assert await chain_files(driver, 1) == [real(data)]
    assert same_data(reference, path_of(data))
    await driver.remove_layer(s3l, missing_ok=False)
    spec = RunDir(driver.vms_dir / "vm1").read_spec()
    assert spec is not None and spec.disks[1].layer == data
    assert (await driver.get_vm("vm1")).power_state == PowerState.RUNNING

    # Bad merges are refused and change nothing.
    with pytest.raises(DriverError) as refused:
        await driver.commit_disk("vm1", 1, s1l, data, noop)
    assert refused.value.code == ErrorCode.BAD_REQUEST
    await driver.stop_vm("vm1", force=True, timeout_s=1)
    report = verify_image(path_of(data), gens)
    assert report.ok and report.generations == gens, report.summary()


# --- memory: a live snapshot restored without a second boot; hibernate -----------------------------


async def test_memory_snapshot_restore_and_hibernate(
    driver: QemuDriver, tiny_image: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spec = await boot(driver, tiny_image, "sleep:6,sleep:1")
    root = local(driver, "root.qcow2")
    await wait_console(driver, "STRATO-RUN-BEGIN sleep:6")

    # The disk freeze fails inside the guest's pause (its new top vanished just before): the memory
    # save, already let go at the same time, ends too, and the roll-back leaves no memory file, no
    # new top, the old top in use and the guest running.
    monkeypatch.setattr(snapshots, "_new_nodes", lambda device_id: ("fail-file", "fail-fmt"))

    breaking: list[asyncio.Future[object]] = []

    def break_at_freeze(phase: str) -> None:
        if phase.startswith("freezing"):  # issued before the transaction: QMP keeps the order
            breaking.append(
                asyncio.ensure_future(driver.monitor("vm1").execute("blockdev-del", {"node-name": "fail-fmt"}))
            )

    failing, failed_memory = local(driver, "root-f.qcow2"), local(driver, "fail.vmstate")
    set_phase_sink(break_at_freeze)
    try:
        with pytest.raises(DriverError):
            await driver.snapshot_vm("vm1", [SnapshotDisk(device_id=0, new_top=failing)], failed_memory, noop)
    finally:
        set_phase_sink(None)
    monkeypatch.undo()
    await asyncio.gather(*breaking)
    assert not path_of(failing).exists() and not path_of(failed_memory).exists()
    assert await top_file(driver, 0) == real(root)
    assert (await driver.get_vm("vm1")).power_state == PowerState.RUNNING

    memory = local(driver, "snap1.vmstate")
    samples: list[tuple[int, int]] = []
    taken = await driver.snapshot_vm(
        "vm1",
        [SnapshotDisk(device_id=0, new_top=local(driver, "root-s1.qcow2"))],
        memory,
        lambda done, total: samples.append((done, total)),
    )
    assert taken.memory is not None and taken.memory.physical_size > 0
    assert 0 < taken.paused_ms < 5000
    assert samples and samples[-1][0] == samples[-1][1] > 0
    assert (await driver.get_vm("vm1")).power_state == PowerState.RUNNING
    assert await top_file(driver, 0) == real(local(driver, "root-s1.qcow2"))
    await driver.stop_vm("vm1", force=True, timeout_s=1)

    # Revert: a new empty top on the frozen layer, and the memory of that instant.
    revert = local(driver, "root-r1.qcow2")
    await driver.create_layer(revert, None, root)
    reverted = spec.model_copy(update={"disks": [DiskSpec(device_id=0, layer=revert)]})
    report = await driver.restore_vm(reverted, memory, noop)
    assert report.power_state == PowerState.RUNNING
    text = await wait_console(driver, "STRATO-READY")
    assert "STRATO-RUN-END sleep:6 rc=0" in text and "STRATO-TINY-BOOTED" not in text, text

    # Hibernate the restored VM, then resume it from that file: again no boot.
    saved = local(driver, "hibernate.vmstate")
    info = await driver.save_vm("vm1", saved, noop)
    assert info.physical_size > 0 and path_of(saved).is_file()
    assert (await driver.get_vm("vm1")).power_state == PowerState.STOPPED
    with pytest.raises(DriverError) as exists:
        await driver.save_vm("vm1", saved, noop)
    assert exists.value.code in (ErrorCode.INVALID_STATE, ErrorCode.ALREADY_EXISTS)
    report = await driver.restore_vm(reverted, saved, noop)
    assert report.power_state == PowerState.RUNNING
    await asyncio.sleep(1)
    assert "STRATO-TINY-BOOTED" not in await driver.console_log("vm1", None)
    await driver.stop_vm("vm1", force=True, timeout_s=1)


# --- offline merges ----------------------------------------------------------------------------------


def qemu_io_write(path: Path, pattern: int, offset_mib: int, mib: int) -> None:
    subprocess.run(
        ["qemu-io", "-f", "qcow2", "-c", f"write -P {pattern} {offset_mib}M {mib}M", str(path)],
        check=True,
        capture_output=True,
    )


async def test_offline_commit_and_stream(driver: QemuDriver) -> None:
    base, mid, top = (local(driver, f"{n}.qcow2") for n in ("base", "mid", "top"))
    await driver.create_layer(base, 32 * MiB, None)
    qemu_io_write(path_of(base), 0x11, 0, 4)
    await driver.create_layer(mid, None, base)
    qemu_io_write(path_of(mid), 0x22, 2, 4)
    await driver.create_layer(top, None, mid)
    qemu_io_write(path_of(top), 0x33, 5, 2)
    reference = Path(driver.data_dir) / "reference.qcow2"
    flat_copy(path_of(top), reference)

    samples: list[tuple[int, int]] = []
    info = await driver.stream_layer(top, base, lambda d, t: samples.append((d, t)))
    assert info.backing_file is not None and os.path.realpath(info.backing_file) == real(base)
    assert header_chain(path_of(top)) == [real(top), real(base)]
    assert same_data(reference, path_of(top))
    assert samples and samples[-1][0] == samples[-1][1]

    info = await driver.commit_layer(top, base, noop)
    assert info.name == base.name
    assert same_data(reference, path_of(base)) and same_data(reference, path_of(top))

    info = await driver.stream_layer(top, None, noop)
    assert info.backing_file is None and same_data(reference, path_of(top))
    with pytest.raises(DriverError) as refused:
        await driver.commit_layer(top, base, noop)  # no backing any more
    assert refused.value.code == ErrorCode.BAD_REQUEST
