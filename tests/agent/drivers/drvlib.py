"""Helpers of the QEMU driver tests: layer names in the local pool, VM specs, waiting for the console."""

from __future__ import annotations

import asyncio
import uuid

from helpers.console import guest_timer
from strato.agent.drivers.qemu import QemuDriver
from strato.agent.drivers.qemu.process import RunDir, live_pid
from strato.protocol.messages import DiskSpec, LayerRef, VmSpec


def layer(drv: QemuDriver, name: str) -> LayerRef:
    return LayerRef(pool=drv.local_pool, name=name)


def vm_spec(name: str, disks: list[DiskSpec], **kw: object) -> VmSpec:
    return VmSpec.model_validate(
        {"name": name, "uuid": str(uuid.uuid4()), "cpus": 1, "memory_mib": 64, "disks": disks, **kw}
    )


async def wait_console(drv: QemuDriver, needle: str, timeout: float = 120, name: str = "vm1") -> str:
    """The console once a complete line contains `needle` (patient with a starved TCG guest)."""
    run = RunDir(drv.vms_dir / name)
    over = guest_timer(lambda: live_pid(run), timeout)
    while True:
        text = await drv.console_log(name, None)
        text = text[: text.rfind("\n") + 1]
        if needle in text:
            return text
        assert not over(), f"{needle!r} not on the console:\n{text[-3000:]}"
        await asyncio.sleep(0.3)
