"""The contract every hypervisor driver fulfils; the agent service only talks to this."""

from __future__ import annotations

import abc
from collections.abc import Callable

from strato.protocol.messages import (
    ErrorCode,
    HostInfo,
    LayerInfo,
    LayerRef,
    PoolRef,
    PoolReport,
    StateReport,
    VmReport,
    VmSpec,
    VmStats,
)

ProgressFn = Callable[[int, int], None]
"""Called with (bytes done, bytes total) while a long operation runs."""


class DriverError(Exception):
    """A failure the agent reports to the server as a typed error."""

    def __init__(self, code: ErrorCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class Driver(abc.ABC):
    """A hypervisor driver: owns the VMs and layer files of one host."""

    @abc.abstractmethod
    async def start(self) -> None:
        """Called once when the agent starts: re-attach to VMs that are still running."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Called when the agent stops. Must never stop running VMs."""

    @abc.abstractmethod
    async def host_info(self) -> HostInfo: ...

    @abc.abstractmethod
    async def state(self, pools: list[PoolRef]) -> StateReport: ...

    @abc.abstractmethod
    async def attach_pool(self, pool: PoolRef, create: bool) -> PoolReport: ...

    @abc.abstractmethod
    async def create_layer(
        self, layer: LayerRef, size_bytes: int | None, backing: LayerRef | None
    ) -> LayerInfo:
        """Create an empty qcow2 layer, optionally on a backing layer (then size defaults to its size)."""

    @abc.abstractmethod
    async def layer_info(self, layer: LayerRef) -> LayerInfo: ...

    @abc.abstractmethod
    async def copy_layer(
        self, source: LayerRef, target: LayerRef, bandwidth: int | None, progress: ProgressFn
    ) -> LayerInfo:
        """Copy a frozen layer sparse-aware; the copy keeps the source's backing reference as is."""

    @abc.abstractmethod
    async def rebase_layer(self, layer: LayerRef, backing: LayerRef | None) -> LayerInfo: ...

    @abc.abstractmethod
    async def remove_layer(self, layer: LayerRef, missing_ok: bool) -> None: ...

    @abc.abstractmethod
    async def start_vm(self, spec: VmSpec) -> VmReport: ...

    @abc.abstractmethod
    async def stop_vm(self, name: str, force: bool, timeout_s: float) -> VmReport: ...

    @abc.abstractmethod
    async def reboot_vm(self, name: str) -> VmReport: ...

    @abc.abstractmethod
    async def get_vm(self, name: str) -> VmReport: ...

    @abc.abstractmethod
    async def vm_stats(self, name: str) -> VmStats: ...
