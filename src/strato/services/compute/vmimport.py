"""importVm: a VM made from disk images already on a host, each copied onto a chosen or allocated pool.

The request makes the VM (Stopped) and its volume rows; the operation imports each disk image in its own
step (placing the volume, then converting the image into the volume's layer) and then records the
volumes Ready, its point of no return. Before it, a failure or a crash removes every layer it made and
the VM ends in Error with no disks."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Any, ClassVar

from pydantic import BaseModel
from sqlalchemy import select
from sqlalchemy.orm import Session

from strato.db.base import utcnow
from strato.db.models import Host, Layer, ServiceOffering, StoragePool, VirtualMachine, Volume, Zone
from strato.db.models.storage import LAYER_VOLUME
from strato.engine.allocator import DiskRequest, place_volume
from strato.engine.jobkinds import JobResult
from strato.engine.operation import Operation, Step, StepData
from strato.errors import InvalidParameter
from strato.protocol.messages import ConvertLayer, FetchImage, GetLayerInfo, LayerRef, PoolRef
from strato.services.compute.vmcommon import load_vm, vm_result
from strato.services.core import jobs, limits, settings
from strato.services.core.agents import agent_errors, host_client
from strato.services.core.context import CallContext
from strato.services.core.lookup import get_live
from strato.services.core.states import vm_to, volume_to
from strato.services.offerings.offerings import compute_shape
from strato.services.storage.layers import (
    ref,
    remove_unfinished_volume_layers,
    unmake_volume_disk,
    volume_layer_path,
)


class ImportDisk(BaseModel):
    path: str
    pool_id: str | None = None
    volume_id: str = ""


class ImportParams(BaseModel):
    vm_id: str
    host_id: str
    disks: list[ImportDisk]


class ImportVm(Operation[ImportParams]):
    kind: ClassVar[str] = "vm.import"
    cmd: ClassVar[str] = "importVm"
    event: ClassVar[str | None] = "VM.IMPORT"
    params_model = ImportParams
    interrupted_text: ClassVar[str] = (
        "The import was interrupted by a management server restart; every disk it had imported was removed"
    )

    @classmethod
    def resources(cls, params: ImportParams) -> list[str]:
        return [f"vm:{params.vm_id}", *(f"volume:{d.volume_id}" for d in params.disks)]

    @classmethod
    def check(cls, session: Session, params: ImportParams) -> None:
        vm = load_vm(session, params.vm_id)
        host = session.get(Host, params.host_id)
        if host is None or host.removed is not None:
            raise InvalidParameter(f"Host {params.host_id} (hostid) has been deleted")
        for disk in params.disks:
            path = disk.path
            if not path.startswith("/") or "/../" in path or path.endswith("/"):
                raise InvalidParameter(f"Disk path {path!r} must be an absolute file path on the host")
            pool = session.get(StoragePool, disk.pool_id) if disk.pool_id else None
            if disk.pool_id and (pool is None or pool.removed is not None):
                raise InvalidParameter(f"Storage pool {disk.pool_id} has been deleted")
            zone = session.get(Zone, vm.zone_id)
            if pool is not None and zone is not None and pool.zone_id != zone.id:
                raise InvalidParameter(f"Storage pool {pool.name} is not in zone {zone.name}")

    def steps(self) -> Sequence[Step]:
        out = [
            Step(f"import disk {n} ({d.path})", self._importer(n), undo=self._remover(d.volume_id))
            for n, d in enumerate(self.params.disks)
        ]
        out.append(Step("finish", self._finish, commit=True))
        return out

    def _importer(self, n: int) -> Callable[[], StepData]:
        return lambda: self._import(n)

    def _import(self, n: int) -> StepData:
        """Places the volume, then converts the image into its layer; run again, it clears a half-made one."""
        disk = self.params.disks[n]
        with self.db.session() as s:
            vol = s.get(Volume, disk.volume_id)
            host = s.get(Host, self.params.host_id)
            assert vol is not None and host is not None
            if vol.top_layer_id is not None:
                return {"layer_id": vol.top_layer_id}
            client, host_name = host_client(host), host.name
        remove_unfinished_volume_layers(self.db, disk.volume_id)
        source = LayerRef(pool=PoolRef(id="import", path=os.path.dirname(disk.path)), name=os.path.basename(disk.path))
        with agent_errors(host_name):
            info = client.call(GetLayerInfo(layer=source))
        with self.db.session() as s:
            vol, host_row = s.get(Volume, disk.volume_id), s.get(Host, self.params.host_id)
            assert vol is not None and host_row is not None
            request = DiskRequest(label=f"disk {n} ({disk.path})", size=info.virtual_size, pool_id=disk.pool_id)
            pool = place_volume(s, vol.zone_id, request, settings.allocation_limits(s), host_row)
            vol.pool_id, vol.size = pool.id, info.virtual_size
            if vol.state != "Creating":
                volume_to(vol, "Creating")
            layer = Layer(
                pool_id=pool.id,
                path="",
                volume_id=vol.id,
                kind=LAYER_VOLUME,
                virtual_size=info.virtual_size,
                state="Creating",
                creating_job=self.job.job_id,
            )
            s.add(layer)
            s.flush()
            layer.path = volume_layer_path(vol.id, layer.id)
            layer_id, target = layer.id, ref(pool, layer.path)
        # ConvertLayer flattens qcow2 chains only; a raw image is fetched from its path (file://), which
        # converts it to qcow2 on the way.
        cmd: ConvertLayer | FetchImage = (
            FetchImage(url=f"file://{disk.path}", target=target, format="raw")
            if info.format == "raw"
            else ConvertLayer(source=source, target=target)
        )
        with agent_errors(host_name):
            done = client.run_long(cmd, on_progress=self.job.part_progress(n, len(self.params.disks)))
        with self.db.session() as s:
            row, vol = s.get(Layer, layer_id), s.get(Volume, disk.volume_id)
            assert row is not None and vol is not None
            row.state, row.virtual_size, row.physical_size = "Ready", done.virtual_size, done.physical_size
            vol.top_layer_id, vol.size = layer_id, done.virtual_size
        return {"layer_id": layer_id}

    def _remover(self, volume_id: str) -> Callable[[], None]:
        def undo() -> None:
            unmake_volume_disk(self.db, volume_id)

        return undo

    def _finish(self) -> StepData:
        with self.db.session() as s:
            for disk in self.params.disks:
                vol = s.get(Volume, disk.volume_id)
                assert vol is not None
                if vol.state != "Ready":
                    volume_to(vol, "Ready")
                    vol.attached = utcnow()
        return {}

    def result(self) -> JobResult:
        return vm_result(self.params.vm_id)

    @classmethod
    def failed(cls, session: Session, params: ImportParams) -> None:
        """The VM ends in Error with no disks (their layers were removed by the undos)."""
        vm = session.get(VirtualMachine, params.vm_id)
        if vm is not None and vm.state != "Error":
            vm_to(vm, "Error")
        for disk in params.disks:
            vol = session.get(Volume, disk.volume_id)
            if vol is not None and vol.removed is None:
                volume_to(vol, "Expunged")
                vol.removed, vol.vm_id = utcnow(), None
        for layer in session.scalars(
            select(Layer).where(
                Layer.removed.is_(None),
                Layer.state == "Creating",
                Layer.volume_id.in_([d.volume_id for d in params.disks]),
            )
        ):
            layer.removed, layer.state = utcnow(), "Removed"


def import_vm(ctx: CallContext, args: dict[str, Any]) -> tuple[VirtualMachine, str]:
    """importVm with importsource=local: disk images in a directory of a host, each onto a chosen pool."""
    if (args.get("importsource") or "local").lower() not in ("local", "shared"):
        raise InvalidParameter("Parameter importsource must be local (disk images on a host)")
    host = get_live(ctx.session, Host, args["hostid"], "host", "hostid")
    zone = get_live(ctx.session, Zone, args.get("zoneid") or host.zone_id, "zone", "zoneid")
    offering = get_live(
        ctx.session, ServiceOffering, args["serviceofferingid"], "service offering", "serviceofferingid"
    )
    details: dict[str, str] = {}
    for entry in args.get("details") or []:
        details.update(entry)
    cpus, speed, memory = compute_shape(ctx, offering, details)
    disks = [{"path": args["diskpath"], "pool_id": args.get("storageid")}]
    for n, entry in enumerate(args.get("datadisks") or []):
        if not entry.get("diskpath"):
            raise InvalidParameter(f"Parameter datadisks[{n}].diskpath is required")
        disks.append({"path": entry["diskpath"], "pool_id": entry.get("storageid")})
    for n, disk in enumerate(disks):
        if disk["pool_id"]:
            param = "storageid" if n == 0 else f"datadisks[{n - 1}].storageid"
            get_live(ctx.session, StoragePool, disk["pool_id"], "storage pool", param)
    name = args["name"]
    vm = VirtualMachine(
        name=name,
        display_name=args.get("displayname") or name,
        instance_name="",
        account_id=ctx.account.id,
        domain_id=ctx.account.domain_id,
        zone_id=zone.id,
        service_offering_id=offering.id,
        cpu_number=cpus,
        cpu_speed=speed,
        memory_mib=memory,
        hypervisor=host.hypervisor,
        state="Stopped",
        last_host_id=host.id,
        details=details,
    )
    ctx.session.add(vm)
    ctx.session.flush()
    vm.instance_name = f"i-{vm.id}"
    limits.check(ctx.session, ctx.account, vms=1, volumes=len(disks))
    for device_id, disk in enumerate(disks):
        vol = Volume(
            name=f"{'ROOT' if device_id == 0 else 'DATA'}-{name}-{device_id}",
            account_id=ctx.account.id,
            domain_id=ctx.account.domain_id,
            zone_id=zone.id,
            vm_id=vm.id,
            device_id=device_id,
            volume_type="ROOT" if device_id == 0 else "DATADISK",
            state="Allocated",
            requested_pool_id=disk["pool_id"],
        )
        ctx.session.add(vol)
        ctx.session.flush()
        disk["volume_id"] = vol.id
    params = ImportParams(vm_id=vm.id, host_id=host.id, disks=[ImportDisk(**d) for d in disks])
    return vm, jobs.submit_operation(ctx, ImportVm, params, "VirtualMachine", vm.id)
