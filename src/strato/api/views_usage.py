"""The usagerecord object of listUsageRecords, as CloudStack's usage server answers it."""

from __future__ import annotations

from typing import Any

from sqlalchemy.orm import Session

from strato.api.viewkit import clean, cs_date, owner_fields
from strato.db.models import UsageRecord


def usage_record(session: Session, r: UsageRecord) -> dict[str, Any]:
    return clean(
        {
            "usagetype": r.usage_type,
            "usageid": r.usage_id,
            "name": r.name,
            "description": r.description,
            "usage": f"{r.raw_usage:.6f} Hrs",
            "rawusage": f"{r.raw_usage:.6f}",
            "size": r.size,
            "virtualsize": r.virtual_size,
            "virtualmachineid": r.vm_id,
            "vmsnapshotid": r.usage_id if r.usage_type == 25 else None,
            "zoneid": r.zone_id,
            "startdate": cs_date(r.period_start),
            "enddate": cs_date(r.period_end),
            **owner_fields(session, r.account_id),
        }
    )
