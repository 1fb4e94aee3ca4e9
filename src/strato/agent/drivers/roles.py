"""The driver contract, split by role. A driver inherits the roles it serves and nothing else: the
agent serves a command only through a driver that has the command's role (see `strato.protocol.declare`),
and a driver may claim a capability only if it has the roles that capability needs (`base.check_driver`).

Each method's parameters are named after the fields of the command it serves, so the agent's dispatch
can pass the command's fields in order; a long-running command's method also takes a progress callback.
"""

from __future__ import annotations

import abc
import contextvars
from collections.abc import Callable
from typing import ClassVar, Literal

from strato.protocol.capabilities import DriverCapabilities
from strato.protocol.messages import (
    BlockJobOutcome,
    ConsoleLog,
    DiskSpec,
    ErrorCode,
    HostInfo,
    IncomingDisk,
    LayerInfo,
    LayerRef,
    MigrationOutcome,
    NicSpec,
    PoolRef,
    PoolReport,
    Role,
    SnapshotDisk,
    SnapshotTaken,
    StateReport,
    VmReport,
    VmSpec,
    VmStats,
)
from strato.protocol.motion import BlockJobList, BlockJobReport, IncomingVm, MigrationReport

ProgressFn = Callable[[int, int], None]
"""Called with (bytes done, bytes total) while a long operation runs."""

PhaseFn = Callable[[str], None]
_phase_sink: contextvars.ContextVar[PhaseFn | None] = contextvars.ContextVar("strato_phase_sink", default=None)


def report_phase(text: str) -> None:
    """Says what a long command is doing now (e.g. a mirror restarted in write-blocking mode), shown in
    the task's report next to its progress. A context variable rather than a second callback so that the
    role methods' signatures stay the protocol's; outside a task it goes nowhere."""
    sink = _phase_sink.get()
    if sink is not None:
        sink(text)


def set_phase_sink(sink: PhaseFn | None) -> contextvars.Token[PhaseFn | None]:
    """The agent's task registry routes report_phase of the task running in this context to its report."""
    return _phase_sink.set(sink)


class DriverError(Exception):
    """A failure the agent reports to the server as a typed error."""

    def __init__(self, code: ErrorCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class Lifecycle(abc.ABC):
    """The agent's own start and stop, the host's description, and VMs from start to removal."""

    capabilities: ClassVar[DriverCapabilities]
    """What this driver can do, declared by each driver class, truthfully."""

    @abc.abstractmethod
    async def start(self) -> None:
        """Called once when the agent starts: re-attach to VMs that are still running."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Called when the agent stops. Must never stop running VMs."""

    @abc.abstractmethod
    async def host_info(self) -> HostInfo:
        """The host's resources and local pool (capabilities are added by `host_report`)."""

    @abc.abstractmethod
    async def state(self, pools: list[PoolRef]) -> StateReport:
        """Every VM the host knows with its power state, and the given pools' capacity."""

    @abc.abstractmethod
    async def start_vm(self, spec: VmSpec) -> VmReport: ...

    @abc.abstractmethod
    async def stop_vm(self, name: str, force: bool, timeout_s: float) -> VmReport:
        """Shut down (ACPI, then kill after `timeout_s`) or kill at once when `force`. A stopped VM
        is reported stopped, not refused."""

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

    # --- what the commands call: the abstract methods above, with what every driver adds ---------------

    async def host_report(self) -> HostInfo:
        """Host info with this driver's capabilities (get_host_info)."""
        info = await self.host_info()
        return info.model_copy(update={"capabilities": self.capabilities})

    async def state_report(self, pools: list[PoolRef]) -> StateReport:
        """State with this driver's capabilities (get_state): the monitor keeps them current."""
        report = await self.state(pools)
        return report.model_copy(update={"capabilities": self.capabilities})

    async def console(self, name: str, tail_bytes: int | None) -> ConsoleLog:
        """The console log as its answer (get_console_log)."""
        if tail_bytes is not None and tail_bytes < 0:
            raise DriverError(ErrorCode.BAD_REQUEST, "tail_bytes must be >= 0")
        return ConsoleLog(name=name, text=await self.console_log(name, tail_bytes))


class Layers(abc.ABC):
    """Pools, layer files (qcow2 chains, ISOs, config drives) and the disks and CD of running VMs."""

    @abc.abstractmethod
    async def attach_pool(self, pool: PoolRef, create: bool) -> PoolReport: ...

    @abc.abstractmethod
    async def create_layer(self, layer: LayerRef, size_bytes: int | None, backing: LayerRef | None) -> LayerInfo:
        """Create an empty qcow2 layer, optionally on a backing layer (then size defaults to its size)."""

    @abc.abstractmethod
    async def layer_info(self, layer: LayerRef) -> LayerInfo: ...

    @abc.abstractmethod
    async def copy_layer(
        self, source: LayerRef, target: LayerRef, bandwidth_bytes_per_s: int | None, progress: ProgressFn
    ) -> LayerInfo:
        """Copy a frozen layer sparse-aware; the copy keeps the source's backing reference as is."""

    @abc.abstractmethod
    async def rebase_layer(self, layer: LayerRef, backing: LayerRef | None) -> LayerInfo: ...

    @abc.abstractmethod
    async def remove_layer(self, layer: LayerRef, missing_ok: bool) -> None: ...

    @abc.abstractmethod
    async def fetch_image(
        self,
        url: str,
        target: LayerRef,
        format: Literal["qcow2", "raw", "iso"],
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

    @abc.abstractmethod
    async def attach_disk(self, vm_name: str, disk: DiskSpec) -> VmReport:
        """Hot-plug a disk into a running VM and record it in the VM's spec."""

    @abc.abstractmethod
    async def detach_disk(self, vm_name: str, device_id: int) -> VmReport:
        """Hot-unplug a disk; INVALID_STATE (disk left attached) when the guest does not release it."""

    @abc.abstractmethod
    async def attach_nic(self, vm_name: str, nic: NicSpec) -> VmReport:
        """Hot-plug a NIC on its (existing) tap into a running VM and record it in the VM's spec."""

    @abc.abstractmethod
    async def detach_nic(self, vm_name: str, mac: str) -> VmReport:
        """Hot-unplug the NIC with this MAC; INVALID_STATE (NIC left in place) when the guest keeps it."""

    @abc.abstractmethod
    async def change_cdrom(self, vm_name: str, path: str | None) -> VmReport:
        """Insert an ISO into (path) or eject (None) the user CD drive of a running VM."""


class BlockJobs(abc.ABC):
    """Block jobs on the disks of a running VM: the base of live storage motion (and later snapshots).

    A long method runs its job to the end, reporting progress; cancelling the agent task cancels the
    job and leaves the VM on its old layers (a mirror's target file is removed)."""

    @abc.abstractmethod
    async def mirror_disk(
        self,
        vm_name: str,
        device_id: int,
        target: LayerRef,
        target_backing: LayerRef | None,
        bandwidth_bytes_per_s: int | None,
        progress: ProgressFn,
    ) -> DiskSpec:
        """Create `target` on `target_backing` (the frozen chain already copied to the target pool),
        mirror the disk's top layer onto it (sync top) until both are in sync, then switch the VM to
        the target chain; answers the disk as the VM now has it. The source files are left alone."""

    @abc.abstractmethod
    async def set_block_job_speed(self, vm_name: str, device_id: int, bandwidth_bytes_per_s: int) -> BlockJobReport:
        """Change the speed limit of the disk's running job (0: unlimited)."""

    @abc.abstractmethod
    async def block_jobs(self, vm_name: str) -> BlockJobList:
        """The VM's jobs as QEMU reports them: ground truth after an agent or server restart."""

    @abc.abstractmethod
    async def cancel_block_job(self, vm_name: str, device_id: int, target: LayerRef | None) -> BlockJobOutcome:
        """Stop the disk's move (the running task, or what an earlier agent life left) and answer where
        the disk is: source (target closed and removed) or target (pivoted; recorded as the disk's
        layer). Idempotent."""


class MigrationSource(abc.ABC):
    """Sends a running VM to another host whose agent prepared it (`MigrationTarget`)."""

    @abc.abstractmethod
    async def migrate_vm(
        self,
        name: str,
        incoming: IncomingVm,
        bandwidth_bytes_per_s: int | None,
        progress: ProgressFn,
    ) -> VmReport:
        """Mirror the VM's disks into the target's NBD exports, then migrate its state; answers the VM
        stopped here once the target runs it. Cancelled or failed: the VM keeps running here."""

    @abc.abstractmethod
    async def migration_status(self, name: str) -> MigrationReport:
        """The migration's progress (query-migrate): ground truth after a restart."""

    @abc.abstractmethod
    async def cancel_migration(self, name: str) -> MigrationOutcome:
        """Stop the VM's outgoing migration (the running task, or a migration QEMU still runs after an
        agent restart) and answer whether the VM is still here or has left. Idempotent."""


class MigrationTarget(abc.ABC):
    """Receives a VM: pulls frozen layers from the source host, prepares the VM paused with NBD exports
    of its new top layers, finishes or rolls back."""

    @abc.abstractmethod
    async def pull_layer(
        self,
        source_agent_url: str,
        source_token: str,
        source: LayerRef,
        target: LayerRef,
        bandwidth_bytes_per_s: int | None,
        progress: ProgressFn,
    ) -> LayerInfo:
        """Copy a frozen layer from another host's agent into `target`, sparse, keeping its backing
        reference as is; nothing is left behind on failure or cancellation."""

    @abc.abstractmethod
    async def prepare_incoming(self, spec: VmSpec, disks: list[IncomingDisk], listen_host: str) -> IncomingVm:
        """Start the VM waiting for an incoming migration; the `disks` (new, empty top layers on the
        target's pools, as the spec names them, created here on their backing) exported over NBD."""

    @abc.abstractmethod
    async def finish_incoming(self, name: str) -> VmReport:
        """The migration completed: stop the NBD exports and let the VM run here."""

    @abc.abstractmethod
    async def abort_incoming(self, name: str) -> None:
        """Roll back at the target: kill the waiting VM and remove its new top layers (idempotent)."""


class Snapshots(abc.ABC):
    """VM snapshots as layers: freeze a running VM's disks (and its memory) at one instant, start a VM from
    a memory file, and merge two adjacent layers of a chain, live or offline."""

    @abc.abstractmethod
    async def snapshot_vm(
        self, vm_name: str, disks: list[SnapshotDisk], memory: LayerRef | None, progress: ProgressFn
    ) -> SnapshotTaken:
        """Freeze the disks' tops in one transaction onto new tops (with memory: after a live RAM save)."""

    @abc.abstractmethod
    async def save_vm(self, vm_name: str, memory: LayerRef, progress: ProgressFn) -> LayerInfo:
        """Hibernate: the RAM to a file, then the VM stopped."""

    @abc.abstractmethod
    async def restore_vm(self, spec: VmSpec, memory: LayerRef, progress: ProgressFn) -> VmReport:
        """Start a VM from a memory file, running on from where it was written."""

    @abc.abstractmethod
    async def stream_disk(
        self, vm_name: str, device_id: int, into: LayerRef, base: LayerRef | None, progress: ProgressFn
    ) -> DiskSpec:
        """Live: copy the layers between `into` and `base` into `into`; `base` becomes its backing."""

    @abc.abstractmethod
    async def commit_disk(
        self, vm_name: str, device_id: int, top: LayerRef, base: LayerRef, progress: ProgressFn
    ) -> DiskSpec:
        """Live: copy `top` into its backing `base` and drop `top` from the chain."""

    @abc.abstractmethod
    async def commit_layer(self, top: LayerRef, base: LayerRef, progress: ProgressFn) -> LayerInfo:
        """Offline: copy `top` into its backing `base`."""

    @abc.abstractmethod
    async def stream_layer(self, layer: LayerRef, base: LayerRef | None, progress: ProgressFn) -> LayerInfo:
        """Offline: copy into `layer` what its chain holds above `base`; `base` becomes its backing."""

    @abc.abstractmethod
    async def backup_disk(self, vm_name: str, device_id: int, target: LayerRef, progress: ProgressFn) -> LayerInfo:
        """Live: a standalone copy of the running disk's whole chain at this instant into `target`."""


class SimulatorControl(abc.ABC):
    """A driver whose commands can be delayed or made to fail on request (only the simulator)."""

    @abc.abstractmethod
    async def configure(
        self, command: str, delay_s: float | None, fail_count: int | None, fail_message: str | None
    ) -> None:
        """Set the delay and/or arm failures for one command type (None leaves a setting as it is)."""

    @abc.abstractmethod
    async def before_command(self, command: str, long_running: bool) -> None:
        """Called by the dispatch before every command: the configured delay (quick commands) and an
        armed failure. Long-running commands spread their delay over their progress themselves."""


ROLES: dict[Role, type[abc.ABC]] = {
    Role.LIFECYCLE: Lifecycle,
    Role.LAYERS: Layers,
    Role.BLOCK_JOBS: BlockJobs,
    Role.MIGRATION_SOURCE: MigrationSource,
    Role.MIGRATION_TARGET: MigrationTarget,
    Role.SNAPSHOTS: Snapshots,
    Role.SIMULATOR: SimulatorControl,
}
"""The class of each role named by command declarations."""
