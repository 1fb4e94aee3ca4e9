"""Async jobs of volumes (create, attach, detach, resize, delete) and of importVm."""

from __future__ import annotations

from collections.abc import Callable

from sqlalchemy import select
from sqlalchemy.orm import Session

from strato.db.base import utcnow
from strato.db.models import Host, Job, Layer, StoragePool, VirtualMachine, Volume
from strato.db.models.storage import LAYER_VOLUME
from strato.engine.allocator import Allocator, DiskRequest, place_volume, reaches
from strato.engine.context import JobContext
from strato.engine.jobkinds import JobResult, job_kind
from strato.errors import InsufficientCapacity, InvalidState
from strato.protocol.messages import (
    AttachDisk,
    DetachDisk,
    ResizeLayer,
)
from strato.services.core import settings
from strato.services.core.agents import agent_errors, host_client
from strato.services.core.reach import host_for
from strato.services.core.settings import capability_for
from strato.services.core.states import volume_to
from strato.services.storage.disks import disk_spec
from strato.services.storage.layers import create_layer_on, ref, remove_volume_layers, volume_layer_path

VOLUME_RESULT = "volume"


def _vm_host(s: Session, vm: VirtualMachine) -> Host | None:
    host_id = vm.host_id or vm.last_host_id
    return s.get(Host, host_id) if host_id else None


def new_volume_layer(job: JobContext, volume_id: str, pool_id: str, size: int) -> tuple[str, str]:
    """Records a volume's new layer as Creating before its file exists, so recovery can find it."""
    with job.db.session() as s:
        layer = Layer(
            pool_id=pool_id,
            path="",
            volume_id=volume_id,
            kind=LAYER_VOLUME,
            virtual_size=size,
            state="Creating",
            creating_job=job.job_id,
        )
        s.add(layer)
        s.flush()
        layer.path = volume_layer_path(volume_id, layer.id)
        return layer.id, layer.path


def finish_volume_layer(job: JobContext, layer_id: str, volume_id: str, virtual: int, physical: int) -> None:
    """Marks the layer Ready and makes it the volume's top, with the sizes the agent reports."""
    with job.db.session() as s:
        layer, vol = s.get(Layer, layer_id), s.get(Volume, volume_id)
        assert layer is not None and vol is not None
        layer.state, layer.virtual_size, layer.physical_size = "Ready", virtual, physical
        vol.top_layer_id, vol.size = layer_id, virtual


def volume_layers_remover(job: JobContext, top_layer_id: str) -> Callable[[], None]:
    """The undo of a step that made a volume's layers: remove them again."""
    return lambda: remove_volume_layers(job.db, top_layer_id)


def drop_layer_row(job: JobContext, layer_id: str) -> None:
    """Forgets a layer row whose file was never made."""
    with job.db.session() as s:
        row = s.get(Layer, layer_id)
        if row is not None:
            s.delete(row)


def create(job: JobContext) -> JobResult:
    """The createVolume job: places the volume on a pool and creates its layer (and attaches it when asked)."""
    volume_id, vm_id = job.params["volume_id"], job.params.get("vm_id")
    with job.step("place"), job.db.session() as s:
        vol = s.get(Volume, volume_id)
        assert vol is not None
        vm = s.get(VirtualMachine, vm_id) if vm_id else None
        host = _vm_host(s, vm) if vm is not None else None
        disk = DiskRequest(
            label=f"volume {vol.name}",
            size=vol.size,
            tags=frozenset(job.params.get("tags") or []),
            storage_type=job.params.get("storage_type") or "shared",
            pool_id=vol.requested_pool_id,
        )
        pool = place_volume(s, vol.zone_id, disk, settings.allocation_limits(s), host)
        vol.pool_id = pool.id
        volume_to(vol, "Creating")
        pool_id, size = pool.id, vol.size
    layer_id, path = new_volume_layer(job, volume_id, pool_id, size)
    with job.step("create layer", undo=volume_layers_remover(job, layer_id)):
        try:
            info = create_layer_on(job.db, pool_id, path, size, None)
        except BaseException:
            drop_layer_row(job, layer_id)
            raise
        finish_volume_layer(job, layer_id, volume_id, info.virtual_size, info.physical_size)
    with job.db.session() as s:
        vol = s.get(Volume, volume_id)
        assert vol is not None
        volume_to(vol, "Ready")
    if vm_id:
        # The volume exists from here on: if attaching fails, it stays, Ready and detached, as CloudStack.
        job.keep_completed_steps()
        _attach(job, volume_id, vm_id, 1)  # the first free device id from 1
    return {"type": VOLUME_RESULT, "id": volume_id}


def _create_failed(session: Session, job: Job) -> None:
    vol = session.get(Volume, job.params["volume_id"])
    if vol is not None and vol.state in ("Allocated", "Creating"):
        volume_to(vol, "Expunged")
        vol.removed = utcnow()


job_kind("volume.create", on_fail=_create_failed, event="VOLUME.CREATE")(create)


def _attach(job: JobContext, volume_id: str, vm_id: str, device_id: int) -> None:
    with job.db.session() as s:
        vol, vm = s.get(Volume, volume_id), s.get(VirtualMachine, vm_id)
        assert vol is not None and vm is not None and vol.pool_id
        pool = s.get(StoragePool, vol.pool_id)
        assert pool is not None
        running = vm.state == "Running" and vm.host_id is not None
        host = s.get(Host, vm.host_id) if running and vm.host_id else None
        if host is not None and not reaches(host, pool):
            raise InvalidState(
                f"Pool {pool.name} of volume {vol.name} is not reachable from host {host.name} where VM {vm.name} runs"
            )
        if vm.state not in ("Running", "Stopped"):
            raise InvalidState(f"VM {vm.name} is {vm.state}")
        # Checked again here: other jobs on this volume or VM may have run since the request.
        if vol.vm_id is not None and vol.vm_id != vm_id:
            raise InvalidState(f"Volume {vol.name} is already attached to another VM")
        if vol.state != "Ready" or vol.removed is not None:
            raise InvalidState(f"Volume {vol.name} is {vol.state}; only Ready volumes can be attached")
        others = [v for v in s.scalars(select(Volume).where(Volume.vm_id == vm_id, Volume.removed.is_(None)))
                  if v.id != vol.id]  # fmt: skip
        cap = capability_for(s, vm.hypervisor if vm.hypervisor in ("KVM", "Simulator") else "KVM")
        if sum(1 for v in others if v.volume_type == "DATADISK") + 1 > cap.max_data_volumes_limit:
            raise InvalidState(f"VM {vm.name} has reached its limit of {cap.max_data_volumes_limit} data disks")
        used = {v.device_id for v in others}
        while device_id in used:
            device_id += 1
        vol.device_id = device_id
        spec = disk_spec(s, vol)
        vol.device_id = None
        client = host_client(host) if host is not None else None
        host_name, vm_name = (host.name if host else ""), vm.instance_name
    if client is not None:
        with agent_errors(host_name):
            client.call(AttachDisk(vm_name=vm_name, disk=spec))
    with job.db.session() as s:
        vol = s.get(Volume, volume_id)
        assert vol is not None
        vol.vm_id, vol.device_id, vol.attached = vm_id, device_id, utcnow()


def attach(job: JobContext) -> JobResult:
    """The attachVolume job: hot-plugs the disk into a running VM, or only records it for a stopped one."""
    _attach(job, job.params["volume_id"], job.params["vm_id"], job.params["device_id"])
    return {"type": VOLUME_RESULT, "id": job.params["volume_id"]}


job_kind("volume.attach", event="VOLUME.ATTACH")(attach)


def detach(job: JobContext) -> JobResult:
    """The detachVolume job: unplugs the disk from a running VM and records it detached."""
    volume_id, vm_id = job.params["volume_id"], job.params["vm_id"]
    with job.db.session() as s:
        vol, vm = s.get(Volume, volume_id), s.get(VirtualMachine, vm_id)
        assert vol is not None and vm is not None
        running = vm.state == "Running" and vm.host_id is not None
        host = s.get(Host, vm.host_id) if running and vm.host_id else None
        client = host_client(host) if host is not None else None
        host_name, vm_name, device_id = (host.name if host else ""), vm.instance_name, vol.device_id
    if client is not None and device_id is not None:
        with agent_errors(host_name):
            client.call(DetachDisk(vm_name=vm_name, device_id=device_id))
    with job.db.session() as s:
        vol = s.get(Volume, volume_id)
        assert vol is not None
        vol.vm_id, vol.device_id, vol.attached = None, None, None
    return {"type": VOLUME_RESULT, "id": volume_id}


job_kind("volume.detach", event="VOLUME.DETACH")(detach)


def resize(job: JobContext) -> JobResult:
    """The resizeVolume job: grows the layer (live on a running VM) once the pool has room."""
    volume_id, size = job.params["volume_id"], job.params["size"]
    with job.db.session() as s:
        vol = s.get(Volume, volume_id)
        assert vol is not None and vol.pool_id and vol.top_layer_id
        pool, top = s.get(StoragePool, vol.pool_id), s.get(Layer, vol.top_layer_id)
        assert pool is not None and top is not None
        if size > vol.size:  # the pool must have room for the growth, as for a new disk
            growth = DiskRequest(label=f"the growth of volume {vol.name}", size=size - vol.size, pool_id=pool.id)
            why = Allocator(s, settings.allocation_limits(s)).why_not(pool, growth, None)
            if why is not None:
                raise InsufficientCapacity(f"Cannot resize volume {vol.name}: {why}")
        vm = s.get(VirtualMachine, vol.vm_id) if vol.vm_id else None
        running_host = s.get(Host, vm.host_id) if vm is not None and vm.state == "Running" and vm.host_id else None
        host = running_host or host_for(s, [pool])
        cmd = ResizeLayer(
            layer=ref(pool, top.path),
            size_bytes=size,
            vm_name=vm.instance_name if running_host and vm else None,
            device_id=vol.device_id if running_host else None,
        )
        client, host_name, layer_id = host_client(host), host.name, top.id
        volume_to(vol, "Resizing")
    with agent_errors(host_name):
        info = client.call(cmd)
    with job.db.session() as s:
        vol, layer = s.get(Volume, volume_id), s.get(Layer, layer_id)
        assert vol is not None and layer is not None
        vol.size = info.virtual_size
        if job.params.get("offering_id"):
            vol.disk_offering_id = job.params["offering_id"]
        volume_to(vol, "Ready")
        layer.virtual_size, layer.physical_size = info.virtual_size, info.physical_size
    return {"type": VOLUME_RESULT, "id": volume_id}


def _resize_failed(session: Session, job: Job) -> None:
    vol = session.get(Volume, job.params["volume_id"])
    if vol is not None and vol.state == "Resizing":
        volume_to(vol, "Ready")


job_kind("volume.resize", on_fail=_resize_failed, event="VOLUME.RESIZE")(resize)


def delete(job: JobContext) -> JobResult:
    """The deleteVolume job: removes the volume's layers and forgets it."""
    volume_id = job.params["volume_id"]
    with job.db.session() as s:
        vol = s.get(Volume, volume_id)
        assert vol is not None
        top = vol.top_layer_id
    remove_volume_layers(job.db, top)
    with job.db.session() as s:
        vol = s.get(Volume, volume_id)
        assert vol is not None
        volume_to(vol, "Expunged")
        vol.removed, vol.top_layer_id = utcnow(), None
    return {"success": True}


def _delete_failed(session: Session, job: Job) -> None:
    """The volume stays in Destroy (as CloudStack's storage cleanup would leave it): deleteVolume may
    be called again once the pool's host is back; the job's ERROR event says why it failed."""


job_kind("volume.delete", recover=delete, on_fail=_delete_failed, event="VOLUME.DELETE")(delete)


# --- importVm --------------------------------------------------------------------------------------
