"""The vmsnapshot object as CloudStack shows it (listVMSnapshot items, createVMSnapshot's job result)."""

from __future__ import annotations

from typing import Any

from sqlalchemy.orm import Session

from strato.api.viewkit import clean, cs_date, fetch, owner_fields, register_result
from strato.db.models import VirtualMachine, VMSnapshot
from strato.services.compute.vmsnap_tree import visible_parent


def vm_snapshot(session: Session, snap: VMSnapshot) -> dict[str, Any]:
    vm = fetch(session, VirtualMachine, snap.vm_id)
    parent = visible_parent(session, snap, lambda snap_id: fetch(session, VMSnapshot, snap_id))
    return clean(
        {
            "id": snap.id,
            "name": snap.name,
            "displayname": snap.display_name,
            "description": snap.description,
            "state": snap.state,
            "type": snap.snapshot_type,
            "current": vm is not None and vm.current_snapshot_id == snap.id,
            "parent": parent.id if parent is not None else None,
            "parentName": parent.name if parent is not None else None,
            "created": cs_date(snap.created),
            "virtualmachineid": snap.vm_id,
            "virtualmachinename": vm.name if vm is not None else None,
            "zoneid": vm.zone_id if vm is not None else None,
            "hypervisor": vm.hypervisor if vm is not None else None,
            **owner_fields(session, snap.account_id),
        }
    )


def _result(session: Session, snapshot_id: str, _admin: bool) -> dict[str, Any] | None:
    snap = session.get(VMSnapshot, snapshot_id)
    return vm_snapshot(session, snap) if snap is not None else None


register_result("vmsnapshot", _result)
