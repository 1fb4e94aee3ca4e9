"""Declared configuration settings (defaults in code, overrides in the database) and hypervisor
capabilities."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from sqlalchemy import bindparam, select
from sqlalchemy.orm import Session

from strato.db.models import Host, HypervisorCapability, Setting
from strato.engine.allocator import Limits
from strato.errors import InvalidParameter, NotFound
from strato.protocol.capabilities import DriverCapabilities
from strato.services.core.context import CallContext
from strato.services.core.listing import Page, paginate_rows
from strato.services.core.lookup import get_live


@dataclass(frozen=True)
class SettingSpec:
    """A global setting's type, default and bounds, declared once for reads, updates and listConfigurations."""

    name: str
    type: type
    default: Any
    category: str
    description: str
    min_value: float | None = None


SPECS: dict[str, SettingSpec] = {
    s.name: s
    for s in (
        SettingSpec(
            "storage.overprovisioning.factor",
            float,
            2.0,
            "Storage",
            "How many times a pool's capacity may be allocated to thin disks",
            1.0,
        ),
        SettingSpec(
            "pool.storage.capacity.disablethreshold",
            float,
            0.85,
            "Alert",
            "Fraction of a pool's capacity used above which no new disk is placed on it",
            0.0,
        ),
        SettingSpec(
            "console.token.seconds",
            int,
            120,
            "Advanced",
            "Seconds a console token of createConsoleEndpoint stays valid (one VM, one account)",
            1,
        ),
        SettingSpec("ping.interval", int, 5, "Advanced", "Seconds between two pings of every host by the monitor", 1),
        SettingSpec(
            "ping.timeout",
            float,
            2.5,
            "Advanced",
            "Multiple of ping.interval after which a host that does not answer goes Alert",
            1.0,
        ),
        SettingSpec(
            "incorrect.login.attempts.allowed",
            int,
            5,
            "Advanced",
            "Failed logins in a row after which the user is locked (an admin unlocks it with enableUser)",
            1,
        ),
        SettingSpec(
            "session.timeout",
            int,
            1800,
            "Advanced",
            "Seconds of inactivity after which a login session ends",
            60,
        ),
        SettingSpec(
            "default.page.size",
            int,
            500,
            "Advanced",
            "Page size of list calls that pass page without pagesize",
            1,
        ),
        SettingSpec(
            "job.expire.minutes",
            int,
            1440,
            "Advanced",
            "Minutes after which finished async jobs are removed",
            1,
        ),
        SettingSpec(
            "max.account.user.vms",
            int,
            20,
            "Account Defaults",
            "The default maximum number of VMs an account may have",
            -1,
        ),
        SettingSpec(
            "max.account.volumes",
            int,
            20,
            "Account Defaults",
            "The default maximum number of volumes an account may have",
            -1,
        ),
        SettingSpec(
            "max.account.primary.storage",
            int,
            200,
            "Account Defaults",
            "The default maximum primary storage (GiB) an account may use",
            -1,
        ),
        SettingSpec(
            "max.domain.user.vms",
            int,
            -1,
            "Domain Defaults",
            "The default maximum of VMs a domain and its subdomains may hold in all (-1: none)",
            -1,
        ),
        SettingSpec(
            "max.domain.volumes",
            int,
            -1,
            "Domain Defaults",
            "The default maximum of volumes a domain and its subdomains may hold in all (-1: none)",
            -1,
        ),
        SettingSpec(
            "max.domain.primary.storage",
            int,
            -1,
            "Domain Defaults",
            "The default maximum of primary storage (GiB) a domain and its subdomains may hold in all (-1: none)",
            -1,
        ),
        SettingSpec(
            "max.domain.snapshots",
            int,
            -1,
            "Domain Defaults",
            "The default maximum of volume snapshots a domain and its subdomains may hold in all (-1: none)",
            -1,
        ),
        SettingSpec(
            "max.account.public.ips",
            int,
            20,
            "Account Defaults",
            "The default maximum number of public IP addresses an account may hold (source NAT ones included)",
            -1,
        ),
        SettingSpec(
            "max.account.networks",
            int,
            20,
            "Account Defaults",
            "The default maximum number of isolated networks an account may have",
            -1,
        ),
        SettingSpec(
            "max.domain.public.ips",
            int,
            -1,
            "Domain Defaults",
            "The default maximum of public IP addresses a domain and its subdomains may hold in all (-1: none)",
            -1,
        ),
        SettingSpec(
            "max.domain.networks",
            int,
            -1,
            "Domain Defaults",
            "The default maximum of isolated networks a domain and its subdomains may hold in all (-1: none)",
            -1,
        ),
        SettingSpec(
            "max.domain.vm.snapshots",
            int,
            -1,
            "Domain Defaults",
            "The default maximum of VM snapshots a domain and its subdomains may hold in all (-1: none)",
            -1,
        ),
        SettingSpec(
            "vmsnapshot.max",
            int,
            10,
            "Advanced",
            "Maximum VM snapshots of one VM",
            1,
        ),
        SettingSpec(
            "max.account.vm.snapshots",
            int,
            100,
            "Account Defaults",
            "Strato: the default maximum number of VM snapshots an account may have",
            -1,
        ),
        SettingSpec(
            "usage.stats.job.aggregation.range",
            int,
            1440,
            "Usage",
            "Minutes of one usage record's period (records of generateUsageRecords: one per resource per period)",
            1,
        ),
        SettingSpec(
            "max.account.snapshots",
            int,
            20,
            "Account Defaults",
            "The default maximum number of volume snapshots an account may have",
            -1,
        ),
        SettingSpec(
            "snapshot.max.hourly",
            int,
            8,
            "Snapshots",
            "Maximum recurring hourly snapshots kept per volume (the maxsnaps of an HOURLY policy)",
            1,
        ),
        SettingSpec(
            "snapshot.max.daily",
            int,
            8,
            "Snapshots",
            "Maximum recurring daily snapshots kept per volume (the maxsnaps of a DAILY policy)",
            1,
        ),
        SettingSpec(
            "snapshot.max.weekly",
            int,
            8,
            "Snapshots",
            "Maximum recurring weekly snapshots kept per volume (the maxsnaps of a WEEKLY policy)",
            1,
        ),
        SettingSpec(
            "snapshot.max.monthly",
            int,
            8,
            "Snapshots",
            "Maximum recurring monthly snapshots kept per volume (the maxsnaps of a MONTHLY policy)",
            1,
        ),
        SettingSpec(
            "snapshot.poll.interval",
            int,
            300,
            "Snapshots",
            "Seconds between two looks for snapshot policies that are due",
            1,
        ),
        SettingSpec(
            "expunge.interval",
            int,
            10,
            "Advanced",
            "Seconds between two runs of the task that expunges VMs destroyed longer ago than expunge.delay",
            1,
        ),
        SettingSpec(
            "expunge.delay",
            int,
            86400,
            "Advanced",
            "Seconds a destroyed VM is kept recoverable before it is expunged",
            0,
        ),
        SettingSpec(
            "api.signature.version3.only",
            bool,
            False,
            "Advanced",
            "Refuse signed requests that do not carry signatureVersion=3 and expires",
            None,
        ),
    )
}


def _coerce(spec: SettingSpec, raw: str) -> Any:
    try:
        if spec.type is bool:
            if raw.lower() not in ("true", "false"):
                raise ValueError(raw)
            return raw.lower() == "true"
        value = spec.type(raw)
        if isinstance(value, float) and not math.isfinite(value):
            raise ValueError(raw)
    except ValueError:
        raise InvalidParameter(
            f"Cannot set configuration {spec.name} to '{raw}': a value of type {spec.type.__name__} is expected"
        ) from None
    if spec.min_value is not None and value < spec.min_value:
        raise InvalidParameter(f"Cannot set configuration {spec.name} to {raw}: minimum is {spec.min_value}")
    return value


def get(session: Session, name: str) -> Any:
    """A setting's current value, its default when unset."""
    spec = SPECS[name]
    row = session.identity_map.get((Setting, (name,), None))
    value = row.value if isinstance(row, Setting) else session.scalar(_VALUE, {"name": name})
    if value is None:
        return spec.default
    return _coerce(spec, value)


# Built once (read at every signed request): building the statement cost as much as running it.
_VALUE = select(Setting.value).where(Setting.name == bindparam("name"))


def update(ctx: CallContext, name: str, value: str | None) -> tuple[SettingSpec, Any]:
    """updateConfiguration: checks the value against the setting's type and bounds; empty resets it."""
    spec = SPECS.get(name)
    if spec is None:
        raise InvalidParameter(f"Configuration {name} does not exist")
    row = ctx.session.get(Setting, name)
    if value is None or value == "":
        if row is not None:
            ctx.session.delete(row)
        return spec, spec.default
    coerced = _coerce(spec, value)
    if row is None:
        ctx.session.add(Setting(name=name, value=value))
    else:
        row.value = value
    return spec, coerced


def list_settings(ctx: CallContext, args: dict[str, Any], page: Page) -> tuple[list[tuple[SettingSpec, Any]], int]:
    """listConfigurations: the settings with their current values, filtered and paged."""
    specs = sorted(SPECS.values(), key=lambda s: s.name)
    if args.get("name"):
        specs = [s for s in specs if s.name == args["name"]]
    if args.get("category"):
        specs = [s for s in specs if s.category.lower() == args["category"].lower()]
    if page.keyword:
        specs = [s for s in specs if page.keyword.lower() in s.name]
    specs, total = paginate_rows(specs, page)
    return [(s, get(ctx.session, s.name)) for s in specs], total


# --- hypervisor capabilities ------------------------------------------------------------------------

DEFAULT_CAPABILITIES = (
    dict(
        hypervisor="KVM",
        max_guests_limit=50,
        max_data_volumes_limit=24,
        storage_motion_enabled=True,
        vm_snapshot_enabled=True,
    ),
    dict(
        hypervisor="Simulator",
        max_guests_limit=1000,
        max_data_volumes_limit=24,
        storage_motion_enabled=True,
        vm_snapshot_enabled=True,
    ),
)


@dataclass(frozen=True)
class HostsCanDo:
    """What a hypervisor's hosts can really do, from the capabilities their agents reported, within
    what the administrator allows (updateHypervisorCapabilities can only turn a feature off)."""

    storage_motion_enabled: bool
    vm_snapshot_enabled: bool
    max_data_volumes_limit: int


def reported_capabilities(session: Session, hypervisor: str) -> list[DriverCapabilities]:
    """The capabilities reported by the live hosts of `hypervisor` (hosts that reported none are left out)."""
    rows = session.scalars(
        select(Host.capabilities).where(
            Host.removed.is_(None), Host.hypervisor == hypervisor, Host.capabilities.is_not(None)
        )
    )
    return [DriverCapabilities.model_validate(row) for row in rows if row is not None]


@dataclass(frozen=True)
class CloudFeatures:
    """What every reporting host of one hypervisor can do (all false while none reported)."""

    live_storage_motion: bool
    vm_snapshots: bool
    memory_snapshots: bool


def cloud_features(session: Session, hypervisor: str) -> CloudFeatures:
    """For listCapabilities: a feature is claimed only when the hosts' drivers have it."""
    reported = reported_capabilities(session, hypervisor)

    def every(flag: str) -> bool:
        return bool(reported) and all(getattr(caps, flag) for caps in reported)

    return CloudFeatures(every("live_storage_motion"), every("vm_snapshots"), every("memory_snapshots"))


def storage_motion_anywhere(session: Session) -> bool:
    """For listCapabilities' storagemotionenabled (what clients read to offer the motion commands): some
    hypervisor in use has it, by listHypervisorCapabilities' rule (every reporting host of it can move
    disks live and the administrator has not switched it off). The commands still refuse elsewhere."""
    rows = session.scalars(select(HypervisorCapability).where(HypervisorCapability.removed.is_(None)))
    return any(hosts_can_do(session, row).storage_motion_enabled for row in rows)


def hosts_can_do(session: Session, row: HypervisorCapability) -> HostsCanDo:
    """A feature is on when every host that reported its capabilities has it, and at least one did;
    storage motion means live storage motion (offline volume moves need no flag, as in CloudStack).
    The data-volume limit is the administrator's, lowered to what the hosts' drivers can attach."""
    reported = reported_capabilities(session, row.hypervisor)
    limit = row.max_data_volumes_limit
    if reported:
        limit = min(limit, *(caps.max_data_volumes for caps in reported))
    return HostsCanDo(
        storage_motion_enabled=row.storage_motion_enabled
        and bool(reported)
        and all(caps.live_storage_motion for caps in reported),
        vm_snapshot_enabled=row.vm_snapshot_enabled and bool(reported) and all(caps.vm_snapshots for caps in reported),
        max_data_volumes_limit=limit,
    )


def vm_snapshots_enabled(session: Session, hypervisor: str) -> bool:
    """vmsnapshotenabled of listHypervisorCapabilities for the hypervisor (any of its versions)."""
    rows = session.scalars(
        select(HypervisorCapability).where(
            HypervisorCapability.hypervisor == hypervisor, HypervisorCapability.removed.is_(None)
        )
    )
    return any(hosts_can_do(session, row).vm_snapshot_enabled for row in rows)


def bootstrap_capabilities(session: Session) -> None:
    """Fills the default hypervisor capabilities of a new database."""
    for caps in DEFAULT_CAPABILITIES:
        exists = session.scalar(
            select(HypervisorCapability).where(HypervisorCapability.hypervisor == caps["hypervisor"])
        )
        if exists is None:
            session.add(HypervisorCapability(**caps))


def list_capabilities(ctx: CallContext, args: dict[str, Any]) -> list[HypervisorCapability]:
    """listHypervisorCapabilities: the limits and features per hypervisor."""
    q = select(HypervisorCapability).where(HypervisorCapability.removed.is_(None))
    if args.get("id"):
        q = q.where(HypervisorCapability.id == args["id"])
    if args.get("hypervisor"):
        q = q.where(HypervisorCapability.hypervisor == args["hypervisor"])
    return list(ctx.session.scalars(q.order_by(HypervisorCapability.hypervisor)))


def capability_for(session: Session, hypervisor: str) -> HypervisorCapability:
    """The capabilities of a hypervisor, for rules such as the data volume limit."""
    row = session.scalar(select(HypervisorCapability).where(HypervisorCapability.hypervisor == hypervisor))
    if row is None:
        raise NotFound(f"No hypervisor capabilities for {hypervisor}")
    return row


def update_capability(ctx: CallContext, args: dict[str, Any]) -> HypervisorCapability:
    """updateHypervisorCapabilities: an admin changes a hypervisor's limits or features."""
    row = get_live(ctx.session, HypervisorCapability, args["id"], "hypervisor capabilities")
    for param, attr in (
        ("maxguestslimit", "max_guests_limit"),
        ("maxdatavolumeslimit", "max_data_volumes_limit"),
        ("maxhostspercluster", "max_hosts_per_cluster"),
        ("storagemotionenabled", "storage_motion_enabled"),
        ("vmsnapshotenabled", "vm_snapshot_enabled"),
        ("securitygroupenabled", "security_group_enabled"),
    ):
        if args.get(param) is not None:
            setattr(row, attr, args[param])
    return row


def allocation_limits(session: Session) -> Limits:
    """The allocator's view of the storage settings."""
    return Limits(
        overprovision=float(get(session, "storage.overprovisioning.factor")),
        disable_threshold=float(get(session, "pool.storage.capacity.disablethreshold")),
    )
