"""Setting up and tearing down guest networks and NICs on the simulator, as the count grows.

    .venv/bin/python bench/network.py [--sizes 10,50] [--nics-per-network 4] [--database-url URL]

Runs its own management server (SQLite in a temp dir unless --database-url) and one simulator agent,
both as subprocesses on loopback. For each size N it:

1. creates N isolated networks (createNetwork, one at a time, as a user would);
2. deploys 4N VMs, each with a NIC on one of them (all submitted at once, waited for together): every
   deploy allocates an address and a MAC and sends the network's wanted state to the host;
3. destroys (expunge) those VMs and deletes the networks;
4. as the baseline, in the same run, deploys and expunges 4N VMs with no NIC.

It reports each phase's time, per network and per NIC, the cost of a NIC-carrying deploy against the
baseline deploy (the ratio NIC/no-NIC), and the per-item ratio between the largest and the smallest size
(flat scaling gives 1.0). Everything is stopped by pid at the end.

The time for a rule change to reach a real host belongs to security groups (issue 12), not here yet.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "tests" / "engine"))

from cs import CloudStack  # noqa: E402
from simcloud import simulated_cloud  # noqa: E402

from helpers.agentproc import start_agent  # noqa: E402
from helpers.serverproc import start_server, wait_job  # noqa: E402

ISOLATED = "DefaultIsolatedNetworkOfferingWithSourceNatService"


def timed(fn: Callable[[], Any]) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def wait_all(api: CloudStack, jobids: list[str], threads: int = 16) -> list[dict[str, Any]]:
    with ThreadPoolExecutor(threads) as pool:
        done = list(pool.map(lambda j: wait_job(api, j, 600), jobids))
    failed = [d for d in done if d["jobstatus"] != 1]
    assert not failed, failed[:3]
    return done


class Bench:
    def __init__(self, api: CloudStack, ids: dict[str, str], offering: str) -> None:
        self.api, self.ids, self.offering = api, ids, offering
        self.serial = 0

    def create_networks(self, n: int) -> list[str]:
        nets = []
        for _ in range(n):
            self.serial += 1
            net = self.api.createNetwork(name=f"bn{self.serial}", displaytext="bench", zoneid=self.ids["zone"],
                                         networkofferingid=self.offering)["network"]  # fmt: skip
            nets.append(str(net["id"]))
        return nets

    def deploy(self, count: int, nets: list[str] | None) -> list[str]:
        jobs = []
        for i in range(count):
            self.serial += 1
            extra = {"networkids": nets[i % len(nets)]} if nets else {}
            started = self.api.deployVirtualMachine(
                zoneid=self.ids["zone"], serviceofferingid=self.ids["offering"], templateid=self.ids["template"],
                name=f"bv{self.serial}", **extra,
            )  # fmt: skip
            jobs.append(str(started["jobid"]))
        return [str(d["jobresult"]["virtualmachine"]["id"]) for d in wait_all(self.api, jobs)]

    def expunge(self, vms: list[str]) -> None:
        wait_all(self.api, [str(self.api.destroyVirtualMachine(id=v, expunge=True)["jobid"]) for v in vms])

    def delete_networks(self, nets: list[str]) -> None:
        wait_all(self.api, [str(self.api.deleteNetwork(id=n)["jobid"]) for n in nets])


def run_size(bench: Bench, n: int, per: int) -> dict[str, float]:
    box: dict[str, Any] = {}
    out = {"create": timed(lambda: box.update(nets=bench.create_networks(n)))}
    out["deploy"] = timed(lambda: box.update(vms=bench.deploy(n * per, box["nets"])))
    out["expunge"] = timed(lambda: bench.expunge(box["vms"]))
    out["delete"] = timed(lambda: bench.delete_networks(box["nets"]))
    out["base_deploy"] = timed(lambda: box.update(base=bench.deploy(n * per, None)))
    out["base_expunge"] = timed(lambda: bench.expunge(box["base"]))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="10,50")
    parser.add_argument("--nics-per-network", type=int, default=4)
    parser.add_argument("--database-url", default=None)
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    per = args.nics_per_network
    with tempfile.TemporaryDirectory(prefix="strato-bench-net-") as tmp:
        base = Path(tmp)
        server = start_server(base / "server", database_url=args.database_url)
        agent = None
        try:
            agent = start_agent(base / "agent", driver="simulator")
            ids = simulated_cloud(server.cs(), agent, base / "store")
            api = server.cs(timeout=120, job_timeout=600)
            setup = server.cs(timeout=120, fetch_result=True)
            pn = setup.createPhysicalNetwork(zoneid=ids["zone"], name="guest", isolationmethods="VXLAN",
                                           vlan="1000-1999")["physicalnetwork"]  # fmt: skip
            setup.addTrafficType(physicalnetworkid=pn["id"], traffictype="Guest")
            setup.updatePhysicalNetwork(id=pn["id"], state="Enabled")
            offering = next(o["id"] for o in api.listNetworkOfferings()["networkoffering"] if o["name"] == ISOLATED)
            api.updateConfiguration(name="expunge.delay", value="0")
            bench = Bench(api, ids, offering)
            bench.expunge(bench.deploy(2, bench.create_networks(1)))  # warm-up: imports, first queries
            results = {n: run_size(bench, n, per) for n in sizes}
        finally:
            if agent is not None:
                agent.stop()
            server.stop()
    print(f"{'networks':>8} {'NICs':>5} | {'create/net':>10} {'deploy/NIC':>10} {'base/VM':>8} {'NIC/base':>8} "
          f"{'expunge/NIC':>11} {'delete/net':>10}")  # fmt: skip
    per_item: dict[int, dict[str, float]] = {}
    for n, r in results.items():
        nics = n * per
        row = {
            "create": r["create"] / n,
            "deploy": r["deploy"] / nics,
            "base": r["base_deploy"] / nics,
            "expunge": r["expunge"] / nics,
            "delete": r["delete"] / n,
        }
        per_item[n] = row
        print(f"{n:>8} {nics:>5} | {row['create'] * 1e3:>8.1f}ms {row['deploy'] * 1e3:>8.1f}ms "
              f"{row['base'] * 1e3:>6.1f}ms {row['deploy'] / row['base']:>8.2f} {row['expunge'] * 1e3:>9.1f}ms "
              f"{row['delete'] * 1e3:>8.1f}ms")  # fmt: skip
    small, big = per_item[min(sizes)], per_item[max(sizes)]
    print(f"per-item cost, {max(sizes)} vs {min(sizes)} networks (flat = 1.0): "
          + ", ".join(f"{k} {big[k] / small[k]:.2f}" for k in ("create", "deploy", "expunge", "delete")))  # fmt: skip


if __name__ == "__main__":
    main()
