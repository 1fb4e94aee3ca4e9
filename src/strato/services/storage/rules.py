"""Rules about a VM's disks that both deploy (compute) and volume attach (storage) apply: written once
here, at the lowest area both may import, so that the two answer the same code and text."""

from __future__ import annotations

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from strato.db.models import Volume
from strato.errors import InvalidParameter
from strato.services.core.settings import capability_for

CAPABILITY_HYPERVISORS = ("KVM", "Simulator")


def data_disk_limit(session: Session, hypervisor: str) -> int:
    """The hypervisor's maxdatavolumeslimit (KVM's for a hypervisor without its own capabilities row)."""
    cap = capability_for(session, hypervisor if hypervisor in CAPABILITY_HYPERVISORS else "KVM")
    return int(cap.max_data_volumes_limit)


def data_disk_count(session: Session, vm_id: str, exclude: str | None = None) -> int:
    """The data disks attached to a VM now (not counting `exclude`, e.g. the volume being attached)."""
    q = (
        select(func.count())
        .select_from(Volume)
        .where(Volume.vm_id == vm_id, Volume.removed.is_(None), Volume.volume_type == "DATADISK")
    )
    if exclude is not None:
        q = q.where(Volume.id != exclude)
    return int(session.scalar(q) or 0)


def check_data_disk_limit(session: Session, hypervisor: str, vm_name: str, data_disks: int) -> None:
    """Refuses a VM that would have `data_disks` data disks, beyond the hypervisor's limit (431)."""
    limit = data_disk_limit(session, hypervisor)
    if data_disks > limit:
        raise InvalidParameter(
            f"VM {vm_name} would have {data_disks} data disks; the hypervisor's limit (maxdatavolumeslimit) is {limit}"
        )
