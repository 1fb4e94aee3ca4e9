"""Deploy time against template size: linked clones make a deploy O(1) in the template's size.

Two templates of real data (qemu-io writes a pattern, so no sparse shortcut), 64 MiB and 640 MiB by
default, are registered from file:// on an image store. For each, the first deploy onto a pool copies the
template there (reported on its own: that one is O(size)); then N more deploys (startvm=false) onto the
same pool only make a new top layer each. The ratio of the mean per-deploy times of the big and the small
template should be about 1.

Runs its own management server (SQLite) and one QEMU agent (no VM is started) in a temp dir; everything
is stopped by pid at the end.

    .venv/bin/python bench/deploy.py [--count 10] [--small-mib 64] [--factor 10]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from cs import CloudStack  # noqa: E402

from helpers.agentproc import AgentProcess, start_agent  # noqa: E402
from helpers.serverproc import ServerProcess, start_server, wait_job  # noqa: E402

MIB = 1024**2


def make_image(path: Path, mib: int) -> None:
    """A qcow2 of `mib` MiB, every byte written (pattern 0x5a)."""
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(path), f"{mib}M"], check=True)
    subprocess.run(
        ["qemu-io", "-f", "qcow2", "-c", f"write -P 0x5a 0 {mib}M", str(path)], check=True, capture_output=True
    )


def setup(base: Path, server: ServerProcess, agent: AgentProcess) -> tuple[CloudStack, dict[str, str]]:
    api = server.cs(fetch_result=True, job_timeout=300, timeout=60)
    tag = uuid.uuid4().hex[:6]
    zone = api.createZone(name=f"bench-{tag}")["zone"]
    pod = api.createPod(name=f"pod-{tag}", zoneid=zone["id"])["pod"]
    cluster = api.addCluster(clustername=f"c-{tag}", zoneid=zone["id"], podid=pod["id"], hypervisor="KVM")["cluster"][0]
    api.addHost(
        zoneid=zone["id"],
        podid=pod["id"],
        clusterid=cluster["id"],
        url=agent.base_url,
        username="strato",
        password=agent.token,
        hypervisor="KVM",
    )
    (base / "pool").mkdir()
    (base / "store").mkdir()
    pool = api.createStoragePool(
        name=f"pool-{tag}",
        zoneid=zone["id"],
        podid=pod["id"],
        clusterid=cluster["id"],
        scope="cluster",
        url=f"SharedMountPoint://localhost{base / 'pool'}",
    )["storagepool"]
    store = api.addImageStore(name="store", provider="NFS", url=f"file://localhost{base / 'store'}", zoneid=zone["id"])[
        "imagestore"
    ]
    offering = api.createServiceOffering(name="bench", displaytext="bench", cpunumber=1, cpuspeed=1000, memory=128)[
        "serviceoffering"
    ]
    return api, {"zone": zone["id"], "pool": pool["id"], "store": store["id"], "offering": offering["id"]}


def register(api: CloudStack, raw: CloudStack, ids: dict[str, str], name: str, image: Path) -> str:
    tmpl = api.registerTemplate(
        name=name,
        displaytext=name,
        url=f"file://{image}",
        format="QCOW2",
        hypervisor="KVM",
        zoneid=ids["zone"],
        imagestoreid=ids["store"],
    )["template"][0]
    job = wait_job(raw, tmpl["jobid"], timeout=300)
    assert job["jobstatus"] == 1, job
    return str(tmpl["id"])


def deploy(api: CloudStack, ids: dict[str, str], template_id: str) -> tuple[float, str]:
    started = time.perf_counter()
    vm: dict[str, Any] = api.deployVirtualMachine(
        zoneid=ids["zone"],
        serviceofferingid=ids["offering"],
        templateid=template_id,
        rootdiskstorageid=ids["pool"],
        startvm=False,
    )["virtualmachine"]
    return time.perf_counter() - started, str(vm["id"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=10, help="deploys per template after the first")
    parser.add_argument("--small-mib", type=int, default=64)
    parser.add_argument("--factor", type=int, default=10, help="size of the big template / the small one")
    args = parser.parse_args()
    base = Path(tempfile.mkdtemp(prefix="strato-bench-deploy-"))
    server: ServerProcess | None = None
    agent: AgentProcess | None = None
    t0 = time.perf_counter()
    try:
        sizes = {"small": args.small_mib, "big": args.small_mib * args.factor}
        images = {}
        for key, mib in sizes.items():
            images[key] = base / f"{key}.qcow2"
            make_image(images[key], mib)
        server = start_server(base / "server")
        agent = start_agent(base / "host", token=uuid.uuid4().hex, driver="qemu", accel="tcg")
        api, ids = setup(base, server, agent)
        raw = server.cs(timeout=60)
        results: dict[str, dict[str, Any]] = {}
        vms: list[str] = []
        for key in ("small", "big"):
            started = time.perf_counter()
            tid = register(api, raw, ids, f"bench-{key}", images[key])
            registered_s = time.perf_counter() - started
            first_s, vm_id = deploy(api, ids, tid)
            vms.append(vm_id)
            times = []
            for _ in range(args.count):
                took, vm_id = deploy(api, ids, tid)
                times.append(took)
                vms.append(vm_id)
            results[key] = {"register": registered_s, "first": first_s, "times": times}
        for vm_id in vms:
            api.destroyVirtualMachine(id=vm_id, expunge=True)
    finally:
        if agent is not None:
            agent.stop()
        if server is not None:
            server.stop()
        shutil.rmtree(base, ignore_errors=True)

    print(f"deploy (startvm=false) onto one cluster pool; {args.count} deploys per template after the first")
    print(f"{os.cpu_count()} CPUs; total bench time {time.perf_counter() - t0:.1f} s")
    header = f"{'template':>10} {'MiB':>6} {'register s':>11} {'first deploy s':>15} {'mean s':>8} {'median s':>9}"
    print(header + f" {'min s':>7} {'max s':>7}")
    for key, r in results.items():
        t = r["times"]
        print(
            f"{key:>10} {sizes[key]:>6} {r['register']:>11.2f} {r['first']:>15.2f} {statistics.mean(t):>8.3f} "
            f"{statistics.median(t):>9.3f} {min(t):>7.3f} {max(t):>7.3f}"
        )
    small, big = results["small"], results["big"]
    print(
        f"ratio big/small ({args.factor}x the size): linked-clone deploy mean "
        f"{statistics.mean(big['times']) / statistics.mean(small['times']):.2f}, median "
        f"{statistics.median(big['times']) / statistics.median(small['times']):.2f} (O(1): ~1); "
        f"first deploy (copies the template to the pool) {big['first'] / small['first']:.2f}"
    )


if __name__ == "__main__":
    main()
