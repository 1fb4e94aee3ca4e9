"""Usage accounting as CloudStack's usage server keeps it: events written with the change they record,
and records made from them per aggregation period (`usage.stats.job.aggregation.range` minutes, aligned
to midnight UTC), each with the hours the resource existed in that period.

Only what Strato records is billed: public IP addresses (CloudStack's usage type 3), volume snapshots
(type 9, the file on the image store) and VM snapshots (type 25). A type is listed by `listUsageTypes`
only once its events are written."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from strato.db.base import as_utc, utcnow
from strato.db.models import UsageEvent, UsageRecord
from strato.errors import InvalidParameter
from strato.services.core import settings
from strato.services.core.access import owner_scope
from strato.services.core.context import CallContext
from strato.services.core.listing import Page, run_page


@dataclass(frozen=True)
class UsageType:
    number: int
    name: str
    description: str
    start_event: str
    end_event: str


SNAPSHOT = UsageType(9, "SNAPSHOT", "Snapshot Usage", "SNAPSHOT.CREATE", "SNAPSHOT.DELETE")
VM_SNAPSHOT = UsageType(25, "VM_SNAPSHOT", "VM Snapshot Usage", "VMSNAPSHOT.CREATE", "VMSNAPSHOT.DELETE")
IP_ADDRESS = UsageType(3, "IP_ADDRESS", "Public IP Address Usage", "NET.IPASSIGN", "NET.IPRELEASE")
TYPES = {t.number: t for t in (IP_ADDRESS, SNAPSHOT, VM_SNAPSHOT)}
DATE_FORMATS = ("%Y-%m-%d %H:%M:%S", "%Y-%m-%d")


def record(
    session: Session,
    event: str,
    *,
    account_id: str,
    domain_id: str,
    resource_id: str,
    name: str = "",
    zone_id: str | None = None,
    vm_id: str | None = None,
    size: int = 0,
    virtual_size: int = 0,
) -> None:
    """Writes a usage event once: a step run again after a crash does not bill the resource twice."""
    seen = select(UsageEvent.id).where(UsageEvent.type == event, UsageEvent.resource_id == resource_id)
    if session.scalar(seen) is not None:
        return
    session.add(
        UsageEvent(
            type=event, account_id=account_id, domain_id=domain_id, zone_id=zone_id, resource_id=resource_id,
            resource_name=name, vm_id=vm_id, size=size, virtual_size=virtual_size,
        )
    )  # fmt: skip


def parse_date(value: str, param: str, *, end: bool = False) -> datetime:
    """CloudStack's usage dates: `yyyy-MM-dd` (an end date covers that whole day) or `yyyy-MM-dd HH:mm:ss`."""
    for fmt in DATE_FORMATS:
        try:
            ts = datetime.strptime(value.strip(), fmt).replace(tzinfo=UTC)
        except ValueError:
            continue
        return ts + timedelta(days=1) if end and fmt == "%Y-%m-%d" else ts
    raise InvalidParameter(f"Parameter {param} must be a date as yyyy-MM-dd or yyyy-MM-dd HH:mm:ss, not {value!r}")


def _period(session: Session) -> timedelta:
    return timedelta(minutes=int(settings.get(session, "usage.stats.job.aggregation.range")))


def _periods(start: datetime, end: datetime, length: timedelta) -> list[tuple[datetime, datetime]]:
    day = start.replace(hour=0, minute=0, second=0, microsecond=0)
    first = day + length * ((start - day) // length)
    out = []
    while first < end:
        out.append((first, first + length))
        first += length
    return out


def generate(session: Session, start: datetime, end: datetime) -> int:
    """generateUsageRecords: the records of every period that overlaps [start, end), made again from the
    events (a period still running gets the hours so far, and is completed by a later run). Answers how
    many records it wrote."""
    now = utcnow()
    periods = _periods(start, min(end, now), _period(session))
    if not periods:
        return 0
    written = 0
    for utype in TYPES.values():
        spans = _spans(session, utype, periods[-1][1])
        for p_start, p_end in periods:
            session.execute(
                delete(UsageRecord).where(UsageRecord.usage_type == utype.number, UsageRecord.period_start == p_start)
            )
            for begin, finish, ev in spans:
                lo, hi = max(begin, p_start), min(finish or now, p_end, now)
                if hi <= lo:
                    continue
                hours = (hi - lo).total_seconds() / 3600
                session.add(
                    UsageRecord(
                        usage_type=utype.number, account_id=ev.account_id, domain_id=ev.domain_id,
                        zone_id=ev.zone_id, usage_id=ev.resource_id, name=ev.resource_name, vm_id=ev.vm_id,
                        description=f"{utype.description}: {ev.resource_name} ({ev.resource_id})",
                        raw_usage=hours, size=ev.size, virtual_size=ev.virtual_size,
                        period_start=p_start, period_end=p_end,
                    )
                )  # fmt: skip
                written += 1
    return written


def _spans(session: Session, utype: UsageType, before: datetime) -> list[tuple[datetime, datetime | None, UsageEvent]]:
    """Each resource's life from its start event to its end event (None: it still exists)."""
    starts = session.scalars(
        select(UsageEvent).where(UsageEvent.type == utype.start_event, UsageEvent.created < before)
    ).all()
    ends = {
        rid: as_utc(ts)
        for rid, ts in session.execute(
            select(UsageEvent.resource_id, UsageEvent.created).where(UsageEvent.type == utype.end_event)
        )
    }
    return [(as_utc(ev.created), ends.get(ev.resource_id), ev) for ev in starts]


def list_records(ctx: CallContext, args: dict[str, Any], page: Page) -> tuple[list[UsageRecord], int]:
    """listUsageRecords: the records of the periods overlapping [startdate, enddate], for the accounts the
    caller may see (a root admin: every account unless one is named)."""
    start = parse_date(args["startdate"], "startdate")
    end = parse_date(args["enddate"], "enddate", end=True)
    if end <= start:
        raise InvalidParameter("Parameter enddate must not be before startdate")
    scope_args = {**args, "listall": True}
    if args.get("accountid"):
        scope_args.pop("account", None)
    q = select(UsageRecord).where(
        owner_scope(ctx, scope_args).condition(UsageRecord.account_id),
        UsageRecord.period_start < end,
        UsageRecord.period_end > start,
    )
    if args.get("accountid"):
        q = q.where(UsageRecord.account_id == args["accountid"])
    if args.get("type") is not None:
        if args["type"] not in TYPES:
            raise InvalidParameter(f"Parameter type must be one of the usage types of listUsageTypes: {sorted(TYPES)}")
        q = q.where(UsageRecord.usage_type == args["type"])
    if args.get("usageid"):
        q = q.where(UsageRecord.usage_id == args["usageid"])
    return run_page(ctx.session, q, page, (UsageRecord.name,), (UsageRecord.period_start, UsageRecord.name))
