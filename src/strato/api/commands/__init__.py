"""API command declarations, one module per area. Importing this package registers them all."""

from strato.api.commands import identity, infrastructure, jobs, offerings, storage, system  # noqa: F401
