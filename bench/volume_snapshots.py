"""Volume snapshots on the QEMU driver against their baseline, measured side by side in one run.

A booted tiny guest (TCG) has a 4 GiB data disk holding D MiB of data, and another holding 10x D. For
each: the time of a live snapshot of the running disk (`backup_disk`, blockdev-backup sync=full onto a
standalone qcow2) vs the offline flatten of a copy of the same disk (`convert_layer`, qemu-img convert),
and the snapshot file's size vs the data (goal: it stays sparse, <= 1.1x the data). The guest keeps
running; the VM's chain is not changed.

Drives a QemuDriver in-process in a temp dir; every QEMU it started is killed at the end.

    .venv/bin/python bench/volume_snapshots.py [--runs 3] [--data-mib 64]
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "src"))

from snapshots import MIB, Bench, make_disk, noop  # noqa: E402

from helpers.faultlib import kill_qemus_under  # noqa: E402


async def measure(bench: Bench, data_mib: int, runs: int) -> dict[str, dict[str, list[float]]]:
    disks = {"small": data_mib, "big": 10 * data_mib}
    for which, mib in disks.items():
        make_disk(bench.path(f"{which}.qcow2"), 4096, mib)
    await bench.boot("vs", 128, [f"{which}.qcow2" for which in disks])
    out: dict[str, dict[str, list[float]]] = {w: {"live": [], "offline": [], "size": []} for w in disks}
    for run in range(runs):
        for device, which in enumerate(disks, start=1):
            target = bench.layer(f"snap-{which}-{run}.qcow2")
            started = time.perf_counter()
            info = await bench.drv.backup_disk("vs", device, target, noop)
            out[which]["live"].append((time.perf_counter() - started) * 1000)
            out[which]["size"].append(info.physical_size / MIB)
            copy = bench.path(f"copy-{which}-{run}.qcow2")
            shutil.copyfile(bench.path(f"{which}.qcow2"), copy)
            started = time.perf_counter()
            await bench.drv.convert_layer(bench.layer(copy.name), bench.layer(f"flat-{which}-{run}.qcow2"), noop)
            out[which]["offline"].append((time.perf_counter() - started) * 1000)
            copy.unlink()
    await bench.drv.stop_vm("vs", force=True, timeout_s=1)
    return out


async def run(args: argparse.Namespace, base: Path) -> None:
    bench = Bench(base)
    await bench.drv.start()
    try:
        results = await measure(bench, args.data_mib, args.runs)
        print(f"volume snapshot of a running 4 GiB disk, {args.data_mib} MiB vs {10 * args.data_mib} MiB of data")
        for which, mib in (("small", args.data_mib), ("big", 10 * args.data_mib)):
            r = results[which]
            live, off, size = (statistics.median(r[k]) for k in ("live", "offline", "size"))
            print(
                f"   {mib:5d} MiB: live p50 {live:7.1f} ms {[round(x) for x in r['live']]}, offline convert p50 "
                f"{off:7.1f} ms, ratio {live / off:.2f}; file {size:.1f} MiB = {size / mib:.2f}x the data "
                f"(goal <= 1.1)"
            )
        ratio = statistics.median(results["big"]["live"]) / statistics.median(results["small"]["live"])
        print(f"   live time, 10x data / 1x: {ratio:.2f} (the copy follows the data, not the disk's 4 GiB)")
    finally:
        await bench.drv.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--data-mib", type=int, default=64)
    args = parser.parse_args()
    base = Path(tempfile.mkdtemp(prefix="strato-bvsnap-"))
    try:
        asyncio.run(run(args, base))
    finally:
        kill_qemus_under(base)
        subprocess.run(["rm", "-rf", str(base)], check=False)


if __name__ == "__main__":
    main()
