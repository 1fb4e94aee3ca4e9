"""Turns one typed command into the matching driver call and returns its typed answer."""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from pydantic import BaseModel

from strato.agent.drivers.base import Driver, DriverError, ProgressFn
from strato.protocol.messages import (
    Ack,
    AttachDisk,
    AttachPool,
    BuildConfigDrive,
    ChangeCdrom,
    Command,
    ConfigureSimulator,
    ConsoleLog,
    ConvertLayer,
    CopyLayer,
    CreateLayer,
    DetachDisk,
    ErrorCode,
    FetchImage,
    GetConsoleLog,
    GetHostInfo,
    GetLayerInfo,
    GetState,
    GetVm,
    GetVmStats,
    RebaseLayer,
    RebootVm,
    RemoveLayer,
    RemoveVm,
    ResizeLayer,
    StartVm,
    StopVm,
)


@runtime_checkable
class SimulatorControl(Protocol):
    """A driver that accepts `configure_simulator` (only the simulator does)."""

    async def configure(self, command: ConfigureSimulator) -> None: ...


def _no_progress(done: int, total: int) -> None:
    """Progress sink for a long command run synchronously."""


async def dispatch(driver: Driver, command: Command, progress: ProgressFn = _no_progress) -> BaseModel:
    """Run `command` on `driver`; DriverError propagates for the caller to map to a status."""
    match command:
        case GetHostInfo():
            return await driver.host_info()
        case GetState(pools=pools):
            return await driver.state(pools)
        case AttachPool(pool=pool, create=create):
            return await driver.attach_pool(pool, create)
        case CreateLayer(layer=layer, size_bytes=size, backing=backing):
            return await driver.create_layer(layer, size, backing)
        case GetLayerInfo(layer=layer):
            return await driver.layer_info(layer)
        case CopyLayer(source=source, target=target, bandwidth_bytes_per_s=bandwidth):
            return await driver.copy_layer(source, target, bandwidth, progress)
        case RebaseLayer(layer=layer, backing=backing):
            return await driver.rebase_layer(layer, backing)
        case RemoveLayer(layer=layer, missing_ok=missing_ok):
            await driver.remove_layer(layer, missing_ok)
            return Ack()
        case StartVm(spec=spec):
            return await driver.start_vm(spec)
        case StopVm(name=name, force=force, timeout_s=timeout_s):
            return await driver.stop_vm(name, force, timeout_s)
        case RebootVm(name=name):
            return await driver.reboot_vm(name)
        case GetVm(name=name):
            return await driver.get_vm(name)
        case GetVmStats(name=name):
            return await driver.vm_stats(name)
        case FetchImage(url=url, target=target, format=fmt, checksum=checksum):
            return await driver.fetch_image(url, target, fmt, checksum, progress)
        case ConvertLayer(source=source, target=target):
            return await driver.convert_layer(source, target, progress)
        case ResizeLayer(layer=layer, size_bytes=size, vm_name=vm_name, device_id=device_id):
            return await driver.resize_layer(layer, size, vm_name, device_id)
        case BuildConfigDrive(
            target=target,
            hostname=hostname,
            instance_id=instance_id,
            user_data=user_data,
            public_keys=public_keys,
        ):
            return await driver.build_config_drive(target, hostname, instance_id, user_data, public_keys)
        case AttachDisk(vm_name=vm_name, disk=disk):
            return await driver.attach_disk(vm_name, disk)
        case DetachDisk(vm_name=vm_name, device_id=device_id):
            return await driver.detach_disk(vm_name, device_id)
        case ChangeCdrom(vm_name=vm_name, path=path):
            return await driver.change_cdrom(vm_name, path)
        case RemoveVm(name=name):
            await driver.remove_vm(name)
            return Ack()
        case GetConsoleLog(name=name, tail_bytes=tail_bytes):
            if tail_bytes is not None and tail_bytes < 0:
                raise DriverError(ErrorCode.BAD_REQUEST, "tail_bytes must be >= 0")
            return ConsoleLog(name=name, text=await driver.console_log(name, tail_bytes))
        case ConfigureSimulator():
            if not isinstance(driver, SimulatorControl):
                raise DriverError(ErrorCode.BAD_REQUEST, "only the simulator driver supports configure_simulator")
            await driver.configure(command)
            return Ack()
    raise DriverError(ErrorCode.UNKNOWN_COMMAND, f"no handler for command {command.type!r}")
