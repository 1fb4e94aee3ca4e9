"""VM sync: the agents' reports of power state win over the database, as in CloudStack.

A VM whose state disagrees with its host's report in two reports in a row is corrected (one report
could predate a start or stop that a job has just recorded). VMs in a transitional state belong to
their job and are left alone. Also feeds host and pool usage to listCapacity.
"""

from __future__ import annotations

import threading

from sqlalchemy import bindparam, func, select
from sqlalchemy.orm import Session

from strato.db.models import Host, StoragePool, VirtualMachine
from strato.engine.allocator import host_memory_used, pool_allocated
from strato.engine.audit import record_event
from strato.engine.monitor import on_state_report
from strato.protocol.messages import PowerState, StateReport
from strato.services.core.states import vm_to
from strato.services.infra import capacity

_suspects: dict[str, str] = {}
_lock = threading.Lock()


def _confirmed(vm_id: str, seen: str) -> bool:
    with _lock:
        if _suspects.get(vm_id) == seen:
            del _suspects[vm_id]
            return True
        _suspects[vm_id] = seen
        return False


def _clear(vm_id: str) -> None:
    with _lock:
        _suspects.pop(vm_id, None)


# Built once: asked for every host of every monitor round (building it cost as much as running it).
_ON_HOST = select(VirtualMachine).where(
    VirtualMachine.removed.is_(None),
    (VirtualMachine.host_id == bindparam("host")) | (VirtualMachine.last_host_id == bindparam("host")),
)


@on_state_report
def sync_vms(session: Session, host: Host, report: StateReport) -> None:
    """The agent's report of its VMs wins over the database for power state, as CloudStack's VM sync."""
    reported = {vm.name: vm.power_state for vm in report.vms}
    on_host = session.scalars(_ON_HOST, {"host": host.id})
    for vm in on_host:
        power = reported.get(vm.instance_name, PowerState.STOPPED)
        running = power in (PowerState.RUNNING, PowerState.PAUSED)
        if vm.state == "Running" and vm.host_id == host.id and not running:
            if _confirmed(vm.id, "stopped"):
                vm_to(vm, "Stopped")
                vm.host_id = None
                record_event(
                    session,
                    "VM.SYNC",
                    f"VM {vm.name} was found stopped on host {host.name}",
                    account_id=vm.account_id,
                    user_id=None,
                    level="WARN",
                    resource_type="VirtualMachine",
                    resource_id=vm.id,
                )
        elif vm.state == "Stopped" and running:
            if _confirmed(vm.id, "running"):
                vm_to(vm, "Running")
                vm.host_id = host.id
                record_event(
                    session,
                    "VM.SYNC",
                    f"VM {vm.name} was found running on host {host.name}",
                    account_id=vm.account_id,
                    user_id=None,
                    level="WARN",
                    resource_type="VirtualMachine",
                    resource_id=vm.id,
                )
        else:
            _clear(vm.id)


def _host_usage(session: Session, host: Host) -> tuple[int, int]:
    mhz = (
        session.scalar(
            select(func.coalesce(func.sum(VirtualMachine.cpu_number * VirtualMachine.cpu_speed), 0)).where(
                VirtualMachine.host_id == host.id,
                VirtualMachine.removed.is_(None),
                VirtualMachine.state.in_(("Starting", "Running", "Stopping", "Migrating")),
            )
        )
        or 0
    )
    return host_memory_used(session, host.id), int(mhz)


def _pool_usage(session: Session, pool: StoragePool) -> int:
    return pool_allocated(session, pool.id)


capacity.HOST_USAGE.append(_host_usage)
capacity.POOL_USAGE.append(_pool_usage)
