"""deployVirtualMachine through to Running on simulated hosts, many at once: is the cost per VM flat?

For each size (100, then 1,000 more by default) every deploy is submitted at once from --clients client
threads (signed `cs` calls), then the bench waits until every VM is Running. It reports the submit time,
the time until all run, the server's CPU time (utime+stime of its process) per VM, and the ratio of the
per-VM figures of the larger size to the first (flat: about 1).

    .venv/bin/python bench/deploy_scale.py [--sizes 100,1000] [--hosts 20] [--clients 8] [--postgres]

Starts its own management server (SQLite in a temp dir; --postgres: a throw-away PostgreSQL from
tests/helpers/postgres.py, or --database-url) and one simulator fleet process (strato.agent.multi) of
--hosts hosts, as subprocesses on loopback, and stops them by pid at the end.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "bench"))

from cs import CloudStack  # noqa: E402
from simfleet import Zone, cpu_seconds, database, make_zone, prepare_deploys, start_fleet  # noqa: E402

from helpers.agentproc import AgentProcess  # noqa: E402
from helpers.serverproc import ServerProcess, start_server  # noqa: E402


@dataclass
class Step:
    size: int
    submit_s: float
    total_s: float
    server_cpu_s: float
    failed: int

    @property
    def wall_ms_per_vm(self) -> float:
        return self.total_s * 1000 / self.size

    @property
    def cpu_ms_per_vm(self) -> float:
        return self.server_cpu_s * 1000 / self.size


def count_vms(api: CloudStack, state: str) -> int:
    resp = api.listVirtualMachines(listall="true", state=state, page=1, pagesize=1)
    return int(resp.get("count", 0))


def deploy_all(server: ServerProcess, cloud: Zone, size: int, first: int, clients: int) -> Step:
    """Submits `size` deploys at once from `clients` threads, then waits until all are Running."""
    names = [f"vm-{first + i}" for i in range(size)]
    errors: list[str] = []
    lock = threading.Lock()

    def submit(part: list[str]) -> None:
        api = server.cs(timeout=120)
        for name in part:
            try:
                api.deployVirtualMachine(zoneid=cloud.zone, serviceofferingid=cloud.offering,
                                         templateid=cloud.template, name=name)  # fmt: skip
            except Exception as exc:
                with lock:
                    errors.append(f"{name}: {exc}")

    api = server.cs(timeout=120)
    running_before = count_vms(api, "Running")
    cpu0, t0 = cpu_seconds(server.proc.pid), time.monotonic()
    threads = [threading.Thread(target=submit, args=(names[i::clients],)) for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    submitted = time.monotonic() - t0
    deadline = time.monotonic() + 60 + size * 2
    while True:
        running = count_vms(api, "Running") - running_before
        failed = count_vms(api, "Error") + len(errors)
        if running + failed >= size:
            break
        if time.monotonic() > deadline:
            raise TimeoutError(f"{running}/{size} VMs Running after {time.monotonic() - t0:.0f}s")
        time.sleep(0.5)
    total = time.monotonic() - t0
    for line in errors[:5]:
        print("  deploy refused:", line[:200])
    if count_vms(api, "Error"):
        jobs = api.listAsyncJobs(listall="true", page=1, pagesize=500).get("asyncjobs", [])
        for job in [j for j in jobs if j.get("jobstatus") == 2][:3]:
            print("  deploy failed:", str(job.get("jobresult"))[:300])
    return Step(size, submitted, total, cpu_seconds(server.proc.pid) - cpu0, failed)


def run(args: argparse.Namespace, base: Path, database_url: str | None) -> list[Step]:
    server = start_server(base / "server", database_url=database_url)
    fleet: AgentProcess | None = None
    try:
        fleet = start_fleet(base / "fleet", args.hosts)
        api = server.cs(timeout=60)
        cloud = make_zone(api, base)
        for n in range(1, args.hosts + 1):
            cloud.add_host(api, fleet, n)
        prepare_deploys(api, cloud, base)
        # 2 GiB root disks (the simulator's template size) on one 1 TiB pool: room for 5,000.
        api.updateConfiguration(name="storage.overprovisioning.factor", value="10")
        print(f"{args.hosts} simulated hosts registered; deploying", flush=True)
        steps: list[Step] = []
        first = 0
        for size in args.sizes:
            step = deploy_all(server, cloud, size, first, args.clients)
            first += size
            steps.append(step)
            print(f"  {size} VMs: submitted in {step.submit_s:.1f}s, all Running after {step.total_s:.1f}s, "
                  f"server CPU {step.server_cpu_s:.1f}s, failed {step.failed}", flush=True)  # fmt: skip
        return steps
    finally:
        if fleet is not None:
            fleet.stop()
        server.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="100,1000", help="VMs per step, submitted at once")
    parser.add_argument("--hosts", type=int, default=20)
    parser.add_argument("--clients", type=int, default=8, help="client threads submitting the deploys")
    parser.add_argument("--database-url", default=None, help="PostgreSQL URL (default: SQLite in a temp dir)")
    parser.add_argument("--postgres", action="store_true", help="on a throw-away PostgreSQL server")
    args = parser.parse_args()
    args.sizes = [int(s) for s in args.sizes.split(",")]

    with (
        tempfile.TemporaryDirectory(prefix="strato-bench-deploy-") as tmp,
        database(args.database_url, args.postgres) as (url, backend),
    ):
        steps = run(args, Path(tmp), url)

    print(f"\n{backend}, {args.hosts} simulated hosts, {args.clients} clients")
    print(f"{'VMs':>6} {'submit s':>9} {'all Running s':>14} {'wall ms/VM':>11} {'server CPU ms/VM':>17} {'failed':>7}")
    for s in steps:
        print(f"{s.size:>6} {s.submit_s:>9.1f} {s.total_s:>14.1f} {s.wall_ms_per_vm:>11.1f} "
              f"{s.cpu_ms_per_vm:>17.1f} {s.failed:>7}")  # fmt: skip
    base = steps[0]
    for s in steps[1:]:
        print(f"per VM, {s.size} vs {base.size}: wall {s.wall_ms_per_vm / base.wall_ms_per_vm:.2f}, "
              f"server CPU {s.cpu_ms_per_vm / base.cpu_ms_per_vm:.2f} (flat: 1.0)")  # fmt: skip


if __name__ == "__main__":
    main()
