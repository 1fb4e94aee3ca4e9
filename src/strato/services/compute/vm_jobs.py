"""Async jobs of VMs. Each step that writes something on a host registers how to undo it, so a
failure leaves no file behind and the VM ends in a stable state (Stopped, Running or Error)."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from strato.db.base import utcnow
from strato.db.models import Host, Job, Layer, StoragePool, Template, VirtualMachine, Volume
from strato.db.models.storage import LAYER_CONFIG_DRIVE, LAYER_TEMPLATE, LAYER_VOLUME
from strato.engine.allocator import DiskRequest, plan, reaches
from strato.engine.context import JobContext
from strato.engine.jobkinds import JobResult, job_kind
from strato.errors import InvalidState, ResourceUnavailable
from strato.protocol.client import AgentClientError
from strato.protocol.messages import (
    BuildConfigDrive,
    ChangeCdrom,
    ConvertLayer,
    LayerInfo,
    RebootVm,
    RemoveLayer,
    RemoveVm,
    ResizeLayer,
    StartVm,
    StopVm,
)
from strato.services.compute.vmspec import config_drive_layer, iso_path, vm_spec
from strato.services.core import settings
from strato.services.core.agents import agent_error, agent_errors, host_client
from strato.services.core.states import vm_to, volume_to
from strato.services.storage.disks import attached_volumes
from strato.services.storage.layers import (
    create_layer_on,
    ensure_template_on_pool,
    ref,
    remove_layer_file,
    remove_layers_created_by,
    remove_volume_layers,
    template_layer_path,
    volume_layer_path,
)

VM_RESULT = "virtualmachine"
# How long a graceful stop waits for the guest before QEMU is quit: the agent answers after this plus its
# quit grace (5 s), which must stay within the agent client's 30 s read timeout, or the job would fail
# (534, "not reachable") while the agent goes on stopping the VM.
GRACEFUL_STOP_S = 20.0


def _result(vm_id: str) -> JobResult:
    return {"type": VM_RESULT, "id": vm_id}


# --- deploy ----------------------------------------------------------------------------------------


def _plan_deploy(job: JobContext) -> tuple[str, list[str]]:
    disks: list[dict[str, Any]] = job.params["disks"]
    with job.db.session() as s:
        vm = s.get(VirtualMachine, job.params["vm_id"])
        assert vm is not None
        requests = []
        for d in disks:
            extra: dict[str, int] = {}
            if d.get("template_id"):
                tmpl = s.get(Template, d["template_id"])
                assert tmpl is not None
                cached = {
                    lay.pool_id
                    for lay in s.scalars(
                        select(Layer).where(
                            Layer.template_id == tmpl.id, Layer.kind == LAYER_TEMPLATE, Layer.removed.is_(None)
                        )
                    )
                }
                extra = {p.id: tmpl.virtual_size for p in s.scalars(select(StoragePool)) if p.id not in cached}
            requests.append(
                DiskRequest(
                    label=d["label"],
                    size=d["size"],
                    tags=frozenset(d["tags"]),
                    storage_type=d["storage_type"],
                    pool_id=d.get("pool_id"),
                    extra_by_pool=extra,
                )
            )
        chosen = plan(
            s,
            vm.zone_id,
            requests,
            vm.memory_mib,
            vm.cpu_number,
            settings.allocation_limits(s),
            host_id=job.params["host_id"],
        )
        vm.host_id = chosen.host.id if job.params["start"] else None
        vm.last_host_id = chosen.host.id
        for d, pool in zip(disks, chosen.pools, strict=True):
            vol = s.get(Volume, d["volume_id"])
            assert vol is not None
            vol.pool_id = pool.id
            volume_to(vol, "Creating")
        return chosen.host.id, [p.id for p in chosen.pools]


def _create_disk(job: JobContext, disk: dict[str, Any], pool_id: str, host_id: str) -> str:
    """Makes the volume's top layer: a linked clone of the template's layer, a full copy, or empty.

    The layer's row names its backing layer before the file is made, so that a template deletion sees
    the clone being made and refuses."""
    base_id = None
    if disk.get("template_id"):
        with job.step(f"template on pool for {disk['label']}"):
            base_id = ensure_template_on_pool(job.db, disk["template_id"], pool_id, job_id=job.job_id)
    full = bool(base_id and job.params.get("fullclone"))
    with job.db.session() as s:
        layer = Layer(
            pool_id=pool_id,
            path="",
            parent_id=None if full else base_id,
            volume_id=disk["volume_id"],
            kind=LAYER_VOLUME,
            virtual_size=disk["size"],
            state="Creating",
            creating_job=job.job_id,
        )
        s.add(layer)
        s.flush()
        layer.path = volume_layer_path(disk["volume_id"], layer.id)
        layer_id, path = layer.id, layer.path
    try:
        if full:
            info = _full_clone(job, disk, pool_id, host_id, path)
        else:
            info = create_layer_on(job.db, pool_id, path, disk["size"], base_id, host_id)
    except BaseException:
        with job.db.session() as s:
            row = s.get(Layer, layer_id)
            if row is not None:
                s.delete(row)
        raise
    with job.db.session() as s:
        row = s.get(Layer, layer_id)
        vol = s.get(Volume, disk["volume_id"])
        assert row is not None and vol is not None
        row.state = "Ready"
        row.virtual_size, row.physical_size = info.virtual_size, info.physical_size
        vol.top_layer_id = layer_id
        vol.size = info.virtual_size
    return layer_id


def _full_clone(job: JobContext, disk: dict[str, Any], pool_id: str, host_id: str, path: str) -> LayerInfo:
    """A standalone copy of the template's layer, grown to the disk's size; nothing left if it fails."""
    with job.db.session() as s:
        pool = s.get(StoragePool, pool_id)
        host = s.get(Host, host_id)
        assert pool is not None and host is not None
        source, target = ref(pool, template_layer_path(disk["template_id"])), ref(pool, path)
        client, host_name = host_client(host), host.name
    try:
        info = client.run_long(ConvertLayer(source=source, target=target))
        if info.virtual_size < disk["size"]:
            info = client.call(ResizeLayer(layer=target, size_bytes=disk["size"]))
        return info
    except AgentClientError as exc:
        with contextlib.suppress(AgentClientError):
            client.call(RemoveLayer(layer=target, missing_ok=True))
        raise agent_error(host_name, exc) from None


def _build_config_drive(job: JobContext, root_pool_id: str, host_id: str) -> str | None:
    with job.db.session() as s:
        vm = s.get(VirtualMachine, job.params["vm_id"])
        assert vm is not None
        if not vm.user_data and not vm.public_key:
            return None
        pool = s.get(StoragePool, root_pool_id)
        host = s.get(Host, host_id)
        assert pool is not None and host is not None
        layer = Layer(
            pool_id=pool.id,
            path=f"configdrive/{vm.id}.iso",
            kind=LAYER_CONFIG_DRIVE,
            vm_id=vm.id,
            state="Creating",
            creating_job=job.job_id,
        )
        s.add(layer)
        s.flush()
        cmd = BuildConfigDrive(
            target=ref(pool, layer.path),
            hostname=vm.name,
            instance_id=vm.id,
            user_data=vm.user_data,
            public_keys=[vm.public_key] if vm.public_key else [],
        )
        client, host_name, layer_id = host_client(host), host.name, layer.id
    try:
        info = client.call(cmd)
    except AgentClientError as exc:
        with job.db.session() as s:
            row = s.get(Layer, layer_id)
            if row is not None:
                s.delete(row)
        raise agent_error(host_name, exc) from None
    with job.db.session() as s:
        row = s.get(Layer, layer_id)
        assert row is not None
        row.state, row.physical_size, row.virtual_size = "Ready", info.physical_size, info.virtual_size
    return layer_id


def _start_on(job: JobContext, vm_id: str, host_id: str) -> None:
    with job.db.session() as s:
        vm = s.get(VirtualMachine, vm_id)
        host = s.get(Host, host_id)
        assert vm is not None and host is not None
        spec = vm_spec(s, vm)
        client, host_name = host_client(host), host.name
    with agent_errors(host_name):
        client.call(StartVm(spec=spec))


def _stopper(job: JobContext, vm_id: str, host_id: str) -> Any:
    def undo() -> None:
        with job.db.session() as s:
            vm = s.get(VirtualMachine, vm_id)
            host = s.get(Host, host_id)
            assert vm is not None and host is not None
            client, name = host_client(host), vm.instance_name
        client.call(StopVm(name=name, force=True))
        client.call(RemoveVm(name=name))

    return undo


def deploy(job: JobContext) -> JobResult:
    vm_id = job.params["vm_id"]
    disks: list[dict[str, Any]] = job.params["disks"]
    with job.step("plan"):
        host_id, pool_ids = _plan_deploy(job)
    total = len(disks) + 2
    for n, (disk, pool_id) in enumerate(zip(disks, pool_ids, strict=True)):
        job.progress(n, total)
        with job.step(f"create {disk['label']}", undo=_volume_dropper(job, disk["volume_id"])):
            _create_disk(job, disk, pool_id, host_id)
    with job.step("config drive", undo=lambda: _drop_config_drive(job, vm_id)):
        _build_config_drive(job, pool_ids[0], host_id)
    job.progress(len(disks) + 1, total)
    if job.params["start"]:
        with job.step("start", undo=_stopper(job, vm_id, host_id)):
            _start_on(job, vm_id, host_id)
    with job.db.session() as s:
        vm = s.get(VirtualMachine, vm_id)
        assert vm is not None
        for vol in attached_volumes(s, vm_id):
            volume_to(vol, "Ready")
            vol.attached = utcnow()
        vm_to(vm, "Running" if job.params["start"] else "Stopped")
    return _result(vm_id)


def _volume_dropper(job: JobContext, volume_id: str) -> Callable[[], None]:
    return lambda: _drop_volume_layers(job, volume_id)


def _drop_volume_layers(job: JobContext, volume_id: str) -> None:
    with job.db.session() as s:
        vol = s.get(Volume, volume_id)
        top = vol.top_layer_id if vol is not None else None
    remove_volume_layers(job.db, top)


def _drop_config_drive(job: JobContext, vm_id: str) -> None:
    with job.db.session() as s:
        layer = config_drive_layer(s, vm_id)
        layer_id = layer.id if layer is not None else None
    if layer_id:
        remove_layer_file(job.db, layer_id)


def _deploy_failed(session: Session, job: Job) -> None:
    """The VM ends in Error with no disks; its volume rows are expunged (their files were removed)."""
    vm = session.get(VirtualMachine, job.params["vm_id"])
    if vm is None:
        return
    vm_to(vm, "Error")
    vm.host_id = None
    for vol in session.scalars(select(Volume).where(Volume.vm_id == vm.id, Volume.removed.is_(None))):
        volume_to(vol, "Expunged")
        vol.removed, vol.vm_id = utcnow(), None
    for layer in session.scalars(
        select(Layer).where(
            Layer.removed.is_(None), Layer.state == "Creating", Layer.kind.in_((LAYER_VOLUME, LAYER_CONFIG_DRIVE))
        )
    ):
        if layer.vm_id == vm.id or layer.volume_id in {d["volume_id"] for d in job.params["disks"]}:
            layer.removed, layer.state = utcnow(), "Removed"


def _deploy_recover(job: JobContext) -> JobResult:
    """After a crash: stop the VM if it started, remove every layer the deploy made, then fail."""
    _cleanup_vm(job, job.params["vm_id"], [d["volume_id"] for d in job.params["disks"]])
    remove_layers_created_by(job.db, job.job_id)
    raise ResourceUnavailable(
        "The deployment was interrupted by a management server restart; everything it had created was removed"
    )


def _cleanup_vm(job: JobContext, vm_id: str, volume_ids: list[str]) -> None:
    with job.db.session() as s:
        vm = s.get(VirtualMachine, vm_id)
        host = (
            s.get(Host, vm.host_id or vm.last_host_id) if vm is not None and (vm.host_id or vm.last_host_id) else None
        )
        name = vm.instance_name if vm is not None else ""
        client = host_client(host) if host is not None else None
        tops = [v.top_layer_id for v in s.scalars(select(Volume).where(Volume.id.in_(volume_ids)))]
        strays = [
            lay.id for lay in s.scalars(select(Layer).where(Layer.volume_id.in_(volume_ids), Layer.removed.is_(None)))
        ]
    if client is not None:
        try:
            client.call(StopVm(name=name, force=True))
            client.call(RemoveVm(name=name))
        except AgentClientError:
            pass
    for top in tops:
        remove_volume_layers(job.db, top)
    for layer_id in strays:
        remove_layer_file(job.db, layer_id)
    _drop_config_drive(job, vm_id)


job_kind("vm.deploy", recover=_deploy_recover, on_fail=_deploy_failed, event="VM.CREATE")(deploy)


# --- start / stop / reboot -------------------------------------------------------------------------


def start(job: JobContext) -> JobResult:
    vm_id = job.params["vm_id"]
    with job.step("plan"), job.db.session() as s:
        vm = s.get(VirtualMachine, vm_id)
        assert vm is not None
        volumes = attached_volumes(s, vm_id)
        pools = [s.get(StoragePool, v.pool_id) for v in volumes if v.pool_id]
        requests = [DiskRequest(label=v.name, size=0, pool_id=v.pool_id, existing=True) for v in volumes if v.pool_id]
        # The volumes exist: the host must reach their pools; sizes are already accounted.
        chosen = plan(
            s,
            vm.zone_id,
            requests,
            vm.memory_mib,
            vm.cpu_number,
            settings.allocation_limits(s),
            host_id=job.params.get("host_id"),
            prefer_host_id=vm.last_host_id,
        )
        assert all(p is not None and reaches(chosen.host, p) for p in pools)
        vm.host_id = vm.last_host_id = chosen.host.id
        host_id = chosen.host.id
    with job.step("start", undo=_stopper(job, vm_id, host_id)):
        _start_on(job, vm_id, host_id)
    with job.db.session() as s:
        vm = s.get(VirtualMachine, vm_id)
        assert vm is not None
        vm_to(vm, "Running")
    return _result(vm_id)


def _back_to_stopped(session: Session, job: Job) -> None:
    vm = session.get(VirtualMachine, job.params["vm_id"])
    if vm is not None and vm.state in ("Starting", "Running"):
        vm_to(vm, "Stopped")
        vm.host_id = None


job_kind("vm.start", on_fail=_back_to_stopped, event="VM.START")(start)


def _host_and_name(job: JobContext, vm_id: str) -> tuple[Any, str, str]:
    with job.db.session() as s:
        vm = s.get(VirtualMachine, vm_id)
        assert vm is not None
        host = s.get(Host, vm.host_id) if vm.host_id else None
        if host is None:
            raise InvalidState(f"VM {vm.name} has no host")
        return host_client(host), host.name, vm.instance_name


def stop(job: JobContext) -> JobResult:
    vm_id = job.params["vm_id"]
    with job.db.session() as s:
        vm = s.get(VirtualMachine, vm_id)
        assert vm is not None
        if vm.state == "Stopped":
            return _result(vm_id)
    client, host_name, name = _host_and_name(job, vm_id)
    with job.step("stop"), agent_errors(host_name):
        client.call(StopVm(name=name, force=bool(job.params.get("forced")), timeout_s=GRACEFUL_STOP_S))
    with job.db.session() as s:
        vm = s.get(VirtualMachine, vm_id)
        assert vm is not None
        vm_to(vm, "Stopped")
        vm.host_id = None
    return _result(vm_id)


def _stop_failed(session: Session, job: Job) -> None:
    vm = session.get(VirtualMachine, job.params["vm_id"])
    if vm is not None and vm.state == "Stopping":
        vm_to(vm, "Running")  # the agent did not stop it; VM sync corrects this if it did


job_kind("vm.stop", recover=stop, on_fail=_stop_failed, event="VM.STOP")(stop)


def reboot(job: JobContext) -> JobResult:
    client, host_name, name = _host_and_name(job, job.params["vm_id"])
    with agent_errors(host_name):
        client.call(RebootVm(name=name))
    return _result(job.params["vm_id"])


job_kind("vm.reboot", recover=reboot, event="VM.REBOOT")(reboot)


# --- destroy / expunge -----------------------------------------------------------------------------


def destroy(job: JobContext) -> JobResult:
    vm_id = job.params["vm_id"]
    with job.db.session() as s:
        vm = s.get(VirtualMachine, vm_id)
        assert vm is not None
        running = vm.state == "Running" and vm.host_id
        if running:
            vm_to(vm, "Stopping")
    if running:
        client, host_name, name = _host_and_name(job, vm_id)
        with job.step("stop"), agent_errors(host_name):
            client.call(StopVm(name=name, force=True))
    with job.db.session() as s:
        vm = s.get(VirtualMachine, vm_id)
        assert vm is not None
        vm_to(vm, "Destroyed")
        vm.host_id, vm.destroyed_at = None, utcnow()
        for vol in attached_volumes(s, vm_id):
            if vol.volume_type == "ROOT" or vol.id in job.params.get("volume_ids", []):
                volume_to(vol, "Destroy")
    if job.params.get("expunge"):
        return expunge(job)
    return _result(vm_id)


def _destroy_failed(session: Session, job: Job) -> None:
    vm = session.get(VirtualMachine, job.params["vm_id"])
    if vm is not None and vm.state == "Stopping":
        vm_to(vm, "Running")


job_kind("vm.destroy", recover=destroy, on_fail=_destroy_failed, event="VM.DESTROY")(destroy)


def expunge(job: JobContext) -> JobResult:
    """Removes the VM's root disk files, its config drive and its run files on the host; data disks
    are detached and kept (unless they were destroyed with it)."""
    vm_id = job.params["vm_id"]
    with job.db.session() as s:
        vm = s.get(VirtualMachine, vm_id)
        assert vm is not None
        expected = job.params.get("expect_state")
        if expected and vm.state != expected and vm.state != "Expunging":
            return _result(vm_id)  # recovered (or otherwise changed) since the expunge was queued
        if vm.state == "Stopped":
            vm_to(vm, "Destroyed")
        if vm.state != "Expunging":
            vm_to(vm, "Expunging")
        host = s.get(Host, vm.last_host_id) if vm.last_host_id else None
        name = vm.instance_name
        doomed = [
            (v.id, v.top_layer_id)
            for v in attached_volumes(s, vm_id)
            if v.volume_type == "ROOT" or v.state == "Destroy"
        ]
    for volume_id, top in doomed:
        with job.step(f"remove volume {volume_id}"):
            remove_volume_layers(job.db, top)
            with job.db.session() as s:
                vol = s.get(Volume, volume_id)
                assert vol is not None
                volume_to(vol, "Expunged")
                vol.removed, vol.vm_id, vol.top_layer_id = utcnow(), None, None
    with job.step("config drive"):
        _drop_config_drive(job, vm_id)
    if host is not None:
        # Run files of a stopped VM on an unreachable host are harmless: they are removed on a later expunge.
        with contextlib.suppress(AgentClientError):
            host_client(host).call(RemoveVm(name=name))
    with job.db.session() as s:
        vm = s.get(VirtualMachine, vm_id)
        assert vm is not None
        for vol in attached_volumes(s, vm_id):
            vol.vm_id, vol.device_id, vol.attached = None, None, None
        vm_to(vm, "Expunged")
        vm.removed, vm.host_id, vm.iso_id = utcnow(), None, None
    return {"success": True}


def _expunge_failed(session: Session, job: Job) -> None:
    vm = session.get(VirtualMachine, job.params["vm_id"])
    if vm is not None and vm.state == "Expunging":
        vm_to(vm, "Destroyed")


job_kind("vm.expunge", recover=expunge, on_fail=_expunge_failed, event="VM.EXPUNGE")(expunge)


# --- scale and ISO ---------------------------------------------------------------------------------


def scale(job: JobContext) -> JobResult:
    with job.db.session() as s:
        vm = s.get(VirtualMachine, job.params["vm_id"])
        assert vm is not None
        if vm.state != "Stopped":
            raise InvalidState(f"VM {vm.name} is {vm.state}; only stopped VMs can be scaled")
        vm.service_offering_id = job.params["offering_id"]
        vm.cpu_number, vm.cpu_speed, vm.memory_mib = job.params["cpus"], job.params["speed"], job.params["memory"]
    return _result(job.params["vm_id"])


job_kind("vm.scale", recover=scale, event="VM.UPGRADE")(scale)


def change_iso(job: JobContext) -> JobResult:
    vm_id, iso_id = job.params["vm_id"], job.params.get("iso_id")
    with job.db.session() as s:
        vm = s.get(VirtualMachine, vm_id)
        assert vm is not None
        running = vm.state == "Running" and vm.host_id is not None
        path = iso_path(s, iso_id) if iso_id else None
        if iso_id and path is None:
            raise ResourceUnavailable("The ISO has no ready copy on an image store")
    if running:
        client, host_name, name = _host_and_name(job, vm_id)
        with agent_errors(host_name):
            client.call(ChangeCdrom(vm_name=name, path=path))
    with job.db.session() as s:
        vm = s.get(VirtualMachine, vm_id)
        assert vm is not None
        vm.iso_id = iso_id
    return _result(vm_id)


job_kind("vm.iso", recover=change_iso, event="VM.ISO")(change_iso)
