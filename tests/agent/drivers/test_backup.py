"""Volume snapshots of a running disk on the QEMU driver (BackupDisk, `blockdev-backup sync=full`)
against real QEMU and the tiny guest under TCG: taken while the guest rewrites its integrity blocks, the
copy is a flat, sparse qcow2 in which every block verifies (one instant: no torn block), the VM's chain
is left as it was, and a refused backup (a target that exists, a disk that is not there, a VM that is
not running) leaves no file, no job and no block node behind."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from drvlib import wait_console
from test_snapshots import boot, chain_files, local, noop, path_of, real

from strato.agent.drivers.base import DriverError
from strato.agent.drivers.qemu import QemuDriver
from strato.agent.drivers.qemu.process import RunDir
from strato.image.integrity import verify_image
from strato.protocol.messages import ErrorCode, PoolRef

pytestmark = [
    pytest.mark.qemu,
    pytest.mark.anyio,
    pytest.mark.skipif(shutil.which("qemu-system-x86_64") is None, reason="needs qemu-system-x86_64"),
]

MiB = 1024 * 1024
BLOCKS = 48


async def test_backup_of_a_running_disk(driver: QemuDriver, tiny_image: Path, tmp_path: Path) -> None:
    data = local(driver, "data.qcow2")
    await driver.create_layer(data, 64 * MiB, None)
    await boot(driver, tiny_image, f"integrity-write:vdb:{BLOCKS},integrity-loop:vdb:40,sleep:600", data)
    await wait_console(driver, "STRATO-INTEGRITY LOOP-START")
    store = PoolRef(id="store", path=str(tmp_path / "store"))
    target = local(driver, "x").model_copy(update={"pool": store, "name": "snapshots/a/v/s1.qcow2"})

    seen: list[tuple[int, int]] = []
    info = await driver.backup_disk("vm1", 1, target, lambda done, total: seen.append((done, total)))
    assert info.format == "qcow2" and info.virtual_size == 64 * MiB and info.backing_file is None
    assert info.physical_size < 8 * MiB, "zero ranges stay sparse"
    assert seen and seen[-1][0] == seen[-1][1] > 0
    report = verify_image(path_of(target))
    assert report.ok and report.count == BLOCKS, report.summary()
    assert await chain_files(driver, 1) == [real(data)], "the VM's chain is left as it was"
    run = RunDir(driver.vms_dir / "vm1")

    async def leftovers() -> tuple[list[object], list[str]]:
        jobs = await driver._qmp(run, "query-jobs")
        nodes = [n["node-name"] for n in await driver._qmp(run, "query-named-block-nodes", {"flat": True})]
        return jobs, [n for n in nodes if "backup" in n]

    assert await leftovers() == ([], [])

    # Refused: the target exists; no such disk; a VM that is not running. Nothing is left behind.
    before = sorted(p.name for p in path_of(target).parent.iterdir())
    with pytest.raises(DriverError) as exists:
        await driver.backup_disk("vm1", 1, target, noop)
    assert exists.value.code == ErrorCode.ALREADY_EXISTS
    other = target.model_copy(update={"name": "snapshots/a/v/s2.qcow2"})
    with pytest.raises(DriverError) as missing:
        await driver.backup_disk("vm1", 7, other, noop)
    assert missing.value.code == ErrorCode.NOT_FOUND
    assert sorted(p.name for p in path_of(target).parent.iterdir()) == before
    assert await leftovers() == ([], [])
    await driver.stop_vm("vm1", True, 5)
    with pytest.raises(DriverError) as stopped:
        await driver.backup_disk("vm1", 1, other, noop)
    assert stopped.value.code == ErrorCode.INVALID_STATE
    assert sorted(p.name for p in path_of(target).parent.iterdir()) == before
