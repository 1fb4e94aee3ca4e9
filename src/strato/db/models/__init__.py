"""All models, imported together so that the metadata is complete for Alembic and for queries."""

from strato.db.models.audit import Event, ResourceTag
from strato.db.models.identity import Account, Domain, LoginSession, User
from strato.db.models.infra import Cluster, Host, ImageStore, Pod, StoragePool, Zone
from strato.db.models.jobs import Job, JobResource, ServerNode
from strato.db.models.network import EgressRule, Network, NetworkOfferingRow, Nic, PhysicalNetwork
from strato.db.models.offerings import DiskOffering, ServiceOffering
from strato.db.models.publicips import PortForwardingRule, PublicFirewallRule, PublicIpAddress, PublicIpRange
from strato.db.models.secgroups import SecurityGroup, SecurityGroupRule, VmSecurityGroup
from strato.db.models.settings import HypervisorCapability, Setting
from strato.db.models.snapshots import Snapshot, SnapshotPolicy
from strato.db.models.storage import Layer, Volume
from strato.db.models.templates import Template, TemplateStoreCopy
from strato.db.models.usage import UsageEvent, UsageRecord
from strato.db.models.vms import ResourceLimit, SSHKeyPair, VirtualMachine
from strato.db.models.vmsnapshots import VMSnapshot, VMSnapshotDisk

__all__ = [
    "Account",
    "Cluster",
    "DiskOffering",
    "Domain",
    "EgressRule",
    "Event",
    "Host",
    "HypervisorCapability",
    "ImageStore",
    "Job",
    "JobResource",
    "Layer",
    "LoginSession",
    "Network",
    "NetworkOfferingRow",
    "Nic",
    "PhysicalNetwork",
    "Pod",
    "PortForwardingRule",
    "PublicFirewallRule",
    "PublicIpAddress",
    "PublicIpRange",
    "ResourceLimit",
    "ResourceTag",
    "SSHKeyPair",
    "SecurityGroup",
    "SecurityGroupRule",
    "ServerNode",
    "ServiceOffering",
    "Setting",
    "Snapshot",
    "SnapshotPolicy",
    "StoragePool",
    "Template",
    "TemplateStoreCopy",
    "UsageEvent",
    "UsageRecord",
    "User",
    "VMSnapshot",
    "VMSnapshotDisk",
    "VirtualMachine",
    "VmSecurityGroup",
    "Volume",
    "Zone",
]
