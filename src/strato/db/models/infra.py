"""The physical hierarchy: zones, pods, clusters, hosts, storage pools and image stores."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, BigInteger, ForeignKey, Integer, String
from sqlalchemy.orm import Mapped, mapped_column

from strato.db.base import Entity


class Zone(Entity):
    __tablename__ = "zones"

    name: Mapped[str] = mapped_column(String(255), index=True)
    description: Mapped[str | None] = mapped_column(String(1024), default=None)
    dns1: Mapped[str | None] = mapped_column(String(64), default=None)
    internal_dns1: Mapped[str | None] = mapped_column(String(64), default=None)
    network_type: Mapped[str] = mapped_column(String(32), default="Advanced")
    allocation_state: Mapped[str] = mapped_column(String(32), default="Enabled")
    local_storage_enabled: Mapped[bool] = mapped_column(default=True)
    security_group_enabled: Mapped[bool] = mapped_column(default=False)
    """An Advanced zone with security groups: shared networks whose VMs' NICs are filtered by their groups."""
    domain_id: Mapped[str | None] = mapped_column(ForeignKey("domains.id"), default=None)


class Pod(Entity):
    __tablename__ = "pods"

    name: Mapped[str] = mapped_column(String(255), index=True)
    zone_id: Mapped[str] = mapped_column(ForeignKey("zones.id"), index=True)
    gateway: Mapped[str | None] = mapped_column(String(64), default=None)
    netmask: Mapped[str | None] = mapped_column(String(64), default=None)
    start_ip: Mapped[str | None] = mapped_column(String(64), default=None)
    end_ip: Mapped[str | None] = mapped_column(String(64), default=None)
    allocation_state: Mapped[str] = mapped_column(String(32), default="Enabled")


class Cluster(Entity):
    __tablename__ = "clusters"

    name: Mapped[str] = mapped_column(String(255), index=True)
    zone_id: Mapped[str] = mapped_column(ForeignKey("zones.id"), index=True)
    pod_id: Mapped[str] = mapped_column(ForeignKey("pods.id"), index=True)
    hypervisor: Mapped[str] = mapped_column(String(32), default="KVM")
    cluster_type: Mapped[str] = mapped_column(String(32), default="CloudManaged")
    allocation_state: Mapped[str] = mapped_column(String(32), default="Enabled")


class Host(Entity):
    __tablename__ = "hosts"

    name: Mapped[str] = mapped_column(String(255), index=True)
    zone_id: Mapped[str] = mapped_column(ForeignKey("zones.id"), index=True)
    pod_id: Mapped[str] = mapped_column(ForeignKey("pods.id"), index=True)
    cluster_id: Mapped[str] = mapped_column(ForeignKey("clusters.id"), index=True)
    url: Mapped[str] = mapped_column(String(1024))
    token: Mapped[str] = mapped_column(String(255))
    hypervisor: Mapped[str] = mapped_column(String(32), default="KVM")
    hypervisor_version: Mapped[str | None] = mapped_column(String(255), default=None)
    # Connection status (Up, Disconnected, Alert, Down) and administrative state (Enabled,
    # PrepareForMaintenance, Maintenance, ErrorInMaintenance, Disabled), as in CloudStack.
    status: Mapped[str] = mapped_column(String(32), default="Up")
    resource_state: Mapped[str] = mapped_column(String(32), default="Enabled")
    cpus: Mapped[int] = mapped_column(Integer, default=0)
    cpu_mhz: Mapped[int] = mapped_column(Integer, default=0)
    memory_bytes: Mapped[int] = mapped_column(BigInteger, default=0)
    host_tags: Mapped[str | None] = mapped_column(String(1024), default=None)
    last_ping: Mapped[datetime | None] = mapped_column(default=None)
    disconnected_since: Mapped[datetime | None] = mapped_column(default=None)
    # The driver's capability flags (strato.protocol.capabilities.DriverCapabilities) as the agent last
    # reported them, to addHost or the monitor; None until it has.
    capabilities: Mapped[dict[str, Any] | None] = mapped_column(JSON, default=None)


class StoragePool(Entity):
    __tablename__ = "storage_pools"

    name: Mapped[str] = mapped_column(String(255), index=True)
    zone_id: Mapped[str] = mapped_column(ForeignKey("zones.id"), index=True)
    pod_id: Mapped[str | None] = mapped_column(ForeignKey("pods.id"), default=None)
    cluster_id: Mapped[str | None] = mapped_column(ForeignKey("clusters.id"), default=None)
    host_id: Mapped[str | None] = mapped_column(ForeignKey("hosts.id"), default=None)
    scope: Mapped[str] = mapped_column(String(16))  # HOST, CLUSTER, ZONE
    pool_type: Mapped[str] = mapped_column(String(32))  # Filesystem (local), SharedMountPoint
    url: Mapped[str] = mapped_column(String(1024))
    path: Mapped[str] = mapped_column(String(1024))
    tags: Mapped[str | None] = mapped_column(String(1024), default=None)
    state: Mapped[str] = mapped_column(String(32), default="Up")
    capacity_bytes: Mapped[int] = mapped_column(BigInteger, default=0)
    # What the file system reports as used (all files, ours or not), refreshed from the agents.
    used_bytes: Mapped[int] = mapped_column(BigInteger, default=0)
    capacity_iops: Mapped[int | None] = mapped_column(BigInteger, default=None)
    # Set by an admin (capacitybytes): the agents' reports of the file system's size do not replace it,
    # and the file system's fill level (shared with other pools) does not count against it.
    capacity_fixed: Mapped[bool] = mapped_column(default=False)


class ImageStore(Entity):
    __tablename__ = "image_stores"

    name: Mapped[str] = mapped_column(String(255), index=True)
    zone_id: Mapped[str | None] = mapped_column(ForeignKey("zones.id"), default=None)
    provider: Mapped[str] = mapped_column(String(64), default="NFS")
    protocol: Mapped[str] = mapped_column(String(32), default="file")
    url: Mapped[str] = mapped_column(String(1024))
    path: Mapped[str] = mapped_column(String(1024))
    scope: Mapped[str] = mapped_column(String(16), default="ZONE")
    readonly: Mapped[bool] = mapped_column(default=False)
