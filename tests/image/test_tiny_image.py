"""The tiny guest under real QEMU (TCG): boot, config drive, and the disk-integrity workload."""

from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from tinyvm import boot_tiny, data_disk

from helpers.vnc import end_loop
from strato.image.configdrive import build_config_drive
from strato.image.integrity import BlockFailure, parse_generations, verify_image

pytestmark = pytest.mark.qemu

KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGl0cyBub3QgYSByZWFsIGtleSBidXQgb2sgZm9yIHRlc3Q= alice@example"


@pytest.fixture
def workdir() -> Iterator[Path]:
    """A scratch dir removed even when the test fails (the console tail is in the failure message)."""
    path = Path(tempfile.mkdtemp(prefix="strato-tiny-test-"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def test_boots_and_sees_two_virtio_disks(tiny_image: Path, workdir: Path) -> None:
    disks = [data_disk(workdir / "a.qcow2", 32), data_disk(workdir / "b.qcow2", 16)]
    with boot_tiny(tiny_image, workdir, disks=disks) as vm:
        vm.wait_for(r"^STRATO-TINY-BOOTED", timeout=60)
        line = vm.wait_for(r"^STRATO-DISKS:.*$", timeout=10).group(0)
        assert line.split()[1:] == ["vda:67108864", "vdb:33554432", "vdc:16777216"]
        vm.wait_for(r"^STRATO-CONFIGDRIVE: none", timeout=10)


@pytest.mark.parametrize("cd_bus", ["ide", "scsi"])
def test_config_drive_sets_hostname_keys_and_runs_user_data(tiny_image: Path, workdir: Path, cd_bus: str) -> None:
    user_data = '#!/bin/sh\necho "user-data on $(hostname) keys=$(wc -l < /root/.ssh/authorized_keys)"\n'
    iso = build_config_drive(
        workdir / "config.iso", hostname="web-7", user_data=user_data, public_keys=[KEY, "ssh-rsa AAAAB3 bob"]
    )
    with boot_tiny(tiny_image, workdir, cdrom=iso, cd_bus=cd_bus, run="poweroff") as vm:
        vm.wait_for(r"^STRATO-HOSTNAME: web-7$", timeout=60)
        vm.wait_for(r"^STRATO-SSHKEY: MD5:[0-9a-f:]{47} alice@example$", timeout=10)
        vm.wait_for(r"^STRATO-USERDATA-END rc=0", timeout=20)
        assert re.search(r"^user-data on web-7 keys=2$", vm.console(), re.M)
        assert vm.wait_exit(timeout=30) == 0


def _corrupt_byte(disk: Path, offset: int) -> None:
    """Change one byte inside the guest-visible data of a qcow2 (qemu-io does the read-modify-write)."""
    subprocess.run(
        ["qemu-io", "-f", "qcow2", "-c", f"write -P 0x58 {offset} 1", str(disk)],
        check=True,
        capture_output=True,
    )


def test_integrity_workload_verifies_and_detects_corruption(tiny_image: Path, workdir: Path) -> None:
    disk = data_disk(workdir / "data.qcow2", 32)
    # The loop would write for ten minutes: a key pressed through VNC ends it; then the ACPI power button
    # (QEMU's system_powerdown, a graceful stop) powers the guest off.
    run = "integrity-write:vdb:64;integrity-loop:vdb:600;integrity-gens:vdb;integrity-verify:vdb"
    with boot_tiny(tiny_image, workdir, disks=[disk], run=run, name="writer", vnc=True, qmp=True) as vm:
        vm.wait_for(r"^STRATO-INTEGRITY WROTE 64 blocks bs 4096", timeout=90)
        vm.wait_for(r"^STRATO-INTEGRITY LOOP-START", timeout=60)
        time.sleep(2)  # some rewrites
        end_loop(vm.vnc_port(), vm.console)
        gens = parse_generations(vm.wait_for(r"^STRATO-INTEGRITY-GENS .*$", timeout=60).group(0))
        vm.wait_for(r"^STRATO-INTEGRITY OK 64 blocks$", timeout=60)
        vm.qmp("system_powerdown")
        vm.wait_for(r"STRATO-POWER-BUTTON$", timeout=60)
        assert vm.wait_exit(timeout=30) == 0
    assert max(gens.values()) >= 2, "the loop rewrote no block"

    report = verify_image(disk, expected_generations=gens)
    assert report.ok, report.summary()
    assert (report.block_size, report.count, report.generations) == (4096, 64, gens)

    _corrupt_byte(disk, 5 * 4096 + 1000)
    report = verify_image(disk)
    assert report.failures == [BlockFailure(5, f"checksum gen {gens[5]}")]

    with boot_tiny(tiny_image, workdir, disks=[disk], run="integrity-verify:vdb;poweroff", name="checker") as vm:
        vm.wait_for(r"^STRATO-INTEGRITY FAIL 1 of 64 blocks bad$", timeout=90)
        fails = re.findall(r"^STRATO-INTEGRITY FAIL block (\d+) (.*)$", vm.console(), re.M)
        assert fails == [("5", f"checksum gen {gens[5]}")]
        assert vm.wait_exit(timeout=30) == 0
