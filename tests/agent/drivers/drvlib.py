"""Helpers of the QEMU driver tests: layer names in the local pool, VM specs, killing what a test's
data dir started."""

from __future__ import annotations

import os
import signal
import uuid
from pathlib import Path

from strato.agent.drivers.qemu import QemuDriver
from strato.agent.drivers.qemu.process import RunDir, live_pid
from strato.protocol.messages import DiskSpec, LayerRef, VmSpec


def layer(drv: QemuDriver, name: str) -> LayerRef:
    return LayerRef(pool=drv.local_pool, name=name)


def vm_spec(name: str, disks: list[DiskSpec], **kw: object) -> VmSpec:
    return VmSpec.model_validate(
        {"name": name, "uuid": str(uuid.uuid4()), "cpus": 1, "memory_mib": 64, "disks": disks, **kw}
    )


def kill_qemus_in(path: Path) -> None:
    """SIGKILL every QEMU whose run dir is under `path` (a driver's data dir, or several of them)."""
    for pidfile in path.glob("**/vms/*/qemu.pid"):
        pid = live_pid(RunDir(pidfile.parent))
        if pid is not None:
            os.kill(pid, signal.SIGKILL)
