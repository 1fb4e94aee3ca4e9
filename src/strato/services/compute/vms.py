"""Virtual machines: listing, recover and update (synchronous: they change rows only), statistics, and
the request helpers the operations share (owner, admin choices, disk offerings, details).

The long operations are each in their own module: deploy, power (start, stop, reboot), destroy (destroy,
expunge), scale, iso, vmimport.
"""

from __future__ import annotations

import base64
import binascii
from typing import Any

from sqlalchemy import select

from strato.db.models import (
    Account,
    DiskOffering,
    Host,
    StoragePool,
    VirtualMachine,
    Volume,
    Zone,
)
from strato.errors import InvalidParameter, InvalidState, PermissionDenied
from strato.protocol.client import AgentClientError
from strato.protocol.messages import GetVmStats, VmStats
from strato.services.core import jobs, limits
from strato.services.core.access import get_vm, owner_scope
from strato.services.core.agents import host_client
from strato.services.core.context import CallContext
from strato.services.core.listing import Page, run_page
from strato.services.core.lookup import get_live
from strato.services.core.states import require_vm_state, vm_to, volume_to
from strato.services.core.tags import tagged
from strato.services.identity.identity import find_account
from strato.services.network import firewall, secgroups
from strato.units import GIB

MAX_USER_DATA = 32768


def owner_of(ctx: CallContext, args: dict[str, Any]) -> Account:
    if args.get("account"):
        return find_account(ctx, args["account"], args.get("domainid"))
    return ctx.account


def admin_choice(ctx: CallContext, value: str | None, param: str) -> str | None:
    if value and not ctx.is_root_admin:
        raise PermissionDenied(f"Only admins may choose {param}: the allocator places resources for users")
    return value


def pool_choice(ctx: CallContext, pool_id: str | None, param: str, zone_id: str) -> str | None:
    if not admin_choice(ctx, pool_id, param):
        return None
    assert pool_id is not None
    pool = get_live(ctx.session, StoragePool, pool_id, "storage pool", param)
    if pool.zone_id != zone_id:
        raise InvalidParameter(f"Storage pool {pool.name} ({param}) is not in the VM's zone")
    return pool.id


def decode_user_data(raw: str | None) -> str | None:
    """User data arrives base64 encoded; the config drive needs the text, and a bound on its size."""
    if raw is None or raw == "":
        return None
    try:
        data = base64.b64decode(raw, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidParameter("Parameter userdata must be base64 encoded") from None
    if len(data) > MAX_USER_DATA:
        raise InvalidParameter(f"Parameter userdata is {len(data)} bytes once decoded; the limit is {MAX_USER_DATA}")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidParameter("Parameter userdata must decode to UTF-8 text") from None


def offering_size(ctx: CallContext, offering_id: str, size_gib: int | None, param: str) -> tuple[DiskOffering, int]:
    offering = get_live(ctx.session, DiskOffering, offering_id, "disk offering", param)
    if offering.customized:
        if not size_gib:
            raise InvalidParameter(f"Disk offering {offering.name} has a custom size: give a size in GiB with it")
        size = size_gib * GIB
        if offering.min_size_bytes and size < offering.min_size_bytes:
            raise InvalidParameter(f"Size {size_gib} GiB is below the offering's minimum")
        if offering.max_size_bytes and size > offering.max_size_bytes:
            raise InvalidParameter(f"Size {size_gib} GiB is above the offering's maximum")
        return offering, size
    return offering, offering.disk_size_bytes


def tags_of(value: str | None) -> list[str]:
    return [t for t in (value or "").split(",") if t]


def details_of(args: dict[str, Any]) -> dict[str, str]:
    out: dict[str, str] = {}
    for entry in args.get("details") or []:
        out.update(entry)
    return out


def check_name(ctx: CallContext, owner: Account, name: str, exclude: str | None = None) -> None:
    q = select(VirtualMachine).where(
        VirtualMachine.account_id == owner.id, VirtualMachine.name == name, VirtualMachine.removed.is_(None)
    )
    if exclude:
        q = q.where(VirtualMachine.id != exclude)
    if ctx.session.scalar(q) is not None:
        raise InvalidParameter(f"A VM named {name} already exists in account {owner.name}")


def list_vms(ctx: CallContext, args: dict[str, Any], page: Page) -> tuple[list[VirtualMachine], int]:
    """listVirtualMachines: the VMs the caller may see, filtered and paged."""
    q = select(VirtualMachine).where(
        VirtualMachine.removed.is_(None), owner_scope(ctx, args).condition(VirtualMachine.account_id)
    )
    for param, col in (
        ("id", VirtualMachine.id),
        ("name", VirtualMachine.name),
        ("zoneid", VirtualMachine.zone_id),
        ("hostid", VirtualMachine.host_id),
        ("templateid", VirtualMachine.template_id),
        ("serviceofferingid", VirtualMachine.service_offering_id),
    ):
        if args.get(param):
            if param == "hostid" and not ctx.is_root_admin:
                raise PermissionDenied("Only admins may list VMs by host")
            q = q.where(col == args[param])
    if args.get("state"):
        q = q.where(VirtualMachine.state == args["state"].capitalize())
    elif not ctx.is_admin:
        q = q.where(VirtualMachine.state != "Expunging")
    if args.get("ids"):
        q = q.where(VirtualMachine.id.in_(args["ids"]))
    q = q.where(*tagged(VirtualMachine.id, args.get("tags")))
    return run_page(
        ctx.session,
        q,
        page,
        (VirtualMachine.name, VirtualMachine.display_name),
        (VirtualMachine.created, VirtualMachine.id),
    )


def recover(ctx: CallContext, args: dict[str, Any]) -> VirtualMachine:
    """recoverVirtualMachine: a destroyed VM comes back Stopped, if the account's VM limit allows."""
    vm = get_vm(ctx, args["id"])
    require_vm_state(vm, "Destroyed", action="recover")
    if jobs.active_on(ctx.session, f"vm:{vm.id}"):
        raise InvalidState(f"VM {vm.name} has a job under way (e.g. its expunge); try again when it ends")
    # A destroyed VM does not count against the account's VM limit; it counts again once recovered.
    owner = ctx.session.get(Account, vm.account_id)
    assert owner is not None
    limits.check(ctx.session, owner, vms=1)
    vm_to(vm, "Stopped")
    vm.destroyed_at = None
    for vol in ctx.session.scalars(select(Volume).where(Volume.vm_id == vm.id, Volume.removed.is_(None))):
        if vol.state == "Destroy":
            volume_to(vol, "Ready")
    return vm


def update(ctx: CallContext, args: dict[str, Any]) -> VirtualMachine:
    """updateVirtualMachine: name, display name and details; renaming needs a stopped VM."""
    vm = get_vm(ctx, args["id"])
    if args.get("name") and args["name"] != vm.name:
        require_vm_state(vm, "Stopped", action="rename")
        acct = ctx.session.get(Account, vm.account_id)
        assert acct is not None
        check_name(ctx, acct, args["name"], exclude=vm.id)
        vm.name = args["name"]
    if args.get("displayname"):
        vm.display_name = args["displayname"]
    if args.get("group") is not None:
        vm.group = args["group"] or None
    if args.get("haenable") is not None:
        vm.ha_enabled = args["haenable"]
    if args.get("userdata") is not None:
        vm.user_data = decode_user_data(args["userdata"])
    if args.get("details"):
        vm.details = {**(vm.details or {}), **details_of(args)}
    if args.get("securitygroupids") or args.get("securitygroupnames"):
        _change_groups(ctx, vm, args)
    return vm


def _change_groups(ctx: CallContext, vm: VirtualMachine, args: dict[str, Any]) -> None:
    """As CloudStack: a stopped VM's groups are replaced; the other hosts' member sets follow at once."""
    require_vm_state(vm, "Stopped", action="change the security groups of")
    zone, owner = ctx.session.get(Zone, vm.zone_id), ctx.session.get(Account, vm.account_id)
    assert zone is not None and owner is not None
    secgroups.set_groups(ctx.session, vm, secgroups.groups_for_deploy(ctx, args, zone, owner))
    firewall.push(firewall.sync_calls(ctx.session, zone.id))


def user_data(ctx: CallContext, args: dict[str, Any]) -> dict[str, str]:
    """getVirtualMachineUserData: the VM's user data base64-encoded again, as it was given ("" when none);
    clients such as Ansible's cs_instance compare it with theirs to decide whether to update the VM."""
    vm = get_vm(ctx, args["virtualmachineid"], param="virtualmachineid")
    encoded = base64.b64encode(vm.user_data.encode()).decode() if vm.user_data else ""
    return {"virtualmachineid": vm.id, "userdata": encoded}


def stats(ctx: CallContext, vm: VirtualMachine) -> VmStats | None:
    """The agent's statistics of a running VM (CPU time, memory, per-disk bytes and operations); None
    when the VM is not running or its host does not answer (a list must not fail for one host)."""
    if vm.state != "Running" or not vm.host_id:
        return None
    host = ctx.session.get(Host, vm.host_id)
    if host is None:
        return None
    try:
        return host_client(host).call(GetVmStats(name=vm.instance_name))
    except AgentClientError:
        return None
