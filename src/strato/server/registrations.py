"""The modules that register something when imported: API commands, job kinds, periodic tasks and the
monitor's state consumers. Imported by name, so that no linter drops an import that looks unused."""

from __future__ import annotations

import importlib

MODULES = (
    "strato.api.commands",
    "strato.services.identity_jobs",
    "strato.services.host_jobs",
    "strato.services.template_jobs",
    "strato.services.vm_jobs",
    "strato.services.volume_jobs",
    "strato.services.vmsync",
    "strato.services.housekeeping",
)


def load_registrations() -> None:
    for name in MODULES:
        importlib.import_module(name)
