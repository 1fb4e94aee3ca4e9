"""VM snapshots on the QEMU driver against their baselines, measured side by side in one run.

1. Guest pause of a live memory snapshot (`snapshot_vm` with memory: RAM written while the guest runs,
   paused only for the last pass and the disk freeze) vs QEMU's stop-the-world save of the same guest
   (`stop`; migrate to a file; `cont`), for a 256 MiB and a 1 GiB tiny guest under TCG. Both pauses are
   QEMU's STOP to RESUME event timestamps. Goals: <= 100 ms for 1 GiB, <= 0.1x stop-the-world.
2. Disk snapshot create time (`snapshot_vm`, disk only) and revert time (a new top on the frozen layer,
   `create_layer`) of a disk with D MiB of data vs one with 10x D (goal: <= 1.1x).
3. Merge cost: a layer of M MiB of data above a base of 10x M; bytes written (allocation growth of the
   file written) by a live commit of the layer into the base and by a live stream of it into the layer
   above, vs M (goal: <= 1.1x the smaller layer).

Drives a QemuDriver in-process in a temp dir; every QEMU it started is killed at the end.

    .venv/bin/python bench/snapshots.py [--runs 3] [--data-mib 64] [--merge-mib 16]
"""

from __future__ import annotations

import argparse
import asyncio
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
sys.path.insert(0, str(ROOT / "src"))

from helpers.faultlib import kill_qemus_under  # noqa: E402
from strato.agent.drivers.qemu import QemuDriver  # noqa: E402
from strato.agent.drivers.qemu.migration import UNLIMITED_BANDWIDTH, _wait_migration  # noqa: E402
from strato.agent.drivers.qemu.monitor import RUN_STATE_EVENTS  # noqa: E402
from strato.image.tiny import default_image_path  # noqa: E402
from strato.protocol.messages import DiskSpec, LayerRef, PoolRef, SnapshotDisk, VmSpec  # noqa: E402

MIB = 1024**2


def noop(done: int, total: int) -> None:
    pass


def allocated(path: Path) -> int:
    return path.stat().st_blocks * 512


def make_disk(path: Path, size_mib: int, data_mib: int, offset_mib: int = 0, backing: Path | None = None) -> None:
    cmd = ["qemu-img", "create", "-q", "-f", "qcow2"]
    if backing is not None:
        cmd += ["-b", str(backing), "-F", "qcow2"]
    subprocess.run([*cmd, str(path), f"{size_mib}M"], check=True)
    if data_mib:
        subprocess.run(
            ["qemu-io", "-f", "qcow2", "-c", f"write -P 0x5a {offset_mib}M {data_mib}M", str(path)],
            check=True,
            capture_output=True,
        )


class Bench:
    def __init__(self, base: Path) -> None:
        self.base = base
        self.drv = QemuDriver(base / "data", accel="tcg")
        self.image = default_image_path()

    def layer(self, name: str) -> LayerRef:
        return LayerRef(pool=self.drv.local_pool, name=name)

    def path(self, name: str) -> Path:
        return Path(self.drv.local_pool.path) / name

    async def boot(self, name: str, memory_mib: int, data: list[str]) -> VmSpec:
        images = PoolRef(id="images", path=str(self.image.parent))
        root = self.layer(f"{name}-root.qcow2")
        await self.drv.create_layer(root, None, LayerRef(pool=images, name=self.image.name))
        disks = [DiskSpec(device_id=0, layer=root)]
        disks += [DiskSpec(device_id=i + 1, layer=self.layer(d)) for i, d in enumerate(data)]
        spec = VmSpec(name=name, uuid=str(uuid.uuid4()), cpus=1, memory_mib=memory_mib, disks=disks)
        await self.drv.start_vm(spec)
        deadline = time.monotonic() + 300
        while "STRATO-READY" not in await self.drv.console_log(name, None):
            if time.monotonic() > deadline:
                raise RuntimeError(f"{name} did not boot")
            await asyncio.sleep(0.5)
        return spec

    async def stop_the_world(self, name: str, target: Path) -> float:
        """`stop`, migrate to a file, `cont`: the pause in ms (STOP to RESUME timestamps)."""
        monitor = self.drv.monitor(name)
        await monitor.execute(
            "migrate-set-capabilities",
            {"capabilities": [{"capability": "pause-before-switchover", "state": False},
                              {"capability": "events", "state": True}]},
        )  # fmt: skip
        await monitor.execute("migrate-set-parameters", {"max-bandwidth": UNLIMITED_BANDWIDTH})
        with monitor.subscribe(RUN_STATE_EVENTS) as events:
            await monitor.execute("stop")
            await monitor.execute("migrate", {"uri": f"exec:cat > {target}"})
            await _wait_migration(monitor, {"completed"}, 600)
            await monitor.execute("cont")
            stop = await events.wait(lambda e: e.get("event") == "STOP", 10)
            resume = await events.wait(lambda e: e.get("event") == "RESUME", 10)
        return (_stamp(resume) - _stamp(stop)) * 1000

    async def memory_pauses(self, memory_mib: int, runs: int) -> tuple[list[float], list[float]]:
        name = f"mem{memory_mib}"
        await self.boot(name, memory_mib, [])
        live: list[float] = []
        world: list[float] = []
        for run in range(runs):
            new_top = f"{name}-s{run}.qcow2"
            taken = await self.drv.snapshot_vm(
                name,
                [SnapshotDisk(device_id=0, new_top=self.layer(new_top))],
                self.layer(f"{name}-{run}.vmstate"),
                noop,
            )
            live.append(taken.paused_ms)
            world.append(await self.stop_the_world(name, self.path(f"{name}-{run}.stw")))
        await self.drv.stop_vm(name, force=True, timeout_s=1)
        return live, world

    async def disk_snapshot_times(self, data_mib: int, runs: int) -> dict[str, list[float]]:
        small, big = "small.qcow2", "big.qcow2"
        make_disk(self.path(small), 16 * data_mib, data_mib)
        make_disk(self.path(big), 16 * data_mib, 10 * data_mib)
        name = "disks"
        await self.boot(name, 128, [small, big])
        times: dict[str, list[float]] = {"create-small": [], "create-big": [], "revert-small": [], "revert-big": []}
        for run in range(runs):
            for device, which in ((1, "small"), (2, "big")):
                new_top = self.layer(f"{which}-s{run}.qcow2")
                started = time.perf_counter()
                await self.drv.snapshot_vm(name, [SnapshotDisk(device_id=device, new_top=new_top)], None, noop)
                times[f"create-{which}"].append((time.perf_counter() - started) * 1000)
                started = time.perf_counter()
                await self.drv.create_layer(self.layer(f"{which}-r{run}.qcow2"), None, self.layer(f"{which}.qcow2"))
                times[f"revert-{which}"].append((time.perf_counter() - started) * 1000)
        await self.drv.stop_vm(name, force=True, timeout_s=1)
        return times

    async def merge_bytes(self, merge_mib: int) -> dict[str, int]:
        """base (10x M of data) <- mid (M of data) <- top (empty, the VM's); commit mid into base, and
        in a second chain stream mid into top."""
        out: dict[str, int] = {}
        for how in ("commit", "stream"):
            base, mid, top = (f"{how}-{n}.qcow2" for n in ("base", "mid", "top"))
            make_disk(self.path(base), 32 * merge_mib, 10 * merge_mib)
            make_disk(self.path(mid), 32 * merge_mib, merge_mib, offset_mib=20 * merge_mib, backing=self.path(base))
            make_disk(self.path(top), 32 * merge_mib, 0, backing=self.path(mid))
            name = f"merge-{how}"
            await self.boot(name, 128, [top])
            if how == "commit":
                before = allocated(self.path(base))
                await self.drv.commit_disk(name, 1, self.layer(mid), self.layer(base), noop)
                out[how] = allocated(self.path(base)) - before
            else:
                before = allocated(self.path(top))
                await self.drv.stream_disk(name, 1, self.layer(top), self.layer(base), noop)
                out[how] = allocated(self.path(top)) - before
            await self.drv.stop_vm(name, force=True, timeout_s=1)
        return out


def _stamp(event: dict[str, Any]) -> float:
    ts = event.get("timestamp") or {}
    return float(ts.get("seconds", 0)) + float(ts.get("microseconds", 0)) / 1e6


async def run(args: argparse.Namespace, base: Path) -> None:
    bench = Bench(base)
    await bench.drv.start()
    try:
        print("1. memory snapshot: guest pause, live vs stop-the-world (STOP..RESUME, ms)")
        for memory_mib in (256, 1024):
            live, world = await bench.memory_pauses(memory_mib, args.runs)
            lp, wp = statistics.median(live), statistics.median(world)
            print(
                f"   {memory_mib:5d} MiB guest: live p50 {lp:7.1f} ms {[round(x, 1) for x in live]}, "
                f"stop-the-world p50 {wp:7.1f} ms {[round(x, 1) for x in world]}, ratio {lp / wp:.3f}"
                f"  (goals: live <= 100 ms for 1 GiB, ratio <= 0.1)"
            )
        print(f"2. disk snapshot of {args.data_mib} MiB vs {10 * args.data_mib} MiB of data (ms, p50)")
        times = await bench.disk_snapshot_times(args.data_mib, args.runs)
        for what in ("create", "revert"):
            s, b = statistics.median(times[f"{what}-small"]), statistics.median(times[f"{what}-big"])
            print(f"   {what}: small {s:6.1f} ms, 10x data {b:6.1f} ms, ratio {b / s:.2f}  (goal <= 1.1)")
        print(f"3. merge of a {args.merge_mib} MiB layer with a {10 * args.merge_mib} MiB base: bytes written")
        merged = await bench.merge_bytes(args.merge_mib)
        for how, written in merged.items():
            ratio = written / (args.merge_mib * MIB)
            print(f"   live {how}: {written / MIB:.1f} MiB written, {ratio:.2f}x the smaller layer  (goal <= 1.1)")
    finally:
        await bench.drv.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--data-mib", type=int, default=64)
    parser.add_argument("--merge-mib", type=int, default=16)
    args = parser.parse_args()
    base = Path(tempfile.mkdtemp(prefix="strato-bsnap-"))
    try:
        asyncio.run(run(args, base))
    finally:
        kill_qemus_under(base)
        subprocess.run(["rm", "-rf", str(base)], check=False)


if __name__ == "__main__":
    main()
