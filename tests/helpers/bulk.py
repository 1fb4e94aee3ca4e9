"""Rows of every listed kind written straight into a server's database, for the query-count test and
bench/api.py: the API would take minutes to make hundreds (createAccount hashes a password,
deployVirtualMachine needs hosts). Each row has what its view shows: a domain of its own, a user, tags,
a host, a root volume on a chain of layers, template copies, a job result; and the network, security
group, snapshot and usage rows of helpers.bulk_more."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from helpers.bulk_more import Seeded, seed_network, seed_security, seed_snapshots
from helpers.serverproc import ServerProcess


def seed_cloud(server: ServerProcess, n: int) -> None:
    """n rows of every listed kind, each with a distinct parent where its view names one."""
    N = n
    from sqlalchemy import select

    from strato.db import models as m
    from strato.db.base import new_id

    db = server.database()
    now = datetime.now(UTC)
    try:
        with db.session() as s:
            root = s.scalar(select(m.Domain).where(m.Domain.parent_id.is_(None)))
            assert root is not None
            domains = [m.Domain(name=f"d{i}", parent_id=root.id, path=f"ROOT/d{i}", level=1) for i in range(N)]
            s.add_all(domains)
            s.flush()
            s.add_all(m.Domain(name="c", parent_id=d.id, path=f"{d.path}/c", level=2) for d in domains[::2])
            accounts = [m.Account(name=f"a{i}", domain_id=domains[i].id) for i in range(N)]
            s.add_all(accounts)
            s.flush()
            users = [m.User(account_id=a.id, username=f"u{i}", password_hash="x") for i, a in enumerate(accounts)]
            s.add_all(users)
            zones = [m.Zone(name=f"z{i}", domain_id=domains[i].id) for i in range(N)]
            s.add_all(zones)
            s.flush()
            pods = [m.Pod(name=f"p{i}", zone_id=z.id) for i, z in enumerate(zones)]
            s.add_all(pods)
            s.flush()
            clusters = [m.Cluster(name=f"c{i}", zone_id=p.zone_id, pod_id=p.id) for i, p in enumerate(pods)]
            s.add_all(clusters)
            s.flush()
            hosts = [
                m.Host(
                    name=f"h{i}",
                    zone_id=c.zone_id,
                    pod_id=c.pod_id,
                    cluster_id=c.id,
                    url=f"http://127.0.0.1:{9}/h{i}",
                    token="t",
                    status="Disconnected",
                )
                for i, c in enumerate(clusters)
            ]
            s.add_all(hosts)
            s.flush()
            pools = [
                m.StoragePool(
                    name=f"sp{i}",
                    zone_id=h.zone_id,
                    pod_id=h.pod_id,
                    cluster_id=h.cluster_id,
                    host_id=h.id,
                    scope="HOST",
                    pool_type="Filesystem",
                    url=f"file:///p{i}",
                    path=f"/p{i}",
                )
                for i, h in enumerate(hosts)
            ]
            stores = [
                m.ImageStore(name=f"is{i}", zone_id=z.id, url=f"file:///s{i}", path=f"/s{i}")
                for i, z in enumerate(zones)
            ]
            s.add_all(pools + stores)
            s.flush()
            sos = [
                m.ServiceOffering(name=f"so{i}", cpu_number=1, cpu_speed=500, memory_mib=64, domain_id=domains[i].id)
                for i in range(N)
            ]
            dos = [m.DiskOffering(name=f"do{i}", disk_size_bytes=2**30, domain_id=domains[i].id) for i in range(N)]
            templates = [
                m.Template(
                    name=f"t{i}",
                    account_id=a.id,
                    domain_id=a.domain_id,
                    zone_id=zones[i].id,
                    format="QCOW2",
                    state="Ready",
                    is_public=True,
                )
                for i, a in enumerate(accounts)
            ]
            isos = [
                m.Template(
                    name=f"iso{i}",
                    account_id=a.id,
                    domain_id=a.domain_id,
                    zone_id=zones[i].id,
                    format="ISO",
                    is_iso=True,
                    state="Ready",
                    is_public=True,
                    bootable=True,
                )
                for i, a in enumerate(accounts)
            ]
            s.add_all(sos + dos + templates + isos)
            s.flush()
            s.add_all(
                m.Template(
                    name=f"t{i}-d1",
                    account_id=t.account_id,
                    domain_id=t.domain_id,
                    format="QCOW2",
                    parent_id=t.id,
                    disk_index=1,
                    template_type="DATADISK",
                    state="Ready",
                )
                for i, t in enumerate(templates[::3])
            )
            s.add_all(
                m.TemplateStoreCopy(template_id=t.id, store_id=stores[i].id, path=f"t/{i}", state="Ready")
                for i, t in enumerate(templates)
            )
            base_layers = [
                m.Layer(pool_id=pools[i].id, path=f"tmpl-{i}", kind="template", template_id=t.id, state="Ready")
                for i, t in enumerate(templates)
            ]
            s.add_all(base_layers)
            vms = [
                m.VirtualMachine(
                    name=f"vm{i}",
                    instance_name=f"i-qc-{i}",
                    account_id=a.id,
                    domain_id=a.domain_id,
                    zone_id=zones[i].id,
                    host_id=hosts[i].id,
                    service_offering_id=sos[i].id,
                    template_id=templates[i].id,
                    iso_id=isos[(i + 1) % N].id,
                    state="Running",
                )
                for i, a in enumerate(accounts)
            ]
            s.add_all(vms)
            s.flush()
            volumes = []
            for i, vm in enumerate(vms):
                vol_id = new_id()
                mid = m.Layer(
                    pool_id=pools[i].id, path=f"mid-{i}", parent_id=base_layers[i].id, volume_id=None, state="Ready"
                )
                s.add(mid)
                s.flush()
                top = m.Layer(pool_id=pools[i].id, path=f"top-{i}", parent_id=mid.id, state="Ready", physical_size=1)
                s.add(top)
                s.flush()
                volumes.append(
                    m.Volume(
                        id=vol_id,
                        name=f"ROOT-{i}",
                        account_id=vm.account_id,
                        domain_id=vm.domain_id,
                        zone_id=vm.zone_id,
                        pool_id=pools[i].id,
                        top_layer_id=top.id,
                        vm_id=vm.id,
                        device_id=0,
                        volume_type="ROOT",
                        size=2**30,
                        disk_offering_id=dos[i].id,
                        template_id=templates[i].id,
                        state="Ready",
                    )
                )
            s.add_all(volumes)
            s.flush()
            tags = []
            for i in range(N):
                for kind, rid in (
                    ("UserVm", vms[i].id),
                    ("Volume", volumes[i].id),
                    ("Template", templates[i].id),
                    ("Zone", zones[i].id),
                ):
                    tags.append(
                        m.ResourceTag(
                            key=f"k{i}",
                            value="v",
                            resource_type=kind,
                            resource_id=rid,
                            account_id=accounts[i].id,
                            domain_id=accounts[i].domain_id,
                        )
                    )
            s.add_all(tags)
            seeded = Seeded(accounts=accounts, zones=zones, vms=vms, volumes=volumes, stores=stores)
            seed_network(s, seeded)
            seed_security(s, seeded)
            seed_snapshots(s, seeded)
            s.add_all(
                m.Event(
                    type="VM.CREATE",
                    description=f"e{i}",
                    account_id=accounts[i].id,
                    user_id=users[i].id,
                    domain_id=accounts[i].domain_id,
                    resource_type="VirtualMachine",
                    resource_id=vms[i].id,
                )
                for i in range(N)
            )
            s.add_all(
                m.Job(
                    kind="vm.deploy",
                    cmd="deployVirtualMachine",
                    status="succeeded",
                    account_id=accounts[i].id,
                    user_id=users[i].id,
                    result={"type": "virtualmachine", "id": vms[i].id},
                    completed=now,
                    created=now - timedelta(seconds=1),
                )
                for i in range(N)
            )
    finally:
        db.dispose()
