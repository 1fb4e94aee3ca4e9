"""What several VM operations share: the job result, reaching the VM's host, tearing a VM down on its host,
and removing its config drive. Each helper reads the database afresh, so a step may run again after a crash."""

from __future__ import annotations

import contextlib

from sqlalchemy import select
from sqlalchemy.orm import Session

from strato.db.engine import Database
from strato.db.models import Host, Layer, VirtualMachine
from strato.db.models.storage import LAYER_CONFIG_DRIVE
from strato.engine.jobkinds import JobResult
from strato.errors import InvalidState, NotFound
from strato.protocol.client import AgentClient, AgentClientError
from strato.protocol.messages import RemoveVm, StopVm
from strato.services.core.agents import host_client
from strato.services.storage.layers import remove_layer_file, remove_unfinished_layer

VM_RESULT = "virtualmachine"
# How long a graceful stop waits for the guest before QEMU is quit: the agent answers after this plus its
# quit grace (5 s), which must stay within the agent client's 30 s read timeout, or the job would fail
# (534, "not reachable") while the agent goes on stopping the VM.
GRACEFUL_STOP_S = 20.0


def vm_result(vm_id: str) -> JobResult:
    return {"type": VM_RESULT, "id": vm_id}


def load_vm(session: Session, vm_id: str) -> VirtualMachine:
    vm = session.get(VirtualMachine, vm_id)
    if vm is None or vm.removed is not None:
        raise NotFound(f"Unable to find virtual machine with id {vm_id}")
    return vm


def host_of(db: Database, vm_id: str) -> tuple[AgentClient, str, str]:
    """(client, host name, instance name) of the host the VM runs on; InvalidState when it has none."""
    with db.session() as s:
        vm = load_vm(s, vm_id)
        host = s.get(Host, vm.host_id) if vm.host_id else None
        if host is None:
            raise InvalidState(f"VM {vm.name} has no host")
        return host_client(host), host.name, vm.instance_name


def tear_down_on_host(db: Database, vm_id: str, host_id: str | None) -> None:
    """Stops the VM on the host and forgets it there (both idempotent on the agents); nothing when the VM
    or the host is gone."""
    with db.session() as s:
        vm = s.get(VirtualMachine, vm_id)
        host = s.get(Host, host_id) if host_id else None
        if vm is None or host is None:
            return
        client, name = host_client(host), vm.instance_name
    with contextlib.suppress(AgentClientError):
        client.call(StopVm(name=name, force=True))
    client.call(RemoveVm(name=name))


def drop_config_drive(db: Database, vm_id: str) -> None:
    """Removes the VM's config drive, also one whose making did not finish."""
    with db.session() as s:
        rows = [
            (lay.id, lay.state)
            for lay in s.scalars(
                select(Layer).where(Layer.vm_id == vm_id, Layer.kind == LAYER_CONFIG_DRIVE, Layer.removed.is_(None))
            )
        ]
    for layer_id, state in rows:
        if state == "Ready":
            remove_layer_file(db, layer_id)
        else:
            remove_unfinished_layer(db, layer_id)
