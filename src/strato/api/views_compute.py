"""CloudStack response objects of VMs, volumes, templates, ISOs and SSH key pairs."""

from __future__ import annotations

from collections.abc import Collection, Iterable
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from strato.api.pageload import Loader, related
from strato.api.viewkit import clean, cs_date, fetch, name_of, owner_fields, register_result, tags
from strato.api.views_network import vm_nic_list
from strato.api.views_secgroups import vm_security_groups
from strato.db import rows as dbrows
from strato.db.models import (
    DiskOffering,
    Host,
    ImageStore,
    Layer,
    ServiceOffering,
    SSHKeyPair,
    StoragePool,
    Template,
    TemplateStoreCopy,
    VirtualMachine,
    Volume,
    Zone,
)
from strato.db.models.storage import LAYER_TEMPLATE
from strato.protocol.messages import VmStats
from strato.units import GIB


def vm_stats(stats: VmStats) -> dict[str, Any]:
    """CloudStack's statistics fields (cumulative since the VM started), plus Strato's CPU time."""
    return {
        "diskkbsread": sum(d.read_bytes for d in stats.disks) // 1024,
        "diskkbswrite": sum(d.write_bytes for d in stats.disks) // 1024,
        "diskioread": sum(d.read_ops for d in stats.disks),
        "diskiowrite": sum(d.write_ops for d in stats.disks),
        "memorykbs": stats.memory_mib * 1024,
        "cputimens": stats.cpu_time_ns,
        "diskstats": [
            {
                "deviceid": d.device_id,
                "readbytes": d.read_bytes,
                "writebytes": d.write_bytes,
                "readops": d.read_ops,
                "writeops": d.write_ops,
            }
            for d in stats.disks
        ],
    }


def _roots(session: Session) -> Loader:
    def load(ids: Collection[Any]) -> Iterable[tuple[Any, Any]]:
        rows = dbrows.load(
            session,
            Volume,
            select(Volume)
            .where(dbrows.among(session, Volume.vm_id, ids), Volume.volume_type == "ROOT", Volume.removed.is_(None))
            .order_by(Volume.created, Volume.id),
        )
        return [(v.vm_id, v) for v in rows]

    return load


def virtual_machine(
    session: Session, vm: VirtualMachine, admin: bool = True, stats: VmStats | None = None
) -> dict[str, Any]:
    template = fetch(session, Template, vm.template_id) if vm.template_id else None
    iso = fetch(session, Template, vm.iso_id) if vm.iso_id else None
    offering = fetch(session, ServiceOffering, vm.service_offering_id)
    roots = related(session, "vm.root", vm.id, _roots(session), refs=False)
    root = roots[0] if roots else None
    out = {
        "id": vm.id,
        "name": vm.name,
        "displayname": vm.display_name,
        "state": vm.state,
        "created": cs_date(vm.created),
        "zoneid": vm.zone_id,
        "zonename": name_of(session, Zone, vm.zone_id),
        "templateid": vm.template_id,
        "templatename": template.name if template else None,
        "templatedisplaytext": template.display_text if template else None,
        "isoid": vm.iso_id,
        "isoname": iso.name if iso else None,
        "serviceofferingid": vm.service_offering_id,
        "serviceofferingname": offering.name if offering else None,
        "cpunumber": vm.cpu_number,
        "cpuspeed": vm.cpu_speed,
        "memory": vm.memory_mib,
        "rootdeviceid": 0,
        "rootdevicetype": "ROOT",
        "hypervisor": vm.hypervisor,
        "keypair": vm.keypair,
        "group": vm.group,
        "haenable": vm.ha_enabled,
        "passwordenabled": False,
        "isdynamicallyscalable": False,
        "ostypename": template.os_type if template else None,
        "details": vm.details or {},
        "diskofferingid": None,
        "nic": vm_nic_list(session, vm.id),
        "securitygroup": vm_security_groups(session, vm.id),
        "affinitygroup": [],
        "tags": tags(session, vm.id),
        "userdata": None,
        "rootdisksize": root.size // GIB if root else None,
        **owner_fields(session, vm.account_id),
    }
    if stats is not None:
        out.update(vm_stats(stats))
    if admin:
        out["instancename"] = vm.instance_name
        out["hostid"] = vm.host_id
        out["hostname"] = name_of(session, Host, vm.host_id)
    return clean(out)


def volume(session: Session, v: Volume) -> dict[str, Any]:
    pool = fetch(session, StoragePool, v.pool_id) if v.pool_id else None
    top = fetch(session, Layer, v.top_layer_id) if v.top_layer_id else None
    vm = fetch(session, VirtualMachine, v.vm_id) if v.vm_id else None
    offering = fetch(session, DiskOffering, v.disk_offering_id) if v.disk_offering_id else None
    chain, current = 0, top
    physical = 0
    while current is not None:
        chain += 1
        if current.kind != LAYER_TEMPLATE:
            physical += current.physical_size
        current = fetch(session, Layer, current.parent_id) if current.parent_id else None
    return clean(
        {
            "id": v.id,
            "name": v.name,
            "type": v.volume_type,
            "state": v.state,
            "size": v.size,
            "physicalsize": physical,
            "deviceid": v.device_id,
            "virtualmachineid": v.vm_id,
            "vmname": vm.name if vm else None,
            "vmdisplayname": vm.display_name if vm else None,
            "vmstate": vm.state if vm else None,
            "zoneid": v.zone_id,
            "zonename": name_of(session, Zone, v.zone_id),
            "storageid": v.pool_id,
            "storage": pool.name if pool else None,
            # An Allocated volume has no pool yet: its offering says where it will go (as CloudStack).
            "storagetype": ("local" if pool.scope == "HOST" else "shared")
            if pool
            else (offering.storage_type if offering else None),
            "path": f"{pool.path}/{top.path}" if pool and top else None,
            "hypervisor": "KVM",
            "diskofferingid": v.disk_offering_id,
            "diskofferingname": offering.name if offering else None,
            "templateid": v.template_id,
            "provisioningtype": v.provisioning_type,
            "created": cs_date(v.created),
            "attached": cs_date(v.attached),
            "destroyed": v.state == "Destroy",
            "isextractable": True,
            "chainsize": chain,
            "tags": tags(session, v.id),
            **owner_fields(session, v.account_id),
        }
    )


def _store_copies(session: Session) -> Loader:
    def load(ids: Collection[Any]) -> Iterable[tuple[Any, Any]]:
        rows = dbrows.load(
            session,
            TemplateStoreCopy,
            select(TemplateStoreCopy)
            .where(dbrows.among(session, TemplateStoreCopy.template_id, ids), TemplateStoreCopy.removed.is_(None))
            .order_by(TemplateStoreCopy.created, TemplateStoreCopy.id),
        )
        return [(c.template_id, c) for c in rows]

    return load


def _pool_copies(session: Session) -> Loader:
    def load(ids: Collection[Any]) -> Iterable[tuple[Any, Any]]:
        rows = dbrows.load(
            session,
            Layer,
            select(Layer)
            .where(dbrows.among(session, Layer.template_id, ids), Layer.kind == LAYER_TEMPLATE, Layer.removed.is_(None))
            .order_by(Layer.created, Layer.id),
        )
        return [(layer.template_id, layer) for layer in rows]

    return load


def _children(session: Session) -> Loader:
    def load(ids: Collection[Any]) -> Iterable[tuple[Any, Any]]:
        rows = dbrows.load(
            session,
            Template,
            select(Template)
            .where(dbrows.among(session, Template.parent_id, ids), Template.removed.is_(None))
            .order_by(Template.disk_index, Template.id),
        )
        return [(c.parent_id, c) for c in rows]

    return load


def _locations(session: Session, t: Template) -> list[dict[str, Any]]:
    """Strato addition: where the template's copies are (image stores and primary pools)."""
    out: list[dict[str, Any]] = []
    for copy in related(session, "template.storecopies", t.id, _store_copies(session)):
        out.append(
            {
                "type": "imagestore",
                "id": copy.store_id,
                "name": name_of(session, ImageStore, copy.store_id),
                "state": copy.state,
                "path": copy.path,
            }
        )
    for layer in related(session, "template.poolcopies", t.id, _pool_copies(session)):
        out.append(
            {
                "type": "storagepool",
                "id": layer.pool_id,
                "name": name_of(session, StoragePool, layer.pool_id),
                "state": layer.state,
                "path": layer.path,
            }
        )
    return out


def template(session: Session, t: Template) -> dict[str, Any]:
    children = related(session, "template.children", t.id, _children(session))
    status = {"Ready": "Download Complete", "Downloading": "Download in progress", "Creating": "Creating"}
    return clean(
        {
            "id": t.id,
            "name": t.name,
            "displaytext": t.display_text,
            "format": t.format,
            "isready": t.state == "Ready",
            "status": t.status_text if t.state == "Error" else status.get(t.state, t.state),
            "state": t.state,
            "ispublic": t.is_public,
            "isfeatured": t.is_featured,
            "isextractable": t.is_extractable,
            "passwordenabled": t.password_enabled,
            "bootable": t.bootable,
            "crossZones": t.zone_id is None,
            "zoneid": t.zone_id,
            "zonename": name_of(session, Zone, t.zone_id),
            "ostypename": t.os_type,
            "ostypeid": t.os_type,
            "hypervisor": t.hypervisor,
            "size": t.virtual_size,
            "physicalsize": t.physical_size,
            "templatetype": t.template_type,
            "checksum": t.checksum,
            "url": t.url,
            "created": cs_date(t.created),
            "parenttemplateid": t.parent_id,
            "sshkeyenabled": False,
            "isdynamicallyscalable": False,
            "directdownload": False,
            "deployasis": False,
            "requireshvm": True,
            "childtemplates": [
                {"id": c.id, "name": c.name, "size": c.virtual_size, "diskindex": c.disk_index, "state": c.state}
                for c in children
            ],
            "locations": _locations(session, t),
            "tags": tags(session, t.id),
            **owner_fields(session, t.account_id),
        }
    )


def iso(session: Session, t: Template) -> dict[str, Any]:
    out = template(session, t)
    for key in ("templatetype", "childtemplates", "passwordenabled", "requireshvm", "deployasis"):
        out.pop(key, None)
    return out


def ssh_keypair(session: Session, k: SSHKeyPair, private_key: str | None = None) -> dict[str, Any]:
    return clean(
        {
            "id": k.id,
            "name": k.name,
            "fingerprint": k.fingerprint,
            "publickey": k.public_key,
            "privatekey": private_key,
            **owner_fields(session, k.account_id),
        }
    )


register_result(
    "virtualmachine",
    lambda s, i, admin: virtual_machine(s, v, admin) if (v := fetch(s, VirtualMachine, i)) else None,
    VirtualMachine,
)
register_result("volume", lambda s, i, _admin: volume(s, v) if (v := fetch(s, Volume, i)) else None, Volume)
register_result("template", lambda s, i, _admin: template(s, t) if (t := fetch(s, Template, i)) else None, Template)
