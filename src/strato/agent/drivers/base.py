"""The contract every hypervisor driver fulfils; the agent service only talks to this."""

from __future__ import annotations

import abc
from collections.abc import Callable
from typing import Literal

from strato.protocol.messages import (
    DiskSpec,
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
    async def create_layer(self, layer: LayerRef, size_bytes: int | None, backing: LayerRef | None) -> LayerInfo:
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

    @abc.abstractmethod
    async def remove_vm(self, name: str) -> None:
        """Forget a stopped VM (its run directory or record). Already gone is not an error (expunge
        retries); a running VM is refused with INVALID_STATE."""

    @abc.abstractmethod
    async def console_log(self, name: str, tail_bytes: int | None) -> str:
        """The end of the VM's serial console log ("" before its first start)."""

    # --- storage -----------------------------------------------------------------------------------

    @abc.abstractmethod
    async def fetch_image(
        self,
        url: str,
        target: LayerRef,
        fmt: Literal["qcow2", "raw", "iso"],
        checksum: str | None,
        progress: ProgressFn,
    ) -> LayerInfo:
        """Download (http/https) or copy (file://) an image into a new layer file, verify its checksum,
        refuse qcow2 images with a backing or external data file, convert raw to qcow2, keep ISOs as is.
        Nothing is left behind on failure or cancellation."""

    @abc.abstractmethod
    async def convert_layer(self, source: LayerRef, target: LayerRef, progress: ProgressFn) -> LayerInfo:
        """Flatten the chain ending at `source` into a new standalone qcow2 `target`."""

    @abc.abstractmethod
    async def resize_layer(
        self, layer: LayerRef, size_bytes: int, vm_name: str | None, device_id: int | None
    ) -> LayerInfo:
        """Grow a layer (shrinking is BAD_REQUEST); live through the VM when it runs with that disk."""

    @abc.abstractmethod
    async def build_config_drive(
        self,
        target: LayerRef,
        hostname: str,
        instance_id: str,
        user_data: str | None,
        public_keys: list[str],
    ) -> LayerInfo:
        """Write a config drive ISO (label config-2) to `target`, replacing an older one."""

    # --- devices of running VMs --------------------------------------------------------------------

    @abc.abstractmethod
    async def attach_disk(self, vm_name: str, disk: DiskSpec) -> VmReport:
        """Hot-plug a disk into a running VM and record it in the VM's spec."""

    @abc.abstractmethod
    async def detach_disk(self, vm_name: str, device_id: int) -> VmReport:
        """Hot-unplug a disk; INVALID_STATE (disk left attached) when the guest does not release it."""

    @abc.abstractmethod
    async def change_cdrom(self, vm_name: str, path: str | None) -> VmReport:
        """Insert an ISO into (path) or eject (None) the user CD drive of a running VM."""
