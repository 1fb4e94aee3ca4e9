"""The modules that register something when imported: API commands, job kinds, periodic tasks and the
monitor's state consumers. Imported by name, so that no linter drops an import that looks unused."""

from __future__ import annotations

import importlib

MODULES = (
    "strato.api.commands",
    "strato.services.identity.deletion",
    "strato.services.images.register",
    "strato.services.images.create",
    "strato.services.images.copies",
    "strato.services.images.delete",
    "strato.services.compute.deploy",
    "strato.services.compute.power",
    "strato.services.compute.account_disable",
    "strato.services.compute.destroy",
    "strato.services.compute.scale",
    "strato.services.compute.iso",
    "strato.services.compute.vmimport",
    "strato.services.compute.create_vm_snapshot",
    "strato.services.compute.revert_vm_snapshot",
    "strato.services.compute.delete_vm_snapshot",
    "strato.services.compute.hibernate",
    "strato.services.storage.create_volume",
    "strato.services.storage.attach_volume",
    "strato.services.storage.detach_volume",
    "strato.services.storage.resize_volume",
    "strato.services.storage.delete_volume",
    "strato.services.motion.migrate_volume",
    "strato.services.motion.migrate_vm",
    "strato.services.motion.pool_maintenance",
    "strato.services.motion.host_maintenance",
    "strato.services.infra.vmsync",
    "strato.services.network.netsync",
    "strato.services.network.network_jobs",
    "strato.services.network.nic_plug",
    "strato.services.network.firewall",
    "strato.services.infra.housekeeping",
)


def load_registrations() -> None:
    for name in MODULES:
        importlib.import_module(name)
