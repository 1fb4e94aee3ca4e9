"""The snapshot and snapshotpolicy objects as CloudStack shows them (listSnapshots items, createSnapshot's
job result; listSnapshotPolicies items, createSnapshotPolicy's answer)."""

from __future__ import annotations

from typing import Any

from sqlalchemy.orm import Session

from strato.api.viewkit import clean, cs_date, fetch, name_of, owner_fields, register_result, tags
from strato.db.models import ImageStore, Snapshot, SnapshotPolicy, Volume, Zone
from strato.services.storage.snapshot_schedule import INTERVAL_CODES


def snapshot(session: Session, snap: Snapshot) -> dict[str, Any]:
    vol = fetch(session, Volume, snap.volume_id)
    store = fetch(session, ImageStore, snap.store_id) if snap.store_id else None
    return clean(
        {
            "id": snap.id,
            "name": snap.name,
            "volumeid": snap.volume_id,
            "volumename": vol.name if vol is not None else None,
            "volumetype": vol.volume_type if vol is not None else None,
            "volumestate": vol.state if vol is not None else None,
            "snapshottype": snap.snapshot_type,
            "intervaltype": snap.interval_type,
            "state": snap.state,
            "created": cs_date(snap.created),
            "physicalsize": snap.physical_size,
            "virtualsize": snap.virtual_size,
            "zoneid": snap.zone_id,
            "zonename": name_of(session, Zone, snap.zone_id),
            "locationtype": "SECONDARY",
            "datastoreid": store.id if store is not None else None,
            "datastorename": store.name if store is not None else None,
            "datastoretype": "ImageStore" if store is not None else None,
            "revertable": snap.state == "BackedUp"
            and vol is not None
            and vol.removed is None
            and vol.state not in ("Destroy", "Expunged"),
            "hypervisor": "KVM",
            "tags": tags(session, snap.id),
            **owner_fields(session, snap.account_id),
        }
    )


def policy(session: Session, row: SnapshotPolicy) -> dict[str, Any]:
    return clean(
        {
            "id": row.id,
            "volumeid": row.volume_id,
            "schedule": row.schedule,
            "intervaltype": INTERVAL_CODES.get(row.interval_type),
            "maxsnaps": row.max_snaps,
            "timezone": row.timezone,
            "fordisplay": True,
            "tags": tags(session, row.id),
        }
    )


def _result(session: Session, snapshot_id: str, _admin: bool) -> dict[str, Any] | None:
    snap = session.get(Snapshot, snapshot_id)
    return snapshot(session, snap) if snap is not None else None


register_result("snapshot", _result)
