"""Storage motion against its baselines, measured side by side in one run.

1. Live move of a 1 GiB disk holding 512 MiB of data (written with qemu-io, so nothing is sparse) from one
   pool to another, three ways, each repeated `--runs` times:
   - through the API: `migrateVolume livemigrate=true` of a running VM's data disk (job start to end);
   - bare QMP: the same disk opened in a QEMU of its own, `blockdev-mirror` to a new file on the other
     pool, READY, `job-complete` (the work the agent does, with no server, agent or database around it);
   - `cp --sparse=always` of the disk's file.
   Reported: the ratios API / bare QMP (goal <= 1.15) and API / cp (goal <= 1.3), the pivot time of
   the bare mirror (job-complete to BLOCK_JOB_COMPLETED: the guest's I/O pause, goal p50 <= 5 ms), and
   the target's allocation / the source's (goal <= 1.05).
2. A linked clone's root disk moved offline to a pool that already holds its template: bytes written on
   the target pool / the clone's own data (goal <= 1.1), for two template sizes.

Runs its own management server (SQLite) and a QEMU agent (TCG; the VMs run no guest OS, which is what an
idle guest costs the copy) in a temp dir; everything is stopped by pid at the end.

    .venv/bin/python bench/motion.py [--runs 3] [--disk-mib 1024] [--data-mib 512]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from qemu.qmp import QMPClient  # noqa: E402

from helpers.agentproc import AgentProcess, start_agent  # noqa: E402
from helpers.faultlib import kill_qemus_under  # noqa: E402
from helpers.serverproc import ServerProcess, start_server, wait_job  # noqa: E402
from strato.protocol.messages import GetConsoleLog  # noqa: E402

MIB = 1024**2


def make_disk(path: Path, disk_mib: int, data_mib: int, backing: Path | None = None) -> None:
    """A qcow2 of `disk_mib` MiB whose first `data_mib` MiB are written (pattern 0x5a)."""
    cmd = ["qemu-img", "create", "-q", "-f", "qcow2"]
    if backing is not None:
        cmd += ["-b", str(backing), "-F", "qcow2"]
    subprocess.run([*cmd, str(path), f"{disk_mib}M"], check=True)
    if data_mib:
        subprocess.run(
            ["qemu-io", "-f", "qcow2", "-c", f"write -P 0x5a 0 {data_mib}M", str(path)],
            check=True,
            capture_output=True,
        )


def allocated(path: Path) -> int:
    return os.stat(path).st_blocks * 512


def timed(fn: Callable[[], Any]) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


# --- baselines ---------------------------------------------------------------------------------------


def cp_sparse(source: Path, target: Path) -> float:
    target.unlink(missing_ok=True)
    took = timed(lambda: subprocess.run(["cp", "--sparse=always", str(source), str(target)], check=True))
    target.unlink()
    return took


async def _bare_mirror(source: Path, target: Path, workdir: Path) -> tuple[float, float, int]:
    """(seconds for the whole move, seconds of the pivot, target allocation) of a bare QMP mirror."""
    sock = workdir / "bare.qmp"
    proc = subprocess.Popen(
        [
            "qemu-system-x86_64",
            "-machine",
            "none",
            "-nodefaults",
            "-display",
            "none",
            "-qmp",
            f"unix:{sock},server=on,wait=off",
            "-blockdev",
            f"driver=file,node-name=src-file,filename={source}",
            "-blockdev",
            "driver=qcow2,node-name=src,file=src-file",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    qmp = QMPClient("bench")
    try:
        for _ in range(100):
            if sock.exists():
                break
            await asyncio.sleep(0.05)
        await qmp.connect(str(sock))
        started = time.perf_counter()
        size = subprocess.run(
            ["qemu-img", "info", "--output=json", "-U", str(source)], check=True, capture_output=True, text=True
        ).stdout
        virtual = int(json.loads(size)["virtual-size"])
        subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(target), str(virtual)], check=True)
        await qmp.execute("blockdev-add", {"driver": "file", "node-name": "tgt-file", "filename": str(target)})
        await qmp.execute("blockdev-add", {"driver": "qcow2", "node-name": "tgt", "file": "tgt-file"})
        with qmp.listener(("BLOCK_JOB_READY", "BLOCK_JOB_COMPLETED")) as events:
            await qmp.execute(
                "blockdev-mirror",
                {"job-id": "m", "device": "src", "target": "tgt", "sync": "full", "auto-dismiss": False},
            )
            async for event in events:
                if event["event"] == "BLOCK_JOB_READY":
                    break
            pivot_started = time.perf_counter()
            await qmp.execute("job-complete", {"id": "m"})
            async for event in events:
                if event["event"] == "BLOCK_JOB_COMPLETED":
                    break
            pivot = time.perf_counter() - pivot_started
        await qmp.execute("job-dismiss", {"id": "m"})
        took = time.perf_counter() - started
    finally:
        await qmp.disconnect()
        proc.kill()
        proc.wait()
        sock.unlink(missing_ok=True)
    size_on_disk = allocated(target)
    target.unlink()
    return took, pivot, size_on_disk


def bare_mirror(source: Path, target: Path, workdir: Path) -> tuple[float, float, int]:
    return asyncio.run(_bare_mirror(source, target, workdir))


# --- through the API ---------------------------------------------------------------------------------


class Cloud:
    """A zone with one QEMU host and the given cluster pools, a blank template and an offering."""

    def __init__(self, base: Path, server: ServerProcess, agent: AgentProcess, pools: list[str]) -> None:
        self.base = base
        self.server = server
        self.api = server.cs(fetch_result=True, job_timeout=600, timeout=120, poll_interval=0.05)
        self.raw = server.cs(timeout=120)
        tag = uuid.uuid4().hex[:6]
        api = self.api
        self.zone = api.createZone(name=f"bench-{tag}")["zone"]["id"]
        pod = api.createPod(name=f"pod-{tag}", zoneid=self.zone)["pod"]["id"]
        cluster = api.addCluster(clustername=f"c-{tag}", zoneid=self.zone, podid=pod, hypervisor="KVM")["cluster"][0]
        api.addHost(
            zoneid=self.zone,
            podid=pod,
            clusterid=cluster["id"],
            url=agent.base_url,
            username="strato",
            password=agent.token,
            hypervisor="KVM",
        )
        self.pools: dict[str, str] = {}
        self.pool_dirs: dict[str, Path] = {}
        for name in pools:
            (base / name).mkdir()
            pool = api.createStoragePool(
                name=f"{name}-{tag}",
                zoneid=self.zone,
                podid=pod,
                clusterid=cluster["id"],
                scope="cluster",
                url=f"SharedMountPoint://localhost{base / name}",
            )
            self.pools[name] = pool["storagepool"]["id"]
            self.pool_dirs[name] = base / name
        (base / "store").mkdir()
        self.store = api.addImageStore(
            name="store", provider="NFS", url=f"file://localhost{base / 'store'}", zoneid=self.zone
        )["imagestore"]["id"]
        self.offering = api.createServiceOffering(
            name="bench", displaytext="bench", cpunumber=1, cpuspeed=1000, memory=128
        )["serviceoffering"]["id"]
        self.disk_offering = api.createDiskOffering(name="custom", displaytext="custom", customized=True)[
            "diskoffering"
        ]["id"]

    def register(self, name: str, image: Path) -> str:
        tmpl = self.api.registerTemplate(
            name=name,
            displaytext=name,
            url=f"file://{image}",
            format="QCOW2",
            hypervisor="KVM",
            zoneid=self.zone,
            imagestoreid=self.store,
        )["template"][0]
        job = wait_job(self.raw, tmpl["jobid"], timeout=600)
        assert job["jobstatus"] == 1, job
        return str(tmpl["id"])

    def deploy(self, template_id: str, pool: str, start: bool) -> dict[str, Any]:
        vm: dict[str, Any] = self.api.deployVirtualMachine(
            zoneid=self.zone,
            serviceofferingid=self.offering,
            templateid=template_id,
            rootdiskstorageid=self.pools[pool],
            startvm=start,
        )["virtualmachine"]
        return vm

    def volume_file(self, volume_id: str) -> Path:
        """The volume's top layer file (listVolumes' path)."""
        vol = self.api.listVolumes(id=volume_id)["volume"][0]
        return Path(vol["path"])

    def move(self, volume_id: str, pool: str, live: bool) -> float:
        started = time.perf_counter()
        self.api.migrateVolume(volumeid=volume_id, storageid=self.pools[pool], livemigrate=str(live).lower())
        return time.perf_counter() - started

    def last_move_breakdown(self) -> str:
        """Where the last migrateVolume job spent its time: queue wait and each step (from its step log)."""
        created, started, done, steps = self.server.sql(
            "SELECT created, started, completed, steps FROM jobs WHERE kind = 'volume.migrate' "
            "ORDER BY seq DESC LIMIT 1"
        )[0]
        log = json.loads(steps) if isinstance(steps, str) else steps
        at = {(e["name"], e["state"]): datetime.fromisoformat(e["at"]) for e in log}
        parts = [f"queued {(_dt(started) - _dt(created)).total_seconds() * 1000:.0f} ms"]
        for name, state in at:
            if state == "done" and (name, "running") in at:
                parts.append(f"{name} {(at[(name, 'done')] - at[(name, 'running')]).total_seconds() * 1000:.0f} ms")
        parts.append(f"job {(_dt(done) - _dt(created)).total_seconds() * 1000:.0f} ms")
        return ", ".join(parts)


def _dt(value: Any) -> datetime:
    return value if isinstance(value, datetime) else datetime.fromisoformat(str(value))


def pool_bytes(path: Path) -> int:
    return sum(allocated(p) for p in path.rglob("*") if p.is_file())


def api_volume_moves(
    cloud: Cloud, template: str, runs: int, disk_mib: int, data_mib: int
) -> tuple[list[float], Path, float]:
    """Times of live moves of a running VM's data disk, back and forth between pool a and pool b; the
    disk's file (on pool a at the end) and the last target allocation / source allocation."""
    vm = cloud.deploy(template, "a", start=False)
    vol = cloud.api.createVolume(
        name="data",
        zoneid=cloud.zone,
        diskofferingid=cloud.disk_offering,
        size=disk_mib // 1024 or 1,
        storageid=cloud.pools["a"],
    )["volume"]
    cloud.api.attachVolume(id=vol["id"], virtualmachineid=vm["id"])
    source = cloud.volume_file(vol["id"])
    subprocess.run(
        ["qemu-io", "-f", "qcow2", "-c", f"write -P 0x5a 0 {data_mib}M", str(source)], check=True, capture_output=True
    )
    cloud.api.startVirtualMachine(id=vm["id"])
    times, ratio = [], 0.0
    here = "a"
    for _ in range(2 * runs):
        there = "b" if here == "a" else "a"
        before = allocated(cloud.volume_file(vol["id"]))
        times.append(cloud.move(vol["id"], there, live=True))
        ratio = allocated(cloud.volume_file(vol["id"])) / before
        here = there
    print("  last API move:", cloud.last_move_breakdown())
    return times, cloud.volume_file(vol["id"]), ratio


def linked_clone_copy_ratio(cloud: Cloud, base: Path, template_mib: int, own_mib: int) -> float:
    """Bytes a linked clone's offline move writes on a pool that already holds its template / its own data."""
    image = base / f"tmpl-{template_mib}.qcow2"
    make_disk(image, max(template_mib * 2, 64), template_mib)
    tid = cloud.register(f"t{template_mib}", image)
    cloud.deploy(tid, "b", start=False)  # the template's copy on pool b
    vm = cloud.deploy(tid, "a", start=False)
    root = cloud.api.listVolumes(virtualmachineid=vm["id"], type="ROOT")["volume"][0]
    top = cloud.volume_file(root["id"])
    subprocess.run(
        ["qemu-io", "-f", "qcow2", "-c", f"write -P 0x33 0 {own_mib}M", str(top)], check=True, capture_output=True
    )
    own = allocated(top)
    before = pool_bytes(cloud.pool_dirs["b"])
    cloud.move(root["id"], "b", live=False)
    return (pool_bytes(cloud.pool_dirs["b"]) - before) / own


DOWNTIME = re.compile(r"migrated, downtime (\d+) ms")


def _console(agent: AgentProcess, name: str) -> str:
    return agent.client(timeout=30).call(GetConsoleLog(name=name, tail_bytes=None)).text


def _wait_console(agent: AgentProcess, name: str, marker: str, timeout: float = 240) -> None:
    deadline = time.monotonic() + timeout
    while marker not in _console(agent, name):
        if time.monotonic() > deadline:
            raise RuntimeError(f"VM {name}: no {marker!r} on its console")
        time.sleep(0.5)


def vm_migrations(base: Path, server: ServerProcess, runs: int) -> tuple[list[int], int | None, bool]:
    """(downtimes in ms of `2 * runs` live migrations of an idle 256 MiB tiny guest between two hosts
    sharing its pool, the downtime of one migration while the guest rewrites its data disk, whether
    that one converged), read from the agents' own reports of each switch-over."""
    from strato.image.tiny import default_image_path

    agents = [start_agent(base / f"m{n}", token=uuid.uuid4().hex, driver="qemu", accel="tcg") for n in (1, 2)]
    try:
        api = server.cs(fetch_result=True, job_timeout=600, timeout=120, poll_interval=0.05)
        raw = server.cs(timeout=120)
        zone = api.createZone(name=f"mig-{uuid.uuid4().hex[:6]}")["zone"]["id"]
        pod = api.createPod(name="p", zoneid=zone)["pod"]["id"]
        cluster = api.addCluster(clustername="c", zoneid=zone, podid=pod, hypervisor="KVM")["cluster"][0]["id"]
        hosts = [
            api.addHost(
                zoneid=zone,
                podid=pod,
                clusterid=cluster,
                url=a.base_url,
                username="strato",
                password=a.token,
                hypervisor="KVM",
            )["host"][0]["id"]
            for a in agents
        ]
        by_host = dict(zip(hosts, agents, strict=True))
        (base / "mshared").mkdir()
        pool = api.createStoragePool(
            name="mshared",
            zoneid=zone,
            podid=pod,
            clusterid=cluster,
            scope="cluster",
            url=f"SharedMountPoint://localhost{base / 'mshared'}",
        )["storagepool"]["id"]
        (base / "mstore").mkdir()
        store = api.addImageStore(name="ms", provider="NFS", url=f"file://localhost{base / 'mstore'}", zoneid=zone)[
            "imagestore"
        ]["id"]
        image = base / "tiny.qcow2"
        shutil.copyfile(default_image_path(), image)
        tmpl = api.registerTemplate(
            name="tiny",
            displaytext="tiny",
            url=f"file://{image}",
            format="QCOW2",
            hypervisor="KVM",
            zoneid=zone,
            imagestoreid=store,
        )["template"][0]
        assert wait_job(raw, tmpl["jobid"], timeout=600)["jobstatus"] == 1
        offering = api.createServiceOffering(name="m256", displaytext="m256", cpunumber=1, cpuspeed=500, memory=256)[
            "serviceoffering"
        ]["id"]
        disk = api.createDiskOffering(name="d1", displaytext="d1", disksize=1)["diskoffering"]["id"]

        def downtimes() -> list[int]:
            return [int(m) for a in agents for m in DOWNTIME.findall(a.stderr())]

        def migrate(vm_id: str) -> str:
            vm = api.listVirtualMachines(id=vm_id)["virtualmachine"][0]
            other = next(h for h in hosts if h != vm["hostid"])
            api.migrateVirtualMachine(virtualmachineid=vm_id, hostid=other)
            return other

        idle = api.deployVirtualMachine(
            zoneid=zone, serviceofferingid=offering, templateid=tmpl["id"], hostid=hosts[0], rootdiskstorageid=pool
        )["virtualmachine"]
        _wait_console(agents[0], idle["instancename"], "STRATO-TINY-BOOTED")
        for _ in range(2 * runs):
            migrate(idle["id"])
        idle_times = downtimes()
        api.destroyVirtualMachine(id=idle["id"], expunge=True)
        commands = "integrity-write:vdb:256;integrity-loop:vdb:40;integrity-verify:vdb"
        busy = api.deployVirtualMachine(
            zoneid=zone,
            serviceofferingid=offering,
            templateid=tmpl["id"],
            hostid=hosts[0],
            rootdiskstorageid=pool,
            diskofferingid=disk,
            **{"details[0].guestcommands": commands},
        )["virtualmachine"]
        _wait_console(agents[0], busy["instancename"], "STRATO-INTEGRITY LOOP-START")
        converged = True
        try:
            now = migrate(busy["id"])
        except Exception as exc:  # the bench reports it rather than stopping
            print(f"  migration with the guest writing failed: {exc}")
            converged, now = False, hosts[0]
        writing = downtimes()[len(idle_times) :]
        _wait_console(by_host[now], busy["instancename"], "STRATO-RUN-END integrity-verify:vdb", timeout=300)
        verified = "integrity-verify:vdb rc=0" in _console(by_host[now], busy["instancename"])
        api.destroyVirtualMachine(id=busy["id"], expunge=True)
        return idle_times, (writing[0] if writing else None), converged and verified
    finally:
        for agent in agents:
            agent.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--disk-mib", type=int, default=1024)
    parser.add_argument("--data-mib", type=int, default=512)
    args = parser.parse_args()
    base = Path(tempfile.mkdtemp(prefix="strato-bench-motion-"))
    server: ServerProcess | None = None
    agent: AgentProcess | None = None
    t0 = time.perf_counter()
    try:
        server = start_server(base / "server")
        agent = start_agent(base / "host", token=uuid.uuid4().hex, driver="qemu", accel="tcg")
        cloud = Cloud(base, server, agent, ["a", "b", "c"])
        blank = base / "blank.qcow2"
        make_disk(blank, 64, 0)
        template = cloud.register("blank", blank)
        api_times, disk_file, alloc_ratio = api_volume_moves(cloud, template, args.runs, args.disk_mib, args.data_mib)
        # The same disk, its VM still running on it: the baselines copy its file to pool c.
        copy = base / "c" / "baseline-source.qcow2"
        subprocess.run(["qemu-img", "convert", "-U", "-O", "qcow2", str(disk_file), str(copy)], check=True)
        cp_times = [cp_sparse(copy, base / "c" / "cp-target") for _ in range(args.runs)]
        bare = [bare_mirror(copy, base / "c" / "mirror-target.qcow2", base) for _ in range(args.runs)]
        bare_times, pivots = [b[0] for b in bare], [b[1] for b in bare]
        bare_alloc = statistics.median(b[2] for b in bare) / allocated(copy)
        clone_ratios = {mib: linked_clone_copy_ratio(cloud, base, mib, 32) for mib in (64, 256)}
        idle_downtimes, writing_downtime, converged = vm_migrations(base, server, args.runs)
    finally:
        if agent is not None:
            agent.stop()
        if server is not None:
            server.stop()
        kill_qemus_under(base)  # agents leave running VMs running by design: the bench stops its own
        shutil.rmtree(base, ignore_errors=True)

    api_med, bare_med, cp_med = statistics.median(api_times), statistics.median(bare_times), statistics.median(cp_times)
    print(
        f"live move of a {args.disk_mib} MiB disk with {args.data_mib} MiB of data; {os.cpu_count()} CPUs; "
        f"bench time {time.perf_counter() - t0:.1f} s"
    )
    print(
        f"  migrateVolume (API, live)   median {api_med:.3f} s  (n={len(api_times)}: "
        + ", ".join(f"{t:.2f}" for t in api_times)
        + ")"
    )
    print(f"  bare QMP blockdev-mirror    median {bare_med:.3f} s")
    print(f"  cp --sparse=always          median {cp_med:.3f} s")
    print(f"  ratio API / bare mirror     {api_med / bare_med:.2f}  (goal <= 1.15)")
    print(f"  ratio API / cp              {api_med / cp_med:.2f}  (goal <= 1.3)")
    print(f"  pivot (job-complete -> COMPLETED) p50 {1000 * statistics.median(pivots):.1f} ms  (goal <= 5 ms)")
    print(f"  target / source allocation  API {alloc_ratio:.3f}, bare mirror {bare_alloc:.3f}  (goal <= 1.05)")
    print(
        f"  VM migration (idle 256 MiB guest, shared pool) downtime p50 {statistics.median(idle_downtimes)} ms"
        f"  (n={len(idle_downtimes)}: {idle_downtimes}; goal <= 20 ms)"
    )
    print(f"  VM migration with the guest writing: converged and verified {converged}, downtime {writing_downtime} ms")
    for mib, ratio in clone_ratios.items():
        print(
            f"  linked clone (template {mib} MiB, own 32 MiB) offline move writes {ratio:.2f}x its own data"
            "  (goal <= 1.1)"
        )


if __name__ == "__main__":
    main()
