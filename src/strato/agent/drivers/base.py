"""The contract every hypervisor driver fulfils; the agent service only talks to this.

A `Driver` has the two roles every host needs (lifecycle, layers and volumes); block jobs and the
migration roles are inherited only by drivers that serve them (see roles.py)."""

from __future__ import annotations

from strato.agent.drivers.roles import (
    BlockJobs,
    DriverError,
    Layers,
    Lifecycle,
    MigrationSource,
    MigrationTarget,
    ProgressFn,
    Snapshots,
    report_phase,
)
from strato.protocol.capabilities import DriverCapabilities

__all__ = ["Driver", "DriverError", "ProgressFn", "capability_problems", "check_driver", "report_phase"]


class Driver(Lifecycle, Layers):
    """A hypervisor driver: owns the VMs and layer files of one host."""


def capability_problems(driver: Driver) -> list[str]:
    """Each capability the driver claims without the roles it needs (empty when it is truthful)."""
    caps = getattr(type(driver), "capabilities", None)
    if not isinstance(caps, DriverCapabilities):
        return [f"{type(driver).__name__} declares no capabilities"]
    problems = []
    if caps.live_storage_motion and not isinstance(driver, BlockJobs):
        problems.append("live_storage_motion needs the BlockJobs role")
    if caps.live_migration and not (isinstance(driver, MigrationSource) and isinstance(driver, MigrationTarget)):
        problems.append("live_migration needs the MigrationSource and MigrationTarget roles")
    if (caps.vm_snapshots or caps.memory_snapshots) and not isinstance(driver, Snapshots):
        problems.append("vm_snapshots and memory_snapshots need the Snapshots role")
    if caps.memory_snapshots and not caps.vm_snapshots:
        problems.append("memory_snapshots needs vm_snapshots")
    return problems


def check_driver(driver: Driver) -> None:
    """Refuse a driver that claims what it cannot do (called when the agent starts)."""
    problems = capability_problems(driver)
    if problems:
        raise TypeError(f"{type(driver).__name__}: " + "; ".join(problems))
