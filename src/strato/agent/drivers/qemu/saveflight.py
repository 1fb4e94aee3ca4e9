"""What a VM snapshot or a hibernate save had begun when the agent died, and how a new agent life ends it.

A memory save outlives the agent that started it: QEMU goes on writing the file and then holds the guest
paused at `pre-switchover`, waiting for a `migrate-continue` nobody will send; a snapshot may also have
opened new top layers. So before it touches QEMU, snapshot_vm / save_vm write an in-flight record in the
VM's run directory (the new tops, their nodes, the memory file), mark it once the disks' transaction
returned, and remove it at the end. At start, the agent ends what a record names, asking QEMU what is
true rather than trusting the record:

- the migration still running is cancelled, and a guest paused by it runs again;
- the disks' transaction did not happen: the new nodes are closed, the new files removed;
- it did: the new tops stay and the VM's spec names them (what the server records when it finishes the
  snapshot forward);
- the memory file stays only if QEMU completed a snapshot's save (the server finds it and keeps the
  memory); otherwise, and always for a hibernate (whose guest now runs on), it is removed (the server
  then records a disk-only snapshot, or leaves the VM Running).

With the VM's QEMU gone too, only files are left to tidy: the record says whether the transaction ran.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from strato.agent.drivers.base import DriverError
from strato.agent.drivers.qemu import memstate
from strato.agent.drivers.qemu.migration import _wait_migration
from strato.agent.drivers.qemu.process import RunDir
from strato.protocol.messages import LayerRef

if TYPE_CHECKING:
    from strato.agent.drivers.qemu.driver import QemuDriver

log = logging.getLogger("strato.agent.qemu.saveflight")

RECORD = "save-inflight.json"
_RUNNING = {"setup", "active", "pre-switchover", "device", "postcopy-active", "wait-unplug", "cancelling"}


def _path(run: RunDir) -> Path:
    return run.path / RECORD


def write(run: RunDir, disks: list[dict[str, Any]], memory: Path | None, applied: bool = False) -> None:
    """disks: {"device_id", "path", "nodes": [file, fmt], "new_top": LayerRef as JSON} per new top."""
    tmp = _path(run).with_suffix(".tmp")
    tmp.write_text(json.dumps({"disks": disks, "memory": str(memory) if memory else None, "applied": applied}))
    os.replace(tmp, _path(run))


def clear(run: RunDir) -> None:
    _path(run).unlink(missing_ok=True)


def read(run: RunDir) -> dict[str, Any] | None:
    try:
        data = json.loads(_path(run).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def tidy_files(run: RunDir) -> None:
    """The VM's QEMU is gone: remove the memory file, and the new tops unless the transaction ran."""
    record = read(run)
    if record is None:
        return
    if record.get("memory"):
        Path(record["memory"]).unlink(missing_ok=True)
    if not record.get("applied"):
        for disk in record.get("disks", []):
            Path(disk["path"]).unlink(missing_ok=True)
    clear(run)


async def recover(drv: QemuDriver, run: RunDir) -> None:
    """The VM runs: end the save a previous agent life left (see the module's docstring)."""
    record = read(run)
    if record is None:
        return
    name = run.path.name
    monitor = drv.monitor(name)
    status = str((await monitor.execute("query-migrate")).get("status", "none"))
    completed = status == "completed"
    if status in _RUNNING:
        await monitor.execute("migrate_cancel")
        with contextlib.suppress(DriverError):
            await _wait_migration(monitor, {"cancelled", "failed", "none"}, memstate.ROLLBACK_WAIT_S)
    disks = record.get("disks", [])
    applied = False
    for disk in disks:
        top = await drv._disk_top(run, int(disk["device_id"]))
        applied = applied or (top is not None and top[0] == disk["nodes"][1])
    if applied:
        _name_new_tops(run, disks)
    else:
        for disk in disks:
            with contextlib.suppress(DriverError):
                await drv._blockdev_del(run, disk["nodes"][1], disk["nodes"][0])
            Path(disk["path"]).unlink(missing_ok=True)
    if record.get("memory") and not (completed and applied):
        # Only a snapshot's completed save still matches what it was taken with (its frozen disks); a
        # hibernate's is stale once the guest runs on.
        Path(record["memory"]).unlink(missing_ok=True)
    if (await monitor.execute("query-status")).get("status") in memstate._PAUSED:
        await memstate.cont(monitor)
    clear(run)
    log.warning(
        "VM %s: ended the memory save of a previous agent life (migration %s, disks %s)",
        name, status, "frozen, kept" if applied else "not frozen, new tops removed",
    )  # fmt: skip


def _name_new_tops(run: RunDir, disks: list[dict[str, Any]]) -> None:
    spec = run.read_spec()
    if spec is None:
        return
    new = {int(d["device_id"]): LayerRef.model_validate(d["new_top"]) for d in disks}
    spec.disks = [d.model_copy(update={"layer": new[d.device_id]}) if d.device_id in new else d for d in spec.disks]
    run.write_spec(spec)
