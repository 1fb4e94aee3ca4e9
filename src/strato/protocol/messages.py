"""Typed commands and answers exchanged by the management server and the agents.

Both sides import these models, so a change here is a protocol change: bump PROTOCOL_VERSION when an
existing field changes meaning, add optional fields freely.
"""

from __future__ import annotations

import hashlib
from enum import StrEnum
from typing import TYPE_CHECKING, Annotated, Any, Literal, Union

from pydantic import Field

from strato.protocol.capabilities import DriverCapabilities as DriverCapabilities
from strato.protocol.declare import AgentCommand as AgentCommand
from strato.protocol.declare import Declared, declared_commands
from strato.protocol.declare import Message as Message
from strato.protocol.declare import Role as Role
from strato.protocol.motion import BlockJobList, BlockJobReport, IncomingVm, MigrationReport

PROTOCOL_VERSION = 1


class PowerState(StrEnum):
    RUNNING = "running"
    PAUSED = "paused"
    STOPPED = "stopped"
    UNKNOWN = "unknown"


class ErrorCode(StrEnum):
    """Why a command failed; the server maps these to CloudStack error codes."""

    BAD_REQUEST = "bad_request"
    UNAUTHORIZED = "unauthorized"
    UNKNOWN_COMMAND = "unknown_command"
    NOT_FOUND = "not_found"
    ALREADY_EXISTS = "already_exists"
    INVALID_STATE = "invalid_state"
    INSUFFICIENT_CAPACITY = "insufficient_capacity"
    CANCELLED = "cancelled"
    INJECTED_FAILURE = "injected_failure"
    INTERNAL = "internal"


class AgentError(Message):
    code: ErrorCode
    message: str


# --- shared descriptions ---------------------------------------------------------------------------


class PoolRef(Message):
    """A storage pool as the agent sees it: a directory, local or a shared mount point."""

    id: str
    path: str


class PoolReport(Message):
    id: str
    path: str
    capacity_bytes: int
    used_bytes: int
    available_bytes: int


class LayerRef(Message):
    """One qcow2 file of a disk chain, named relative to its pool's directory."""

    pool: PoolRef
    name: str


class LayerInfo(Message):
    name: str
    format: str
    virtual_size: int
    physical_size: int
    backing_file: str | None = None


class DiskSpec(Message):
    """A disk of a VM: the top layer of its chain; QEMU opens the backing chain from the files."""

    device_id: int
    layer: LayerRef
    bus: Literal["virtio", "ide", "scsi"] = "virtio"
    readonly: bool = False
    serial: str | None = None


class CdromSpec(Message):
    path: str | None = None


class NicSpec(Message):
    """A guest NIC: a tap the host's network layer made on the network's bridge (EnsureNetwork), opened
    by QEMU by name; the MAC is the one the server chose (and gave dnsmasq)."""

    mac: str
    network_id: str
    tap: str = Field(min_length=1, max_length=15)


class VmSpec(Message):
    name: str
    uuid: str
    cpus: int = Field(ge=1, le=64)
    memory_mib: int = Field(ge=16)
    disks: list[DiskSpec] = []
    cdrom: CdromSpec | None = None
    kernel_args: str | None = None
    # A second CD carrying the config drive (ISO 9660, label config-2): hostname, keys, user data.
    config_drive: CdromSpec | None = None
    # Passed to the guest through fw_cfg as opt/strato/run (the tiny guest's per-VM commands).
    guest_commands: str | None = None
    # Guest NICs in order (eth0 first); optional so a spec without networks is as before.
    nics: list[NicSpec] = []


class VmReport(Message):
    name: str
    uuid: str | None = None
    power_state: PowerState
    pid: int | None = None
    vnc_port: int | None = None


class DiskStats(Message):
    device_id: int | None = None
    node_name: str
    read_bytes: int
    write_bytes: int
    read_ops: int
    write_ops: int


class VmStats(Message):
    name: str
    cpu_time_ns: int
    memory_mib: int
    disks: list[DiskStats] = []


class HostInfo(Message):
    protocol_version: int = PROTOCOL_VERSION
    hostname: str
    driver: Literal["qemu", "simulator"]
    hypervisor: Literal["KVM", "Simulator"]
    hypervisor_version: str
    cpus: int
    cpu_mhz: int
    memory_bytes: int
    local_pool: PoolReport
    capabilities: DriverCapabilities | None = None
    """What the driver can do (None from an agent that predates capability flags)."""


class StateReport(Message):
    vms: list[VmReport]
    pools: list[PoolReport]
    capabilities: DriverCapabilities | None = None
    """Sent with every report so the server sees a driver's new abilities after an agent upgrade."""
    networks: list[str] | None = None
    """The guest networks set up on the host (None: an agent without host networking)."""
    firewall: str | None = None
    """The digest of the security-group rule set applied on the host (firewall_digest; None: an agent
    without host networking). The server re-sends the rule set when it differs from what it wants."""


class Ack(Message):
    ok: Literal[True] = True


class ConsoleLog(Message):
    name: str
    text: str


# --- commands --------------------------------------------------------------------------------------
#
# Each command declares its answer (AgentCommand[Answer]) and `declared`: the driver role and method
# that serve it, its timeout, whether it is long-running. Defining the class registers it (see
# strato.protocol.declare); nothing else needs to list it.

QUICK = None
"""The agent answers at once: the caller's client timeout applies."""
STOP_GRACE_S = 15.0
"""What stop_vm may take beyond its own timeout (QEMU's quit grace, then a kill and its wait)."""


class GetHostInfo(AgentCommand[HostInfo]):
    """The host's resources and its driver's capabilities (served by `Driver.host_report`)."""

    declared = Declared(Role.LIFECYCLE, "host_report")
    type: Literal["get_host_info"] = "get_host_info"


class GetState(AgentCommand[StateReport]):
    """Ground truth for reconciliation: VMs with their power states, and the given pools' capacity."""

    declared = Declared(Role.LIFECYCLE, "state_report")
    type: Literal["get_state"] = "get_state"
    pools: list[PoolRef] = []


class AttachPool(AgentCommand[PoolReport]):
    declared = Declared(Role.LAYERS, "attach_pool")
    type: Literal["attach_pool"] = "attach_pool"
    pool: PoolRef
    create: bool = True


class CreateLayer(AgentCommand[LayerInfo]):
    declared = Declared(Role.LAYERS, "create_layer")
    type: Literal["create_layer"] = "create_layer"
    layer: LayerRef
    size_bytes: int | None = None
    backing: LayerRef | None = None


class GetLayerInfo(AgentCommand[LayerInfo]):
    declared = Declared(Role.LAYERS, "layer_info")
    type: Literal["get_layer_info"] = "get_layer_info"
    layer: LayerRef


class CopyLayer(AgentCommand[LayerInfo]):
    """Sparse-aware copy of a frozen layer, possibly to another pool. Long-running: returns a task."""

    declared = Declared(Role.LAYERS, "copy_layer", long_running=True)
    type: Literal["copy_layer"] = "copy_layer"
    source: LayerRef
    target: LayerRef
    bandwidth_bytes_per_s: int | None = None


class RebaseLayer(AgentCommand[LayerInfo]):
    """Unsafe rebase (metadata only): point a copied layer at its copied backing file."""

    declared = Declared(Role.LAYERS, "rebase_layer")
    type: Literal["rebase_layer"] = "rebase_layer"
    layer: LayerRef
    backing: LayerRef | None


class RemoveLayer(AgentCommand[Ack]):
    declared = Declared(Role.LAYERS, "remove_layer")
    type: Literal["remove_layer"] = "remove_layer"
    layer: LayerRef
    missing_ok: bool = True


class StartVm(AgentCommand[VmReport]):
    declared = Declared(Role.LIFECYCLE, "start_vm", timeout_s=60.0)
    type: Literal["start_vm"] = "start_vm"
    spec: VmSpec


class StopVm(AgentCommand[VmReport]):
    declared = Declared(Role.LIFECYCLE, "stop_vm", timeout_s=30.0 + STOP_GRACE_S)
    type: Literal["stop_vm"] = "stop_vm"
    name: str
    force: bool = False
    timeout_s: float = 30.0

    def answer_within(self) -> float | None:
        """The guest is given `timeout_s` to shut down before it is killed."""
        return self.timeout_s + STOP_GRACE_S


class RebootVm(AgentCommand[VmReport]):
    declared = Declared(Role.LIFECYCLE, "reboot_vm")
    type: Literal["reboot_vm"] = "reboot_vm"
    name: str


class GetVm(AgentCommand[VmReport]):
    declared = Declared(Role.LIFECYCLE, "get_vm")
    type: Literal["get_vm"] = "get_vm"
    name: str


class GetVmStats(AgentCommand[VmStats]):
    declared = Declared(Role.LIFECYCLE, "vm_stats")
    type: Literal["get_vm_stats"] = "get_vm_stats"
    name: str


class ConfigureSimulator(AgentCommand[Ack]):
    """Simulator only: per-command delay and failure injection (as CloudStack's configureSimulator)."""

    declared = Declared(Role.SIMULATOR, "configure")
    type: Literal["configure_simulator"] = "configure_simulator"
    command: str
    delay_s: float | None = None
    fail_count: int | None = None
    fail_message: str | None = None


class FetchImage(AgentCommand[LayerInfo]):
    """Download (http/https) or copy (file://, a path on the host) an image into a layer file,
    verify its checksum, and store disks as qcow2 (RAW is converted). Long-running."""

    declared = Declared(Role.LAYERS, "fetch_image", long_running=True)
    type: Literal["fetch_image"] = "fetch_image"
    url: str
    target: LayerRef
    format: Literal["qcow2", "raw", "iso"]
    # "{md5}hex", "{sha1}hex", "{sha256}hex", "{sha512}hex", or bare hex (its length names the kind).
    checksum: str | None = None


class ConvertLayer(AgentCommand[LayerInfo]):
    """Flatten a chain (the layer and its backing files) into one standalone qcow2. Long-running."""

    declared = Declared(Role.LAYERS, "convert_layer", long_running=True)
    type: Literal["convert_layer"] = "convert_layer"
    source: LayerRef
    target: LayerRef


class ResizeLayer(AgentCommand[LayerInfo]):
    """Grow a layer; when `vm_name` runs with that disk at `device_id`, through QMP block_resize."""

    declared = Declared(Role.LAYERS, "resize_layer")
    type: Literal["resize_layer"] = "resize_layer"
    layer: LayerRef
    size_bytes: int
    vm_name: str | None = None
    device_id: int | None = None


class AttachDisk(AgentCommand[VmReport]):
    """Hot-plug a disk into a running VM (blockdev-add + device_add)."""

    declared = Declared(Role.LAYERS, "attach_disk")
    type: Literal["attach_disk"] = "attach_disk"
    vm_name: str
    disk: DiskSpec


class DetachDisk(AgentCommand[VmReport]):
    """Hot-unplug a disk from a running VM (device_del, wait for DEVICE_DELETED, blockdev-del)."""

    declared = Declared(Role.LAYERS, "detach_disk", timeout_s=30.0)
    type: Literal["detach_disk"] = "detach_disk"
    vm_name: str
    device_id: int


class AttachNic(AgentCommand[VmReport]):
    """Hot-plug a NIC into a running VM (netdev_add on its tap, which EnsureNetwork made, + device_add)."""

    declared = Declared(Role.LAYERS, "attach_nic")
    type: Literal["attach_nic"] = "attach_nic"
    vm_name: str
    nic: NicSpec


class DetachNic(AgentCommand[VmReport]):
    """Hot-unplug a NIC (device_del, wait until the guest released it, netdev_del); the tap stays."""

    declared = Declared(Role.LAYERS, "detach_nic", timeout_s=30.0)
    type: Literal["detach_nic"] = "detach_nic"
    vm_name: str
    mac: str


class ChangeCdrom(AgentCommand[VmReport]):
    """Insert (path) or eject (None) the user CD of a running VM."""

    declared = Declared(Role.LAYERS, "change_cdrom")
    type: Literal["change_cdrom"] = "change_cdrom"
    vm_name: str
    path: str | None = None


class BuildConfigDrive(AgentCommand[LayerInfo]):
    """Write a config drive ISO (label config-2) into a layer file."""

    declared = Declared(Role.LAYERS, "build_config_drive")
    type: Literal["build_config_drive"] = "build_config_drive"
    target: LayerRef
    hostname: str
    instance_id: str
    user_data: str | None = None
    public_keys: list[str] = []


class RemoveVm(AgentCommand[Ack]):
    """Forget a stopped VM: remove its run directory (spec, logs). Refused while it runs."""

    declared = Declared(Role.LIFECYCLE, "remove_vm")
    type: Literal["remove_vm"] = "remove_vm"
    name: str


class GetConsoleLog(AgentCommand[ConsoleLog]):
    """The end of a VM's serial console log (the whole log when tail_bytes is None)."""

    declared = Declared(Role.LIFECYCLE, "console")
    type: Literal["get_console_log"] = "get_console_log"
    name: str
    tail_bytes: int | None = 65536


# --- storage motion: block jobs, migration, host-to-host layer copies ----------------------------------


class IncomingDisk(Message):
    """A disk the target host receives over NBD: the agent creates its new, empty top layer (the layer
    the spec names) on `backing`, a copy of the source's frozen chain already on the target's pool."""

    device_id: int
    size_bytes: int
    backing: LayerRef | None = None


class MirrorDisk(AgentCommand[DiskSpec]):
    """Live move of a running VM's disk: create `target` on `target_backing` (the copied frozen chain on
    the target pool; None for a disk without backing), mirror the top layer onto it (sync top), pivot.
    Answers the disk as the VM now has it. Cancelled or failed: the VM stays on its source, the target
    file is removed. Long-running."""

    declared = Declared(Role.BLOCK_JOBS, "mirror_disk", long_running=True)
    type: Literal["mirror_disk"] = "mirror_disk"
    vm_name: str
    device_id: int
    target: LayerRef
    target_backing: LayerRef | None = None
    bandwidth_bytes_per_s: int | None = None


class SetBlockJobSpeed(AgentCommand[BlockJobReport]):
    """Change the bandwidth limit of the running job on a disk (0: unlimited)."""

    declared = Declared(Role.BLOCK_JOBS, "set_block_job_speed")
    type: Literal["set_block_job_speed"] = "set_block_job_speed"
    vm_name: str
    device_id: int
    bandwidth_bytes_per_s: int = Field(ge=0)


class ListBlockJobs(AgentCommand[BlockJobList]):
    """The VM's block jobs as QEMU reports them (ground truth for recovery)."""

    declared = Declared(Role.BLOCK_JOBS, "block_jobs")
    type: Literal["list_block_jobs"] = "list_block_jobs"
    vm_name: str


class DiskPlace(StrEnum):
    SOURCE = "source"
    TARGET = "target"


class BlockJobOutcome(Message):
    """Where a disk is once its move is cancelled: on its source (the job, if any, cancelled, the
    target closed and its file removed) or on the target (the pivot had happened; `disk` then names
    the target as the layer the VM uses)."""

    place: DiskPlace
    disk: DiskSpec
    """The disk as the VM has it now."""


class CancelBlockJob(AgentCommand[BlockJobOutcome]):
    """Stop the move of a disk, whoever started it: the agent task if it still runs, else a job or
    target file an earlier agent life left (the in-flight record). Idempotent; a restarted server
    asks this to learn where the disk ended. `target`, when the caller knows it, is the move's target
    layer: the answer compares the disk with it, and an unused target file is removed."""

    declared = Declared(Role.BLOCK_JOBS, "cancel_block_job", timeout_s=60.0)
    type: Literal["cancel_block_job"] = "cancel_block_job"
    vm_name: str
    device_id: int
    target: LayerRef | None = None


class PrepareIncoming(AgentCommand[IncomingVm]):
    """At the target host: start the VM paused, waiting for an incoming migration, with the disks named
    in `disks` created empty and exported over NBD (the other disks of the spec are on pools both hosts
    reach and are opened as they are)."""

    declared = Declared(Role.MIGRATION_TARGET, "prepare_incoming", timeout_s=60.0)
    type: Literal["prepare_incoming"] = "prepare_incoming"
    spec: VmSpec
    disks: list[IncomingDisk] = []
    listen_host: str = "127.0.0.1"
    """The address the target listens on for the migration stream and NBD (the host's migration
    network address)."""


class MigrateVm(AgentCommand[VmReport]):
    """At the source host: mirror the exported disks to the target, migrate the RAM with
    pause-before-switchover, switch over; answers the VM stopped here. Long-running; cancelled or
    failed, the VM keeps running here."""

    declared = Declared(Role.MIGRATION_SOURCE, "migrate_vm", long_running=True)
    type: Literal["migrate_vm"] = "migrate_vm"
    name: str
    incoming: IncomingVm
    bandwidth_bytes_per_s: int | None = None


class GetMigrationStatus(AgentCommand[MigrationReport]):
    declared = Declared(Role.MIGRATION_SOURCE, "migration_status")
    type: Literal["get_migration_status"] = "get_migration_status"
    name: str


class MigrationPlace(StrEnum):
    HERE = "here"
    LEFT = "left"


class MigrationOutcome(Message):
    """Where a VM is once its outgoing migration is cancelled: here (the migration had not completed;
    it is cancelled and the VM, if it runs, runs here) or left (it completed: the target has the VM)."""

    name: str
    place: MigrationPlace


class CancelMigration(AgentCommand[MigrationOutcome]):
    """At the source: stop the VM's outgoing migration, whoever started it (the agent task if it still
    runs, else a migration QEMU still runs after an agent restart). Idempotent; a VM unknown here has
    left."""

    declared = Declared(Role.MIGRATION_SOURCE, "cancel_migration", timeout_s=60.0)
    type: Literal["cancel_migration"] = "cancel_migration"
    name: str


class FinishIncoming(AgentCommand[VmReport]):
    """At the target: the migration completed; stop the NBD exports and run the VM."""

    declared = Declared(Role.MIGRATION_TARGET, "finish_incoming", timeout_s=60.0)
    type: Literal["finish_incoming"] = "finish_incoming"
    name: str


class AbortIncoming(AgentCommand[Ack]):
    """At the target: kill the waiting VM and remove the top layers it created (idempotent)."""

    declared = Declared(Role.MIGRATION_TARGET, "abort_incoming", timeout_s=60.0)
    type: Literal["abort_incoming"] = "abort_incoming"
    name: str


class PullLayer(AgentCommand[LayerInfo]):
    """Copy a frozen layer from another host's agent (its `GET /v1/layers?pool=<id>&name=<name>`, with that
    host's token) into `target` on this host, sparse; the copy keeps its backing reference as is
    (rebase it after). Host to host: the data does not pass through the server. Long-running."""

    declared = Declared(Role.MIGRATION_TARGET, "pull_layer", long_running=True)
    type: Literal["pull_layer"] = "pull_layer"
    source_agent_url: str
    source_token: str
    source: LayerRef
    target: LayerRef
    bandwidth_bytes_per_s: int | None = None


# --- VM snapshots: freeze the disks (and the memory), restore, merge layers -----------------------------
#
# All served by the Snapshots role. A stopped VM's disk snapshot needs no new command: the server creates
# each new top with CreateLayer on the frozen one. Offline merges (a stopped VM, or layers of a branch the
# running VM does not use) are CommitLayer/StreamLayer; live merges in the running chain are
# CommitDisk/StreamDisk.


class SnapshotDisk(Message):
    """One disk of a VM snapshot: its present top layer is frozen and `new_top`, created on the same pool
    with the frozen layer as its backing, becomes the layer the VM writes to."""

    device_id: int
    new_top: LayerRef


class SnapshotTaken(Message):
    disks: list[DiskSpec]
    """The disks as the VM has them now (on their new tops)."""
    memory: LayerInfo | None = None
    """The memory-state file, for a snapshot with memory."""
    paused_ms: float = 0.0
    """How long the guest was paused: the freeze of the disks (and the last memory pass with memory)."""


class SnapshotVm(AgentCommand[SnapshotTaken]):
    """Snapshot of a running VM: the tops of all listed disks are frozen in one QMP transaction, so they
    hold the same instant. With `memory`, the RAM is first written live to that file (a migration to a
    file) and the guest is paused only for the last pass and the freeze; the guest then resumes. Failed
    or cancelled: the VM runs on its old tops, the new tops and the memory file are removed.
    Long-running."""

    declared = Declared(Role.SNAPSHOTS, "snapshot_vm", long_running=True)
    type: Literal["snapshot_vm"] = "snapshot_vm"
    vm_name: str
    disks: list[SnapshotDisk]
    memory: LayerRef | None = None


class SaveVm(AgentCommand[LayerInfo]):
    """Hibernate: write the running VM's memory to `memory` (live, paused only for the last pass), then
    stop the VM; answers the memory file. Failed or cancelled: the VM keeps running, the file is removed.
    Long-running."""

    declared = Declared(Role.SNAPSHOTS, "save_vm", long_running=True)
    type: Literal["save_vm"] = "save_vm"
    vm_name: str
    memory: LayerRef


class RestoreVm(AgentCommand[VmReport]):
    """Start the VM of `spec` from a memory file (of a snapshot with memory, or of a hibernated VM): it
    runs on from where the memory was written, without booting. The spec's disks must hold the disk
    state of that instant (the snapshot's frozen layers under new empty tops). Failed: no VM is left
    running. Long-running."""

    declared = Declared(Role.SNAPSHOTS, "restore_vm", long_running=True)
    type: Literal["restore_vm"] = "restore_vm"
    spec: VmSpec
    memory: LayerRef


class StreamDisk(AgentCommand[DiskSpec]):
    """Live merge, copying upwards: into `into`, a layer of the running VM's disk chain (the active top
    included), copy the data of the layers between it and `base` (None: every layer below it), then make
    `base` its backing. The layers streamed are left for the caller to remove. Long-running."""

    declared = Declared(Role.SNAPSHOTS, "stream_disk", long_running=True)
    type: Literal["stream_disk"] = "stream_disk"
    vm_name: str
    device_id: int
    into: LayerRef
    base: LayerRef | None = None


class CommitDisk(AgentCommand[DiskSpec]):
    """Live merge, copying downwards: copy `top`, a layer of the running VM's disk chain (the active top
    included), into `base`, its backing, and drop `top` from the chain: what rested on `top` now rests on
    `base`, and when `top` was the active layer the VM now writes to `base`. Answers the disk as the VM
    has it now; `top`'s file is left for the caller to remove. Long-running."""

    declared = Declared(Role.SNAPSHOTS, "commit_disk", long_running=True)
    type: Literal["commit_disk"] = "commit_disk"
    vm_name: str
    device_id: int
    top: LayerRef
    base: LayerRef


class CommitLayer(AgentCommand[LayerInfo]):
    """Offline merge, copying downwards: write the data of `top` into `base`, its backing (no VM has
    either open); `top` is left for the caller to remove or rebase onto. Answers `base`. Long-running."""

    declared = Declared(Role.SNAPSHOTS, "commit_layer", long_running=True)
    type: Literal["commit_layer"] = "commit_layer"
    top: LayerRef
    base: LayerRef


class StreamLayer(AgentCommand[LayerInfo]):
    """Offline merge, copying upwards: copy into `layer` what its present backing chain holds that `base`
    does not (a safe rebase), then make `base` (None: no backing) its backing. Answers `layer`.
    Long-running."""

    declared = Declared(Role.SNAPSHOTS, "stream_layer", long_running=True)
    type: Literal["stream_layer"] = "stream_layer"
    layer: LayerRef
    base: LayerRef | None = None


class BackupDisk(AgentCommand[LayerInfo]):
    """Volume snapshot of a running VM's disk: a point-in-time copy of the whole chain the disk reads
    (`blockdev-backup sync=full`) into `target`, a new standalone qcow2 (on an image store). The VM's
    chain is left as it was; the copy holds the instant the backup started, whatever the guest writes
    meanwhile. Failed or cancelled: the target is removed. Long-running."""

    declared = Declared(Role.SNAPSHOTS, "backup_disk", long_running=True)
    type: Literal["backup_disk"] = "backup_disk"
    vm_name: str
    device_id: int
    target: LayerRef


# --- host networking (Role.NETWORK: strato.agent.network, outside the hypervisor driver) --------------


class DhcpHost(Message):
    """One static lease: dnsmasq gives `ip` to `mac` and nothing to anyone else; with the network's DNS,
    `hostname` (the VM's name) resolves to `ip` for the network's guests."""

    mac: str
    ip: str
    hostname: str | None = Field(default=None, pattern=r"^[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?$")


class DnsSpec(Message):
    """The router's DNS for its guests: their names in `domain` answered from the leases, everything else
    forwarded to `upstream` (the zone's DNS servers)."""

    domain: str = Field(pattern=r"^[A-Za-z0-9]([A-Za-z0-9.-]{0,251}[A-Za-z0-9])?$")
    upstream: list[str] = []


class PortForward(Message):
    """Public address:port range to a guest address:port range (the same length), DNAT in the router."""

    public_ip: str
    protocol: Literal["tcp", "udp"]
    public_start: int = Field(ge=1, le=65535)
    public_end: int = Field(ge=1, le=65535)
    private_ip: str
    private_start: int = Field(ge=1, le=65535)
    private_end: int = Field(ge=1, le=65535)


class PublicAllow(Message):
    """A firewall rule of a public address: what may come in to it (nothing else does)."""

    public_ip: str
    protocol: Literal["tcp", "udp", "icmp", "all"]
    start_port: int | None = Field(default=None, ge=1, le=65535)
    end_port: int | None = Field(default=None, ge=1, le=65535)
    cidrs: list[str] = ["0.0.0.0/0"]


class StaticNat(Message):
    """A public address given whole to one guest address (DNAT in, SNAT out)."""

    public_ip: str
    private_ip: str


class EgressMatch(Message):
    """An egress firewall rule of an isolated network: guest traffic leaving through the router's public
    side that it matches is blocked (default policy allow) or let out (default policy deny)."""

    protocol: Literal["tcp", "udp", "icmp", "all"]
    start_port: int | None = Field(default=None, ge=1, le=65535)
    end_port: int | None = Field(default=None, ge=1, le=65535)
    icmp_type: int | None = Field(default=None, ge=0, le=255)
    icmp_code: int | None = Field(default=None, ge=0, le=255)
    cidrs: list[str] = []
    """Guest sources (empty: the whole guest network)."""
    dest_cidrs: list[str] = []
    """Destinations (empty: anywhere)."""


class PublicSpec(Message):
    """The router's public side: a veth to the host's public bridge holding the network's public
    addresses, the guest subnet SNATed to the source NAT one, port forwards, static NAT and the firewall
    of the public addresses."""

    bridge: str
    """The host's public bridge (kvmnetworklabel of the zone's Public traffic); made by the site."""
    gateway: str
    prefix: int = Field(ge=1, le=32)
    source_nat: str
    addresses: list[str] = []
    """Every public address of the network, the source NAT one included."""
    guest_cidr: str
    forwards: list[PortForward] = []
    static_nats: list[StaticNat] = []
    allows: list[PublicAllow] = []
    egress_default_allow: bool = True
    """The network offering's egress default policy: guests may send out unless a rule blocks it."""
    egress: list[EgressMatch] = []


class RouterSpec(Message):
    """The network's virtual router on this host: a namespace on the bridge holding the gateway address
    and dnsmasq."""

    gateway: str
    prefix: int = Field(ge=1, le=30)
    hosts: list[DhcpHost] = []
    mtu: int = Field(default=1450, ge=576, le=9000)
    public: PublicSpec | None = None
    dns: DnsSpec | None = None
    """None: DHCP only (dnsmasq answers no DNS), as on an offering without the Dns service."""


class NetworkSpec(Message):
    """What one guest network needs on one host; EnsureNetwork makes exactly this, idempotently."""

    id: str
    isolation: Literal["vxlan", "vlan"] = "vxlan"
    vni: int = Field(ge=1, le=16777215)
    local: str
    """This host's address: the VXLAN tunnel's source."""
    peers: list[str] = []
    """The other hosts' addresses carrying this network: VXLAN flood entries."""
    taps: list[str] = []
    router: RouterSpec | None = None


class NetworkReport(Message):
    id: str
    bridge: str
    taps: list[str] = []
    peers: list[str] = []
    router: bool = False
    dhcp_pid: int | None = None


class EnsureNetwork(AgentCommand[NetworkReport]):
    type: Literal["ensure_network"] = "ensure_network"
    declared = Declared(Role.NETWORK, "ensure_network", timeout_s=60.0)
    network: NetworkSpec


class RemoveNetwork(AgentCommand[Ack]):
    """Removes the network's bridge, VXLAN device, taps, router namespace and dnsmasq from this host."""

    type: Literal["remove_network"] = "remove_network"
    declared = Declared(Role.NETWORK, "remove_network", timeout_s=60.0)
    network_id: str


class RemoveTaps(AgentCommand[Ack]):
    """Removes NIC taps (a VM's, when it is expunged or leaves the host)."""

    type: Literal["remove_taps"] = "remove_taps"
    declared = Declared(Role.NETWORK, "remove_taps")
    taps: list[str]


class FirewallRule(Message):
    """One security-group rule of a NIC: what it lets in (ingress: from) or out (egress: to)."""

    protocol: Literal["tcp", "udp", "icmp", "all"]
    start_port: int | None = Field(default=None, ge=0, le=65535)
    end_port: int | None = Field(default=None, ge=0, le=65535)
    icmp_type: int | None = Field(default=None, ge=-1, le=255)
    """-1 or None: any type."""
    icmp_code: int | None = Field(default=None, ge=-1, le=255)
    cidr: str | None = None
    """The peer's network (None with `group`: the group's members)."""
    group: str | None = None
    """A key of FirewallSpec.groups: the peer is any of those addresses."""


class NicFirewall(Message):
    """The filter of one VM NIC on a security-group network: anti-spoofing (only `mac`/`ip` may send
    from the tap) and the union of its groups' rules. No egress rule: all egress allowed."""

    nic: str
    network_id: str
    tap: str
    mac: str
    ip: str
    router: str | None = None
    """The network's gateway, where dnsmasq answers from: its DHCP replies always reach the NIC."""
    ingress: list[FirewallRule] = []
    egress: list[FirewallRule] = []


class FirewallSpec(Message):
    """The whole security-group state of one host, applied as one nftables transaction."""

    nics: list[NicFirewall] = []
    groups: dict[str, list[str]] = {}
    """Group id -> the member addresses rules with that `group` match."""


def firewall_digest(spec: FirewallSpec) -> str:
    """What the agent reports and the server compares: a change anywhere gives another digest."""
    return hashlib.sha256(spec.model_dump_json().encode()).hexdigest()[:32]


class FirewallReport(Message):
    digest: str
    nics: int


class SyncFirewall(AgentCommand[FirewallReport]):
    """Makes the host's security-group filter exactly `firewall` (NICs no longer listed lose their
    chains); idempotent."""

    type: Literal["sync_firewall"] = "sync_firewall"
    declared = Declared(Role.NETWORK, "sync_firewall", timeout_s=60.0)
    firewall: FirewallSpec


# --- the envelope: every declared command ------------------------------------------------------------

COMMANDS = declared_commands()
"""Command type -> its model, for every command declared above."""

if TYPE_CHECKING:
    Command = AgentCommand[Any]
else:
    Command = Annotated[Union[tuple(COMMANDS.values())], Field(discriminator="type")]  # noqa: UP007

LONG_RUNNING_COMMANDS = frozenset(name for name, model in COMMANDS.items() if model.declared.long_running)


class CommandEnvelope(Message):
    version: int = PROTOCOL_VERSION
    command: Command


class TaskStarted(Message):
    task_id: str


class TaskState(StrEnum):
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"


class TaskReport(Message):
    task_id: str
    command: str
    state: TaskState
    progress_done: int = 0
    progress_total: int = 0
    phase: str | None = None
    """What the command is doing now, in words (e.g. a mirror restarted in write-blocking mode)."""
    answer: dict[str, object] | None = None
    error: AgentError | None = None
