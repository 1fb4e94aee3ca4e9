"""The network, security-group, snapshot and usage rows of seed_cloud (tests/helpers/bulk.py): n of
each listed kind, each with what its view shows (a zone, a physical network, an offering, an owner, a VM,
a public address, a parent snapshot behind a hidden one, tags)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy.orm import Session


@dataclass
class Seeded:
    """What seed_cloud wrote first, index i of each list belonging together."""

    accounts: list[Any]
    zones: list[Any]
    vms: list[Any]
    volumes: list[Any]
    stores: list[Any]


def _net(i: int) -> str:
    return f"10.{i >> 8}.{i & 255}"


def seed_network(s: Session, c: Seeded) -> None:
    """Physical networks, offerings, networks, NICs (vm i on network i; vm 0 on every network: listNics),
    public ranges and addresses (static NAT to vm i), port forwards, firewall and egress rules, SSH keys."""
    from strato.db import models as m

    n = len(c.accounts)
    pns = [
        m.PhysicalNetwork(name=f"pn{i}", zone_id=z.id, vlan="100-200", state="Enabled") for i, z in enumerate(c.zones)
    ]
    offers = [
        m.NetworkOfferingRow(name=f"no{i}", display_text=f"no{i}", guest_ip_type="Isolated", services=["Dhcp"])
        for i in range(n)
    ]
    s.add_all(pns + offers)
    s.flush()
    nets = [
        m.Network(
            name=f"net{i}", display_text=f"net{i}", zone_id=c.zones[i].id, physical_network_id=pns[i].id,
            network_offering_id=offers[i].id, account_id=a.id, domain_id=a.domain_id, gateway=f"{_net(i)}.1",
            cidr=f"{_net(i)}.0/24", start_ip=f"{_net(i)}.10", end_ip=f"{_net(i)}.200", vlan=100 + i % 100,
        )
        for i, a in enumerate(c.accounts)
    ]  # fmt: skip
    s.add_all(nets)
    s.flush()
    s.add_all(
        m.Nic(vm_id=c.vms[i].id, network_id=net.id, device_id=0, ip_address=f"{_net(i)}.10",
              mac_address=f"02:00:00:00:{i >> 8:02x}:{i & 255:02x}", is_default=True)
        for i, net in enumerate(nets)
    )  # fmt: skip
    s.add_all(
        m.Nic(vm_id=c.vms[0].id, network_id=net.id, device_id=i, ip_address=f"{_net(i)}.11",
              mac_address=f"02:00:00:01:{i >> 8:02x}:{i & 255:02x}")
        for i, net in enumerate(nets) if i > 0
    )  # fmt: skip
    ranges = [
        m.PublicIpRange(zone_id=pn.zone_id, physical_network_id=pn.id, gateway="192.0.2.1", netmask="255.255.255.0",
                        start_ip="192.0.2.10", end_ip="192.0.2.20")
        for pn in pns
    ]  # fmt: skip
    s.add_all(ranges)
    s.flush()
    ips = [
        m.PublicIpAddress(range_id=r.id, zone_id=r.zone_id, address="192.0.2.10", network_id=nets[i].id,
                          account_id=c.accounts[i].id, domain_id=c.accounts[i].domain_id, state="Allocated",
                          static_nat_vm_id=c.vms[i].id, static_nat_ip=f"{_net(i)}.10")
        for i, r in enumerate(ranges)
    ]  # fmt: skip
    s.add_all(ips)
    s.flush()
    forwards = [
        m.PortForwardingRule(ip_address_id=ip.id, network_id=ip.network_id, account_id=ip.account_id,
                             protocol="tcp", public_start=22, public_end=22, private_start=22, private_end=22,
                             vm_id=c.vms[i].id, vm_ip=f"{_net(i)}.10", state="Active")
        for i, ip in enumerate(ips)
    ]  # fmt: skip
    s.add_all(forwards)
    s.add_all(
        m.PublicFirewallRule(ip_address_id=ip.id, network_id=ip.network_id, account_id=ip.account_id,
                             protocol="tcp", start_port=22, end_port=22, cidrs=["0.0.0.0/0"], state="Active")
        for ip in ips
    )  # fmt: skip
    s.add_all(
        m.EgressRule(network_id=net.id, account_id=net.account_id, protocol="tcp", start_port=80, end_port=80,
                     cidrs=[], dest_cidrs=["0.0.0.0/0"], state="Active")
        for net in nets
    )  # fmt: skip
    s.add_all(
        m.SSHKeyPair(name=f"key{i}", account_id=a.id, domain_id=a.domain_id, public_key="ssh-ed25519 AAAA k",
                     fingerprint=f"00:{i & 255:02x}")
        for i, a in enumerate(c.accounts)
    )  # fmt: skip


def seed_security(s: Session, c: Seeded) -> None:
    """Per account, a default group holding vm i with an ingress rule from the account's web group (a
    peer in no VM and, named "web", on no page of default groups: its view loads it and its owner)."""
    from strato.db import models as m

    groups = [m.SecurityGroup(name="default", description="Default", account_id=a.id, domain_id=a.domain_id)
              for a in c.accounts]  # fmt: skip
    peers = [m.SecurityGroup(name=f"web{i}", account_id=a.id, domain_id=a.domain_id) for i, a in enumerate(c.accounts)]
    s.add_all(groups + peers)
    s.flush()
    s.add_all(
        m.SecurityGroupRule(group_id=g.id, direction="ingress", protocol="tcp", start_port=22, end_port=22,
                            peer_group_id=peers[i].id)
        for i, g in enumerate(groups)
    )  # fmt: skip
    s.add_all(m.VmSecurityGroup(vm_id=c.vms[i].id, group_id=g.id) for i, g in enumerate(groups))


def seed_snapshots(s: Session, c: Seeded) -> None:
    """A backed-up snapshot (tagged) and a daily policy per volume; for half the VMs a VM snapshot, a
    hidden child and a visible grandchild (whose shown parent skips the hidden one); usage records."""
    from strato.db import models as m

    n = len(c.accounts)
    now = datetime.now(UTC)
    snaps = [
        m.Snapshot(volume_id=v.id, account_id=v.account_id, domain_id=v.domain_id, zone_id=v.zone_id,
                   name=f"snap{i}", state="BackedUp", store_id=c.stores[i].id, path=f"snap/{i}",
                   virtual_size=2**30, physical_size=2**20)
        for i, v in enumerate(c.volumes)
    ]  # fmt: skip
    policies = [
        m.SnapshotPolicy(volume_id=v.id, account_id=v.account_id, interval_type="DAILY", schedule="00:01",
                         next_run=now + timedelta(days=1))
        for v in c.volumes
    ]  # fmt: skip
    s.add_all(snaps + policies)
    s.flush()
    s.add_all(
        m.ResourceTag(key=f"k{i}", value="v", resource_type=kind, resource_id=row.id,
                      account_id=c.accounts[i].id, domain_id=c.accounts[i].domain_id)
        for i in range(n) for kind, row in (("Snapshot", snaps[i]), ("SnapshotPolicy", policies[i]))
    )  # fmt: skip
    for i, vm in enumerate(c.vms[: (n + 1) // 2]):
        chain: list[Any] = []
        for name, hidden in (("a", False), ("h", True), ("b", False)):
            snap = m.VMSnapshot(vm_id=vm.id, account_id=vm.account_id, domain_id=vm.domain_id, name=f"vs{i}{name}",
                                display_name=f"vs{i}{name}", state="Ready", hidden=hidden,
                                parent_id=chain[-1].id if chain else None)  # fmt: skip
            s.add(snap)
            s.flush()
            chain.append(snap)
        vm.current_snapshot_id = chain[-1].id
    s.add_all(
        m.UsageRecord(usage_type=6, account_id=v.account_id, domain_id=v.domain_id, zone_id=v.zone_id,
                      usage_id=v.id, name=v.name, description=f"volume {v.name}", raw_usage=1.0, size=2**30,
                      period_start=now - timedelta(hours=1), period_end=now)
        for v in c.volumes
    )  # fmt: skip
