"""findHostsForMigration: every other host of the VM's zone (other clusters too: storage motion can take
the disks along), each with whether it suits the VM, whether its disks would have to move, its capacity
figures as CloudStack answers them, and (Strato) the reason a host does not suit."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import select

from strato.db.models import Host, VirtualMachine
from strato.engine.allocator import host_memory_used
from strato.errors import InvalidParameter
from strato.services.core.context import CallContext
from strato.services.core.lookup import get_live
from strato.services.motion.vm_rules import HostFit, host_cpu_used, host_fit


@dataclass(frozen=True)
class Candidate:
    host: Host
    fit: HostFit


def find_hosts(ctx: CallContext, args: dict[str, Any]) -> list[Candidate]:
    """The other hosts of the VM's zone running its hypervisor, suitable ones first, then by name."""
    vm = get_live(ctx.session, VirtualMachine, args["virtualmachineid"], "virtual machine", "id")
    if vm.state != "Running":
        raise InvalidParameter(f"VM {vm.name} (id) is {vm.state}; only a Running VM can move to another host")
    q = select(Host).where(Host.zone_id == vm.zone_id, Host.removed.is_(None), Host.hypervisor == vm.hypervisor)
    if vm.host_id:
        q = q.where(Host.id != vm.host_id)
    if args.get("keyword"):
        q = q.where(Host.name.contains(args["keyword"]))
    out = [Candidate(h, host_fit(ctx.session, vm, h)) for h in ctx.session.scalars(q.order_by(Host.name))]
    out.sort(key=lambda c: c.fit.reason is not None)
    return out


def capacity_fields(ctx: CallContext, host: Host) -> dict[str, Any]:
    """CPU and memory as CloudStack's host responses give them (allocated = promised to active VMs)."""
    cpu_total = host.cpus * host.cpu_mhz
    cpu_used = host_cpu_used(ctx.session, host.id)
    mem_used = host_memory_used(ctx.session, host.id)
    cpu_pct = 100.0 * cpu_used / cpu_total if cpu_total else 0.0
    mem_pct = 100.0 * mem_used / host.memory_bytes if host.memory_bytes else 0.0
    return {
        "cpuallocated": f"{cpu_pct:.2f}%",
        "cpuallocatedvalue": cpu_used,
        "cpuallocatedpercentage": f"{cpu_pct:.2f}%",
        "cpuwithoverprovisioning": str(cpu_total),
        "memorytotal": host.memory_bytes,
        "memoryallocated": mem_used,
        "memoryallocatedbytes": mem_used,
        "memoryallocatedpercentage": f"{mem_pct:.2f}%",
        "memoryused": mem_used,
        "memorywithoverprovisioning": str(host.memory_bytes),
    }


def migration_fields(candidate: Candidate) -> dict[str, Any]:
    fit = candidate.fit
    out: dict[str, Any] = {
        "suitableformigration": fit.reason is None,
        "requiresStorageMotion": fit.requires_storage_motion,
    }
    if fit.reason is not None:
        out["reasonunsuitable"] = fit.reason
    return out
