"""Builds what the agent needs to run a VM (its disks' top layers, CDs) from the database."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from strato.db.models import ImageStore, Layer, StoragePool, TemplateStoreCopy, VirtualMachine
from strato.db.models.storage import LAYER_CONFIG_DRIVE
from strato.protocol.messages import CdromSpec, VmSpec
from strato.services.network.nics import nic_specs
from strato.services.storage.disks import attached_volumes, disk_spec


def iso_path(session: Session, iso_id: str) -> str | None:
    """Where an agent finds the ISO: the path of its first ready copy on a live image store."""
    for copy in session.scalars(
        select(TemplateStoreCopy).where(
            TemplateStoreCopy.template_id == iso_id,
            TemplateStoreCopy.state == "Ready",
            TemplateStoreCopy.removed.is_(None),
        )
    ):
        store = session.get(ImageStore, copy.store_id)
        if store is not None and store.removed is None:
            return f"{store.path}/{copy.path}"
    return None


def config_drive_layer(session: Session, vm_id: str) -> Layer | None:
    """The VM's config drive, if it has one, so that start and expunge can find it."""
    return session.scalar(
        select(Layer).where(Layer.vm_id == vm_id, Layer.kind == LAYER_CONFIG_DRIVE, Layer.removed.is_(None))
    )


def vm_spec(session: Session, vm: VirtualMachine) -> VmSpec:
    """Everything the agent needs to start the VM, taken from the database (the agent keeps no state)."""
    disks = [disk_spec(session, v) for v in attached_volumes(session, vm.id) if v.top_layer_id]
    cdrom = CdromSpec(path=iso_path(session, vm.iso_id)) if vm.iso_id else None
    config = config_drive_layer(session, vm.id)
    config_cd = None
    if config is not None:
        pool = session.get(StoragePool, config.pool_id)
        assert pool is not None
        config_cd = CdromSpec(path=f"{pool.path}/{config.path}")
    guest = (vm.details or {}).get("guestcommands")
    return VmSpec(
        name=vm.instance_name,
        uuid=vm.id,
        cpus=vm.cpu_number,
        memory_mib=vm.memory_mib,
        disks=disks,
        cdrom=cdrom,
        config_drive=config_cd,
        guest_commands=str(guest) if guest else None,
        nics=nic_specs(session, vm.id),
    )
