"""The importVm job: each disk image on the host is placed on a pool and converted into a volume's layer."""

from __future__ import annotations

import os
from typing import Any

from sqlalchemy.orm import Session

from strato.db.base import utcnow
from strato.db.models import Host, Job, VirtualMachine, Volume
from strato.engine.allocator import DiskRequest, place_volume
from strato.engine.context import JobContext
from strato.engine.jobkinds import JobResult, job_kind
from strato.protocol.client import AgentClientError
from strato.protocol.messages import ConvertLayer, FetchImage, GetLayerInfo, LayerRef, PoolRef
from strato.services.core import settings
from strato.services.core.agents import agent_error, agent_errors, host_client
from strato.services.core.states import vm_to, volume_to
from strato.services.storage.layers import ref
from strato.services.storage.volume_jobs import (
    drop_layer_row,
    finish_volume_layer,
    new_volume_layer,
    volume_layers_remover,
)


def _source(path: str) -> LayerRef:
    return LayerRef(pool=PoolRef(id="import", path=os.path.dirname(path)), name=os.path.basename(path))


def import_vm(job: JobContext) -> JobResult:
    vm_id, host_id = job.params["vm_id"], job.params["host_id"]
    disks: list[dict[str, Any]] = job.params["disks"]
    with job.db.session() as s:
        host = s.get(Host, host_id)
        assert host is not None
        client, host_name = host_client(host), host.name
    for n, disk in enumerate(disks):
        source = _source(disk["path"])
        with agent_errors(host_name):
            info = client.call(GetLayerInfo(layer=source))
        with job.db.session() as s:
            vol = s.get(Volume, disk["volume_id"])
            host_row = s.get(Host, host_id)
            assert vol is not None and host_row is not None
            request = DiskRequest(label=f"disk {n} ({disk['path']})", size=info.virtual_size, pool_id=disk["pool_id"])
            pool = place_volume(s, vol.zone_id, request, settings.allocation_limits(s), host_row)
            vol.pool_id, vol.size = pool.id, info.virtual_size
            volume_to(vol, "Creating")
        layer_id, path = new_volume_layer(job, disk["volume_id"], pool.id, info.virtual_size)
        target = ref(pool, path)
        with job.step(f"import {disk['path']}", undo=volume_layers_remover(job, layer_id)):
            # ConvertLayer flattens qcow2 chains only; a raw image is fetched from its path (file://),
            # which converts it to qcow2 on the way.
            cmd: ConvertLayer | FetchImage = (
                FetchImage(url=f"file://{disk['path']}", target=target, format="raw")
                if info.format == "raw"
                else ConvertLayer(source=source, target=target)
            )
            try:
                done = client.run_long(cmd, on_progress=job.part_progress(n, len(disks)))
            except AgentClientError as exc:
                drop_layer_row(job, layer_id)
                raise agent_error(host_name, exc) from None
            finish_volume_layer(job, layer_id, disk["volume_id"], done.virtual_size, done.physical_size)
    with job.db.session() as s:
        vm = s.get(VirtualMachine, vm_id)
        assert vm is not None
        for disk in disks:
            vol = s.get(Volume, disk["volume_id"])
            assert vol is not None
            volume_to(vol, "Ready")
            vol.attached = utcnow()
    return {"type": "virtualmachine", "id": vm_id}


def _import_failed(session: Session, job: Job) -> None:
    vm = session.get(VirtualMachine, job.params["vm_id"])
    if vm is not None:
        vm_to(vm, "Error")
        vm.removed = None
    for disk in job.params["disks"]:
        vol = session.get(Volume, disk["volume_id"])
        if vol is not None:
            volume_to(vol, "Expunged")
            vol.removed, vol.vm_id = utcnow(), None


job_kind("vm.import", on_fail=_import_failed, event="VM.IMPORT")(import_vm)
