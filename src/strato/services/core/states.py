"""One state machine per kind: every change of a VM's or volume's state goes through here, so an
illegal transition is a clear error and never a silent overwrite."""

from __future__ import annotations

from typing import Protocol

from strato.errors import InvalidState

VM_TRANSITIONS: dict[str, set[str]] = {
    # Running: VM sync; Migrating: a stopped VM's disks moving offline (migrateVolume, migrateVirtualMachine
    # with storageid).
    "Stopped": {"Starting", "Destroyed", "Expunging", "Stopped", "Error", "Running", "Migrating"},
    "Starting": {"Running", "Stopped", "Error", "Hibernated"},
    "Running": {"Stopping", "Stopped", "Migrating", "Running", "Error"},
    "Stopping": {"Stopped", "Running", "Destroyed", "Error", "Hibernated"},
    # Hibernated: down with its memory in a file (hibernateVirtualMachine); it resumes at the next start.
    "Hibernated": {"Starting", "Destroyed", "Error", "Hibernated"},
    "Migrating": {"Running", "Stopped", "Error"},
    "Destroyed": {"Stopped", "Expunging"},
    "Expunging": {"Expunged", "Destroyed", "Error"},
    "Error": {"Destroyed", "Expunging", "Stopped"},
    "Expunged": set(),
}

VOLUME_TRANSITIONS: dict[str, set[str]] = {
    "Allocated": {"Creating", "Ready", "Destroy", "Expunged"},
    "Creating": {"Ready", "Allocated", "Destroy", "Expunged"},
    "Ready": {"Migrating", "Snapshotting", "Destroy", "Ready", "Resizing", "Expunged"},
    "Resizing": {"Ready"},
    "Migrating": {"Ready"},
    "Snapshotting": {"Ready"},
    "Destroy": {"Expunged", "Ready", "Destroy"},
    "Expunged": set(),
}

# States that only a job holds; nothing may stay in them once its job has ended.
VM_TRANSITIONAL = {"Starting", "Stopping", "Migrating", "Expunging"}
VOLUME_TRANSITIONAL = {"Creating", "Migrating", "Snapshotting", "Resizing"}


class Stateful(Protocol):
    """Anything with a state and a name, so one state machine serves VMs and volumes."""

    state: str
    name: str


def _move(obj: Stateful, to: str, table: dict[str, set[str]], kind: str) -> None:
    if to not in table.get(obj.state, set()):
        raise InvalidState(f"{kind} {obj.name} is {obj.state}; it cannot go to {to}")
    obj.state = to


def vm_to(vm: Stateful, to: str) -> None:
    """Moves a VM to a new state, refusing an illegal transition instead of overwriting it."""
    _move(vm, to, VM_TRANSITIONS, "VM")


def volume_to(volume: Stateful, to: str) -> None:
    """Moves a volume to a new state, refusing an illegal transition instead of overwriting it."""
    _move(volume, to, VOLUME_TRANSITIONS, "Volume")


def require_vm_state(vm: Stateful, *allowed: str, action: str) -> None:
    """Refuses an action on a VM in the wrong state with CloudStack's InvalidState."""
    if vm.state not in allowed:
        raise InvalidState(f"Cannot {action} VM {vm.name}: it is {vm.state}; it must be {' or '.join(allowed)}")
