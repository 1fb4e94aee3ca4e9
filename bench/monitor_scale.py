"""Cost of the host monitor and VM sync per round as the number of hosts grows (50, 200, 1,000 simulated
hosts, each running --vms-per-host VMs).

    .venv/bin/python bench/monitor_scale.py [--sizes 50,200,1000] [--vms-per-host 1] [--rounds 10]
                                            [--postgres | --database-url URL]

Starts one management server (SQLite in a temp dir; --postgres: a throw-away PostgreSQL from
tests/helpers/postgres.py) and one simulator fleet of max(sizes) hosts (strato.agent.multi, one uvicorn
process), both as subprocesses on loopback, sets ping.interval to --interval (3 s: above the agent
client's 2 s keep-alive expiry, so that every size pays a new connection per ping, as at the default 5 s;
at 1 s the small sizes would reuse their connections and the large ones not), then registers the hosts through
addHost in steps (0, then 50, 200, 1,000) and deploys --vms-per-host VMs onto each new host (hostid), so
that every report the monitor gets lists VMs for VM sync to reconcile. At each step it watches --rounds
monitor rounds and reports:

- the round's wall time, as the server reports it (strato_monitor_last_round_seconds on /metrics);
- the server's CPU time per round (utime+stime from /proc/<pid>/stat over whole rounds), raw and net of
  the idle baseline measured with no host (job runner polling, heartbeats, the /metrics scrapes);
- the fleet's CPU time per round (the agents' side of the pings);
- per host, and the ratios to the smallest size (linear scaling gives the ratio of the host counts; the
  goal is 1,000/50 <= 20 for the server's net CPU).

Everything is stopped by pid at the end.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from cs import CloudStack  # noqa: E402
from simfleet import cpu_seconds, database, make_zone, prepare_deploys, start_fleet  # noqa: E402

from helpers.agentproc import AgentProcess  # noqa: E402
from helpers.serverproc import ServerProcess, start_server, wait_job  # noqa: E402

SCRAPE_EVERY = 0.25


def monitor_round(server: ServerProcess) -> tuple[float, int, int]:
    """(last round seconds, hosts in it, hosts that answered) from /metrics."""
    seconds, hosts, answered = 0.0, 0, 0
    for line in httpx.get(server.base_url + "/metrics", timeout=10).text.splitlines():
        if line.startswith("strato_monitor_last_round_seconds "):
            seconds = float(line.split()[1])
        elif line.startswith('strato_monitor_last_round_hosts{outcome="all"}'):
            hosts = int(line.split()[1])
        elif line.startswith('strato_monitor_last_round_hosts{outcome="answered"}'):
            answered = int(line.split()[1])
    return seconds, hosts, answered


@dataclass
class Step:
    hosts: int
    rounds: int
    round_wall_s: float
    server_cpu_per_round: float
    fleet_cpu_per_round: float
    window_s: float


def watch_rounds(server: ServerProcess, fleet: AgentProcess, hosts: int, rounds: int) -> Step:
    """Waits for a round covering `hosts` hosts, then measures CPU over the next `rounds` whole rounds."""
    deadline = time.monotonic() + 60 + rounds * 15
    last = monitor_round(server)
    # First, a round boundary with every host in the round (the first round after a change is partial).
    while True:
        now = monitor_round(server)
        if now != last and now[1] == hosts:
            break
        last = now
        if time.monotonic() > deadline:
            raise TimeoutError(f"no monitor round over {hosts} hosts (last {now})")
        time.sleep(SCRAPE_EVERY / 5)
    start_t, start_cpu, start_fleet = time.monotonic(), cpu_seconds(server.proc.pid), cpu_seconds(fleet.proc.pid)
    walls: list[float] = []
    last = now
    while len(walls) < rounds:
        # A tenth of a round between scrapes: /metrics costs the server too, more with more hosts.
        time.sleep(max(SCRAPE_EVERY, now[0] / 10))
        now = monitor_round(server)
        if now != last:
            if now[1] != hosts or now[2] != hosts:
                raise RuntimeError(f"round with {now[2]}/{now[1]} answering, {hosts} expected")
            walls.append(now[0])
            last = now
        if time.monotonic() > deadline:
            raise TimeoutError(f"only {len(walls)} rounds seen over {hosts} hosts")
    # Rounds are detected up to a scrape late at both ends alike, so the window spans `rounds` rounds.
    window = time.monotonic() - start_t
    return Step(
        hosts=hosts,
        rounds=rounds,
        round_wall_s=statistics.median(walls),
        server_cpu_per_round=(cpu_seconds(server.proc.pid) - start_cpu) / rounds,
        fleet_cpu_per_round=(cpu_seconds(fleet.proc.pid) - start_fleet) / rounds,
        window_s=window,
    )


def idle_baseline(server: ServerProcess, seconds: float) -> float:
    """Server CPU seconds per wall second with no host, while being scraped as during the measurement."""
    start_t, start_cpu = time.monotonic(), cpu_seconds(server.proc.pid)
    while time.monotonic() - start_t < seconds:
        monitor_round(server)
        time.sleep(SCRAPE_EVERY)
    return (cpu_seconds(server.proc.pid) - start_cpu) / (time.monotonic() - start_t)


def deploy_onto(api: CloudStack, zone_ids: tuple[str, str, str], host_ids: list[str], per_host: int) -> None:
    """per_host running VMs on each of the hosts: every deploy submitted at once (eight client threads),
    then each job waited for."""
    zone, template, offering = zone_ids

    def submit(host_id: str) -> list[str]:
        return [
            api.deployVirtualMachine(zoneid=zone, templateid=template, serviceofferingid=offering, hostid=host_id)[
                "jobid"
            ]
            for _ in range(per_host)
        ]

    def finished(job_id: str) -> None:
        result = wait_job(api, job_id, 600)
        assert result["jobstatus"] == 1, result

    with ThreadPoolExecutor(max_workers=8) as pool:
        jobs = [job for batch in pool.map(submit, host_ids) for job in batch]
        list(pool.map(finished, jobs))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="50,200,1000")
    parser.add_argument("--vms-per-host", type=int, default=1, help="running VMs on each host (for VM sync)")
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--interval", type=int, default=3, help="ping.interval in seconds")
    parser.add_argument("--database-url", default=None, help="PostgreSQL URL (default: SQLite in a temp dir)")
    parser.add_argument("--postgres", action="store_true", help="on a throw-away PostgreSQL server")
    args = parser.parse_args()
    sizes = sorted(int(s) for s in args.sizes.split(","))

    with (
        tempfile.TemporaryDirectory(prefix="strato-bench-monitor-") as tmp,
        database(args.database_url, args.postgres) as (url, backend),
    ):
        work = Path(tmp)
        server = start_server(work / "server", database_url=url)
        fleet: AgentProcess | None = None
        try:
            fleet = start_fleet(work / "fleet", sizes[-1])
            api: CloudStack = server.cs(timeout=120, job_timeout=300)
            api.updateConfiguration(name="ping.interval", value=str(args.interval))
            api.updateConfiguration(name="storage.overprovisioning.factor", value="10")
            zone = make_zone(api, work)
            first = zone.add_host(api, fleet, 1)
            prepare_deploys(api, zone, work)
            zone_ids = (zone.zone, zone.template, zone.offering)

            def add(n: int) -> str:
                assert fleet is not None
                return str(zone.add_host(api, fleet, n)["id"])

            print(f"measuring the idle server ({args.rounds} s)...", flush=True)
            baseline = idle_baseline(server, float(args.rounds))
            steps: list[Step] = []
            registered = 1
            new_ids = [str(first["id"])]
            for size in sizes:
                t0 = time.monotonic()
                with ThreadPoolExecutor(max_workers=4) as pool:
                    new_ids += list(pool.map(add, range(registered + 1, size + 1)))
                print(f"registered hosts {registered + 1}..{size} in {time.monotonic() - t0:.1f}s", flush=True)
                if args.vms_per_host:
                    t0 = time.monotonic()
                    deploy_onto(api, zone_ids, new_ids, args.vms_per_host)
                    print(f"  {len(new_ids) * args.vms_per_host} more VMs running in {time.monotonic() - t0:.1f}s",
                          flush=True)  # fmt: skip
                registered, new_ids = size, []
                step = watch_rounds(server, fleet, size, args.rounds)
                steps.append(step)
                print(
                    f"  {size} hosts: round {step.round_wall_s * 1000:.0f} ms wall, server CPU "
                    f"{step.server_cpu_per_round * 1000:.0f} ms/round, fleet CPU "
                    f"{step.fleet_cpu_per_round * 1000:.0f} ms/round",
                    flush=True,
                )
        finally:
            if fleet is not None:
                fleet.stop()
            server.stop()

    print()
    print(f"idle server: {baseline * 1000:.1f} ms CPU per second (subtracted as 'net')")
    print(f"{backend}, ping.interval {args.interval} s, {args.vms_per_host} VM(s) per host, "
          f"{args.rounds} rounds per size, {os.cpu_count()} CPUs")  # fmt: skip
    header = (
        f"{'hosts':>6} {'round wall ms':>14} {'wall ms/host':>13} {'srv CPU ms/round':>17} "
        f"{'net ms/round':>13} {'net ms/host':>12} {'fleet CPU ms/round':>19}"
    )
    print(header)
    net: dict[int, float] = {}
    wall: dict[int, float] = {}
    for s in steps:
        per_round_idle = baseline * (s.window_s / s.rounds)
        net[s.hosts] = max(0.0, s.server_cpu_per_round - per_round_idle)
        wall[s.hosts] = s.round_wall_s
        print(
            f"{s.hosts:>6} {s.round_wall_s * 1000:>14.1f} {s.round_wall_s * 1000 / s.hosts:>13.2f} "
            f"{s.server_cpu_per_round * 1000:>17.1f} {net[s.hosts] * 1000:>13.1f} "
            f"{net[s.hosts] * 1000 / s.hosts:>12.2f} {s.fleet_cpu_per_round * 1000:>19.1f}"
        )
    base = sizes[0]
    for size in sizes[1:]:
        print(
            f"ratio {size}/{base}: round wall {wall[size] / wall[base]:.2f}, "
            f"server net CPU {net[size] / net[base] if net[base] else float('nan'):.2f} "
            f"(linear: {size / base:.1f}{'; goal <= 20' if size == 20 * base else ''})"
        )


if __name__ == "__main__":
    main()
