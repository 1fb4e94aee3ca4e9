"""What a host's driver can do, reported by the agent so the server offers only what the host can carry."""

from __future__ import annotations

from pydantic import Field

from strato.protocol.declare import Message


class DriverCapabilities(Message):
    """Flags a driver declares about itself; each is False (or 0) unless the driver really has it.

    The roles a flag needs are checked by the agent at start (strato.agent.drivers.base.check_driver):
    live storage motion needs block jobs, live migration needs both migration roles, and VM snapshots
    need a role that does not exist yet, so no driver can claim them today."""

    hot_plug_disks: bool = False
    """Disks can be attached to and detached from a running VM."""
    offline_storage_motion: bool = False
    """A stopped VM's layers can be copied to another pool and re-pointed (copy_layer + rebase_layer)."""
    live_storage_motion: bool = False
    """A running VM's disks can be moved to another pool (block jobs: mirror, stream, commit)."""
    live_migration: bool = False
    """A running VM can move to another host (migration source and target roles)."""
    vm_snapshots: bool = False
    """Disk snapshots of a VM can be taken and reverted."""
    memory_snapshots: bool = False
    """VM snapshots can include the memory state."""
    max_data_volumes: int = Field(default=0, ge=0)
    """How many data disks one VM can have besides its root disk."""
