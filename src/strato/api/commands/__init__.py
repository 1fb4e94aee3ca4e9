"""API command declarations, one module per area. Importing this package registers them all."""

from strato.api.commands import (  # noqa: F401
    console,
    hosts,
    identity,
    infrastructure,
    jobs,
    keys,
    motion,
    network,
    offerings,
    publicips,
    secgroups,
    snapshots,
    storage,
    system,
    templates,
    usage,
    vm_motion,
    vms,
    vmsnapshots,
    volumes,
)
