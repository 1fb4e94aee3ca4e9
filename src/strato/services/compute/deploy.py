"""deployVirtualMachine: the request (lookups, permissions, the VM and volume rows) and the operation
that places the disks, makes them (a linked clone of the template's layer on the pool, a full copy or an
empty disk), builds the config drive and starts the VM.

Starting the VM is the point of no return; before it, a failure or a crash removes every file the deploy
made and the VM ends in Error with no disks."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from typing import Any, ClassVar

from pydantic import BaseModel
from sqlalchemy import select
from sqlalchemy.orm import Session

from strato.db.base import utcnow
from strato.db.models import Host, Layer, ServiceOffering, StoragePool, Template, VirtualMachine, Volume, Zone
from strato.db.models.storage import LAYER_CONFIG_DRIVE, LAYER_TEMPLATE, LAYER_VOLUME
from strato.engine.allocator import DiskRequest, plan
from strato.engine.jobkinds import JobResult
from strato.engine.operation import Operation, Step, StepData
from strato.errors import InvalidParameter
from strato.protocol.client import AgentClientError
from strato.protocol.messages import BuildConfigDrive, ConvertLayer, LayerInfo, RemoveLayer, ResizeLayer, StartVm
from strato.services.compute.vmcommon import drop_config_drive, load_vm, tear_down_on_host, vm_result
from strato.services.compute.vms import (
    admin_choice,
    check_name,
    decode_user_data,
    details_of,
    offering_size,
    owner_of,
    pool_choice,
    tags_of,
)
from strato.services.compute.vmspec import config_drive_layer, vm_spec
from strato.services.core import jobs, limits, settings
from strato.services.core.agents import agent_error, agent_errors, host_client
from strato.services.core.context import CallContext
from strato.services.core.lookup import get_live
from strato.services.core.states import vm_to, volume_to
from strato.services.identity import sshkeys
from strato.services.images.templates import get_template
from strato.services.network.networks import requested_nics
from strato.services.network.nics import add_nic, prepare_for_vm
from strato.services.network.secgroups import attach, groups_for_deploy
from strato.services.offerings.offerings import compute_shape
from strato.services.storage.disks import attached_volumes
from strato.services.storage.layers import (
    create_layer_on,
    ensure_template_on_pool,
    ref,
    remove_layers_created_by,
    remove_unfinished_volume_layers,
    template_layer_path,
    unmake_volume_disk,
    volume_layer_path,
)
from strato.services.storage.rules import check_data_disk_limit
from strato.units import GIB


class DeployDisk(BaseModel):
    label: str
    type: str  # ROOT or DATADISK
    size: int
    tags: list[str] = []
    storage_type: str = "shared"
    template_id: str | None = None
    disk_offering_id: str | None = None
    pool_id: str | None = None  # the admin's choice
    volume_id: str


class DeployParams(BaseModel):
    vm_id: str
    disks: list[DeployDisk]
    start: bool = True
    host_id: str | None = None
    fullclone: bool = False


class DeployVirtualMachine(Operation[DeployParams]):
    kind: ClassVar[str] = "vm.deploy"
    cmd: ClassVar[str] = "deployVirtualMachine"
    event: ClassVar[str | None] = "VM.CREATE"
    params_model = DeployParams
    interrupted_text: ClassVar[str] = (
        "The deployment was interrupted by a management server restart; everything it had created was removed"
    )

    @classmethod
    def resources(cls, params: DeployParams) -> list[str]:
        return [f"vm:{params.vm_id}", *(f"volume:{d.volume_id}" for d in params.disks)]

    @classmethod
    def check(cls, session: Session, params: DeployParams) -> None:
        vm = load_vm(session, params.vm_id)
        for disk in params.disks:
            if disk.template_id is None:
                continue
            tmpl = session.get(Template, disk.template_id)
            if tmpl is None or tmpl.removed is not None or tmpl.state != "Ready":
                state = "deleted" if tmpl is None or tmpl.removed else tmpl.state
                raise InvalidParameter(f"Template {tmpl.name if tmpl else disk.template_id} is not ready ({state})")
        data_disks = sum(1 for d in params.disks if d.type == "DATADISK")
        check_data_disk_limit(session, vm.hypervisor, data_disks, f"VM {vm.name}")

    def steps(self) -> Sequence[Step]:
        out = [Step("plan", self._plan, undo=self._unplan)]
        for n, disk in enumerate(self.params.disks):
            if disk.template_id:
                out.append(
                    Step(f"template on pool for {disk.label}", self._template_step(n), undo=self._unfinished_remover())
                )
            out.append(Step(f"create {disk.label}", self._create_step(n), undo=self._volume_remover(disk.volume_id)))
        out.append(Step("config drive", self._config_drive, undo=lambda: drop_config_drive(self.db, self.params.vm_id)))
        if self.params.start:
            out.append(Step("start", self._start, undo=self._stop, commit=True))
        out.append(Step("finish", self._finish, commit=not self.params.start))
        return out

    # --- steps ----------------------------------------------------------------------------------------

    def _plan(self) -> StepData:
        p = self.params
        with self.db.session() as s:
            vm = load_vm(s, p.vm_id)
            requests = [
                DiskRequest(
                    label=d.label,
                    size=d.size,
                    tags=frozenset(d.tags),
                    storage_type=d.storage_type,
                    pool_id=d.pool_id,
                    extra_by_pool=_template_extra(s, d.template_id),
                )
                for d in p.disks
            ]
            chosen = plan(
                s, vm.zone_id, requests, vm.memory_mib, vm.cpu_number, settings.allocation_limits(s), host_id=p.host_id
            )
            vm.host_id = chosen.host.id if p.start else None
            vm.last_host_id = chosen.host.id
            for d, pool in zip(p.disks, chosen.pools, strict=True):
                vol = s.get(Volume, d.volume_id)
                assert vol is not None
                vol.pool_id = pool.id
                if vol.state != "Creating":
                    volume_to(vol, "Creating")
            return {"host_id": chosen.host.id, "pools": [pool.id for pool in chosen.pools]}

    def _unplan(self) -> None:
        with self.db.session() as s:
            vm = s.get(VirtualMachine, self.params.vm_id)
            if vm is not None:
                vm.host_id = None

    def _pool(self, n: int) -> str:
        return str(self.output("plan")["pools"][n])

    def _host(self) -> str:
        return str(self.output("plan")["host_id"])

    def _template_step(self, n: int) -> Callable[[], StepData]:
        disk = self.params.disks[n]

        def run() -> StepData:
            assert disk.template_id is not None
            base = ensure_template_on_pool(self.db, disk.template_id, self._pool(n), job_id=self.job.job_id)
            return {"base_id": base}

        return run

    def _unfinished_remover(self) -> Callable[[], None]:
        return lambda: remove_layers_created_by(self.db, self.job.job_id)

    def _create_step(self, n: int) -> Callable[[], StepData]:
        return lambda: self._create_disk(n)

    def _create_disk(self, n: int) -> StepData:
        """Makes the volume's top layer. Its row names its backing layer before the file is made, so that a
        template deletion sees the clone being made and refuses. Run again, it first clears a half-made one."""
        disk, pool_id = self.params.disks[n], self._pool(n)
        base_id = self.output(f"template on pool for {disk.label}").get("base_id")
        with self.db.session() as s:
            vol = s.get(Volume, disk.volume_id)
            assert vol is not None
            if vol.top_layer_id is not None:
                return {"layer_id": vol.top_layer_id}
        remove_unfinished_volume_layers(self.db, disk.volume_id)
        full = bool(base_id and self.params.fullclone)
        with self.db.session() as s:
            layer = Layer(
                pool_id=pool_id,
                path="",
                parent_id=None if full else base_id,
                volume_id=disk.volume_id,
                kind=LAYER_VOLUME,
                virtual_size=disk.size,
                state="Creating",
                creating_job=self.job.job_id,
            )
            s.add(layer)
            s.flush()
            layer.path = volume_layer_path(disk.volume_id, layer.id)
            layer_id, path = layer.id, layer.path
        if full:
            info = self._full_clone(disk, pool_id, path)
        else:
            info = create_layer_on(self.db, pool_id, path, disk.size, base_id, self._host())
        with self.db.session() as s:
            row, vol = s.get(Layer, layer_id), s.get(Volume, disk.volume_id)
            assert row is not None and vol is not None
            row.state, row.virtual_size, row.physical_size = "Ready", info.virtual_size, info.physical_size
            vol.top_layer_id, vol.size = layer_id, info.virtual_size
        return {"layer_id": layer_id}

    def _full_clone(self, disk: DeployDisk, pool_id: str, path: str) -> LayerInfo:
        """A standalone copy of the template's layer, grown to the disk's size."""
        assert disk.template_id is not None
        with self.db.session() as s:
            pool, host = s.get(StoragePool, pool_id), s.get(Host, self._host())
            assert pool is not None and host is not None
            source, target = ref(pool, template_layer_path(disk.template_id)), ref(pool, path)
            client, host_name = host_client(host), host.name
        try:
            info = client.run_long(ConvertLayer(source=source, target=target))
            if info.virtual_size < disk.size:
                info = client.call(ResizeLayer(layer=target, size_bytes=disk.size))
            return info
        except AgentClientError as exc:
            with contextlib.suppress(AgentClientError):
                client.call(RemoveLayer(layer=target, missing_ok=True))
            raise agent_error(host_name, exc) from None

    def _volume_remover(self, volume_id: str) -> Callable[[], None]:
        def undo() -> None:
            unmake_volume_disk(self.db, volume_id)

        return undo

    def _config_drive(self) -> StepData:
        vm_id = self.params.vm_id
        with self.db.session() as s:
            vm = load_vm(s, vm_id)
            existing = config_drive_layer(s, vm_id)
            if existing is not None and existing.state == "Ready":
                return {"layer_id": existing.id}
            wanted = bool(vm.user_data or vm.public_key)
        drop_config_drive(self.db, vm_id)
        if not wanted:
            return {}
        with self.db.session() as s:
            vm = load_vm(s, vm_id)
            pool, host = s.get(StoragePool, self._pool(0)), s.get(Host, self._host())
            assert pool is not None and host is not None
            layer = Layer(
                pool_id=pool.id,
                path=f"configdrive/{vm.id}.iso",
                kind=LAYER_CONFIG_DRIVE,
                vm_id=vm.id,
                state="Creating",
                creating_job=self.job.job_id,
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
        with agent_errors(host_name):
            info = client.call(cmd)
        with self.db.session() as s:
            row = s.get(Layer, layer_id)
            assert row is not None
            row.state, row.physical_size, row.virtual_size = "Ready", info.physical_size, info.virtual_size
        return {"layer_id": layer_id}

    def _start(self) -> StepData:
        with self.db.session() as s:
            vm = load_vm(s, self.params.vm_id)
            host = s.get(Host, self._host())
            assert host is not None
            spec, client, host_name = vm_spec(s, vm), host_client(host), host.name
            network_calls = prepare_for_vm(s, vm, host)
        for call in network_calls:
            call.run()
        with agent_errors(host_name):
            client.call(StartVm(spec=spec))
        return {}

    def _stop(self) -> None:
        tear_down_on_host(self.db, self.params.vm_id, self.output("plan").get("host_id"))

    def _finish(self) -> StepData:
        with self.db.session() as s:
            vm = load_vm(s, self.params.vm_id)
            for vol in attached_volumes(s, vm.id):
                if vol.state != "Ready":
                    volume_to(vol, "Ready")
                    vol.attached = utcnow()
            target = "Running" if self.params.start else "Stopped"
            if vm.state != target:
                vm_to(vm, target)
        return {}

    def result(self) -> JobResult:
        return vm_result(self.params.vm_id)

    @classmethod
    def failed(cls, session: Session, params: DeployParams) -> None:
        """The VM ends in Error with no disks; its volume rows are expunged (their files were removed)."""
        vm = session.get(VirtualMachine, params.vm_id)
        if vm is None:
            return
        if vm.state != "Error":
            vm_to(vm, "Error")
        vm.host_id = None
        volume_ids = {d.volume_id for d in params.disks}
        for vol in session.scalars(select(Volume).where(Volume.vm_id == vm.id, Volume.removed.is_(None))):
            volume_to(vol, "Expunged")
            vol.removed, vol.vm_id = utcnow(), None
        for layer in session.scalars(
            select(Layer).where(
                Layer.removed.is_(None), Layer.state == "Creating", Layer.kind.in_((LAYER_VOLUME, LAYER_CONFIG_DRIVE))
            )
        ):
            if layer.vm_id == vm.id or layer.volume_id in volume_ids:
                layer.removed, layer.state = utcnow(), "Removed"


def _template_extra(s: Session, template_id: str | None) -> dict[str, int]:
    """Bytes a template disk needs on each pool that has no copy of the template yet."""
    if not template_id:
        return {}
    tmpl = s.get(Template, template_id)
    assert tmpl is not None
    cached = set(
        s.scalars(
            select(Layer.pool_id).where(
                Layer.template_id == tmpl.id, Layer.kind == LAYER_TEMPLATE, Layer.removed.is_(None)
            )
        )
    )
    return {p.id: tmpl.virtual_size for p in s.scalars(select(StoragePool)) if p.id not in cached}


# --- the request ------------------------------------------------------------------------------------


def deploy(ctx: CallContext, args: dict[str, Any]) -> tuple[VirtualMachine, str]:
    """Creates the VM and its volume rows and queues the deploy; returns (vm, job id)."""
    owner = owner_of(ctx, args)
    zone = get_live(ctx.session, Zone, args["zoneid"], "zone", "zoneid")
    if zone.allocation_state != "Enabled" and not ctx.is_root_admin:
        raise InvalidParameter(f"Zone {zone.name} is disabled")
    offering = get_live(
        ctx.session, ServiceOffering, args["serviceofferingid"], "service offering", "serviceofferingid"
    )
    template = get_template(ctx, args["templateid"], iso=False, param="templateid")
    if template.state != "Ready":
        raise InvalidParameter(f"Template {template.name} is not ready ({template.state}: {template.status_text})")
    if template.parent_id is not None:
        raise InvalidParameter(f"Template {template.name} is a data disk of another template; deploy from its parent")
    host_id = admin_choice(ctx, args.get("hostid"), "hostid")
    if host_id:
        host = get_live(ctx.session, Host, host_id, "host", "hostid")
        if host.zone_id != zone.id:
            raise InvalidParameter(f"Host {host.name} is not in zone {zone.name}")
    details = details_of(args)
    wanted_nics = requested_nics(ctx, args, zone.id)
    groups = groups_for_deploy(ctx, args, zone, owner)
    cpus, speed, memory = compute_shape(ctx, offering, details)
    disks = _disks(ctx, args, zone, offering, template)
    limits.check(ctx.session, owner, vms=1, volumes=len(disks), storage_bytes=sum(d.size for d in disks))
    name = args.get("name") or None
    if name is not None:
        check_name(ctx, owner, name)
    keypair = public_key = None
    if args.get("keypair"):
        pair = sshkeys.find(ctx, args["keypair"], owner)
        keypair, public_key = pair.name, pair.public_key
    start = args.get("startvm", True) is not False
    vm = VirtualMachine(
        name=name or "",
        display_name=args.get("displayname") or "",
        instance_name="",
        account_id=owner.id,
        domain_id=owner.domain_id,
        zone_id=zone.id,
        service_offering_id=offering.id,
        template_id=template.id,
        cpu_number=cpus,
        cpu_speed=speed,
        memory_mib=memory,
        hypervisor=template.hypervisor,
        user_data=decode_user_data(args.get("userdata")),
        keypair=keypair,
        public_key=public_key,
        group=args.get("group"),
        state="Starting" if start else "Stopped",
        details=details,
    )
    ctx.session.add(vm)
    ctx.session.flush()
    vm.name = vm.name or f"VM-{vm.id}"
    vm.display_name = vm.display_name or vm.name
    vm.instance_name = f"i-{vm.id}"
    for index, (network, ip) in enumerate(wanted_nics):
        add_nic(ctx.session, vm, network, ip, default=index == 0)
    attach(ctx.session, vm, groups)
    for device_id, disk in enumerate(disks):
        volume = Volume(
            name=f"{disk.type}-{vm.name}" if device_id == 0 else f"DATA-{vm.name}-{device_id}",
            account_id=owner.id,
            domain_id=owner.domain_id,
            zone_id=zone.id,
            vm_id=vm.id,
            device_id=device_id,
            volume_type=disk.type,
            size=disk.size,
            disk_offering_id=disk.disk_offering_id,
            template_id=disk.template_id,
            state="Allocated",
            requested_pool_id=disk.pool_id,
        )
        ctx.session.add(volume)
        ctx.session.flush()
        disk.volume_id = volume.id
    params = DeployParams(vm_id=vm.id, disks=disks, start=start, host_id=host_id, fullclone=bool(args.get("fullclone")))
    return vm, jobs.submit_operation(ctx, DeployVirtualMachine, params, "VirtualMachine", vm.id)


def _disks(
    ctx: CallContext, args: dict[str, Any], zone: Zone, offering: ServiceOffering, template: Template
) -> list[DeployDisk]:
    """The VM's disks from the request: the root disk, the template's data disks, the extra data disks."""
    storage_type = offering.storage_type
    root_size = max(template.virtual_size, offering.root_disk_size_bytes or 0)
    if args.get("rootdisksize"):
        wanted = args["rootdisksize"] * GIB
        if wanted < template.virtual_size:
            raise InvalidParameter(
                f"Parameter rootdisksize ({args['rootdisksize']} GiB) is smaller than the "
                f"template ({template.virtual_size / GIB:.2f} GiB)"
            )
        root_size = wanted
    disks = [
        DeployDisk(
            label="ROOT",
            type="ROOT",
            size=root_size,
            tags=tags_of(offering.tags),
            storage_type=storage_type,
            template_id=template.id,
            volume_id="",
            pool_id=pool_choice(ctx, args.get("rootdiskstorageid"), "rootdiskstorageid", zone.id),
        )
    ]
    children = list(
        ctx.session.scalars(
            select(Template)
            .where(Template.parent_id == template.id, Template.removed.is_(None))
            .order_by(Template.disk_index)
        )
    )
    mapping = {
        m.get("datadisktemplateid"): m
        for m in (args.get("datadiskofferinglist") or []) + (args.get("datadisktemplatetodiskofferinglist") or [])
    }
    for key in mapping:
        if key not in {c.id for c in children}:
            raise InvalidParameter(
                f"datadiskofferinglist names {key}, which is not a data disk of template {template.name}"
            )
    for n, child in enumerate(children):
        entry = mapping.get(child.id, {})
        size, tags, dof = child.virtual_size, [], None
        if entry.get("diskofferingid"):
            dof, osize = offering_size(ctx, entry["diskofferingid"], None, "datadiskofferinglist.diskofferingid")
            size, tags = max(size, osize), tags_of(dof.tags)
        disks.append(
            DeployDisk(
                label=f"data disk {child.disk_index} (from template)",
                type="DATADISK",
                size=size,
                tags=tags,
                storage_type=dof.storage_type if dof else storage_type,
                template_id=child.id,
                disk_offering_id=dof.id if dof else None,
                volume_id="",
                pool_id=pool_choice(ctx, entry.get("storageid"), f"datadiskofferinglist[{n}].storageid", zone.id),
            )
        )
    extra: list[dict[str, Any]] = []
    if args.get("diskofferingid"):
        extra.append({"diskofferingid": args["diskofferingid"], "size": args.get("size")})
    extra.extend(args.get("datadisksdetails") or [])
    for n, entry in enumerate(extra):
        if not entry.get("diskofferingid"):
            raise InvalidParameter(f"datadisksdetails[{n}].diskofferingid is required")
        try:
            size_gib = int(entry["size"]) if entry.get("size") else None
        except ValueError:
            raise InvalidParameter(f"datadisksdetails[{n}].size must be a number of GiB") from None
        dof, size = offering_size(ctx, entry["diskofferingid"], size_gib, f"datadisksdetails[{n}].diskofferingid")
        disks.append(
            DeployDisk(
                label=f"data disk {len(disks)}",
                type="DATADISK",
                size=size,
                tags=tags_of(dof.tags),
                storage_type=dof.storage_type,
                disk_offering_id=dof.id,
                volume_id="",
                pool_id=pool_choice(ctx, entry.get("storageid"), f"datadisksdetails[{n}].storageid", zone.id),
            )
        )
    return disks
