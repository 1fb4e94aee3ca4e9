"""The modules that register something when imported: API commands, job kinds, periodic tasks and the
monitor's state consumers. Imported by name, so that no linter drops an import that looks unused."""

from __future__ import annotations

import importlib

MODULES = (
    "strato.api.commands",
    "strato.services.identity.identity_jobs",
    "strato.services.infra.host_jobs",
    "strato.services.images.template_jobs",
    "strato.services.compute.vm_jobs",
    "strato.services.compute.vmimport_jobs",
    "strato.services.storage.volume_jobs",
    "strato.services.infra.vmsync",
    "strato.services.infra.housekeeping",
)


def load_registrations() -> None:
    for name in MODULES:
        importlib.import_module(name)
