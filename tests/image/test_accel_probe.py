"""The KVM probe of `strato up --accel auto`: its answer must match what really happens when the tiny guest
boots under KVM on this machine, it never writes the image, never leaves QEMU behind, and caches."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from strato.image import accel_probe
from strato.image.accel_probe import BOOT_MARKER, kvm_usable, probe_accel, read_cache

PROBE_TIMEOUT = 12.0  # a guest that boots under working KVM does so in ~1-2 s (8-10 s under TCG)


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def qemu_pids_using(path: Path) -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if b"qemu-system" in cmdline and str(path).encode() in cmdline:
            pids.append(int(entry.name))
    return pids


def independent_kvm_boot(image: Path, workdir: Path, timeout: float) -> bool:
    """Boots the image under KVM the way a user would (own overlay, own serial file); marker seen?"""
    overlay = workdir / "check-overlay.qcow2"
    serial = workdir / "check-serial.log"
    subprocess.run(
        ["qemu-img", "create", "-q", "-f", "qcow2", "-b", str(image), "-F", "qcow2", str(overlay)], check=True
    )
    argv = [
        "qemu-system-x86_64", "-enable-kvm", "-m", "128", "-nodefaults", "-display", "none",
        "-no-reboot", "-monitor", "none", "-serial", f"file:{serial}",
        "-drive", f"file={overlay},if=virtio,format=qcow2",
    ]  # fmt: skip
    proc = subprocess.Popen(
        argv,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and proc.poll() is None:
            if serial.exists() and BOOT_MARKER in serial.read_bytes():
                return True
            time.sleep(0.1)
        return serial.exists() and BOOT_MARKER in serial.read_bytes()
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=30)
        overlay.unlink(missing_ok=True)


def test_probe_matches_a_real_boot_under_kvm(tiny_image: Path, tmp_path: Path) -> None:
    # Our own copy: tests running in parallel may boot the shared image, and would count as survivors.
    tiny_image = Path(shutil.copyfile(tiny_image, tmp_path / "tiny.qcow2"))
    before = sha256(tiny_image)
    cache = tmp_path / "accel"
    started = time.monotonic()
    result = probe_accel(tiny_image, timeout_s=PROBE_TIMEOUT, cache=cache)
    took = time.monotonic() - started
    assert result in ("kvm", "tcg")
    assert read_cache(cache) == result
    # The image is untouched (-snapshot), and no QEMU of the probe survives it.
    assert sha256(tiny_image) == before
    assert qemu_pids_using(tiny_image) == []
    assert took < PROBE_TIMEOUT + 10

    if not kvm_usable():
        assert result == "tcg"
        return
    # /dev/kvm opens here: the answer must be what a boot under KVM really does.
    booted = independent_kvm_boot(tiny_image, tmp_path, PROBE_TIMEOUT)
    assert result == ("kvm" if booted else "tcg"), f"probe said {result}, a real KVM boot showed marker: {booted}"


def test_cached_answer_is_reused_without_booting(tiny_image: Path, tmp_path: Path) -> None:
    cache = tmp_path / "sub" / "accel"
    cache.parent.mkdir()
    cache.write_text("kvm\n")
    started = time.monotonic()
    assert probe_accel(tiny_image, timeout_s=PROBE_TIMEOUT, cache=cache) == "kvm"
    assert time.monotonic() - started < 1.0
    cache.write_text("tcg")
    assert probe_accel(tiny_image, cache=cache) == "tcg"


def test_garbage_cache_is_probed_again(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cache = tmp_path / "accel"
    cache.write_text("warp-drive")
    assert read_cache(cache) is None
    monkeypatch.setattr(accel_probe, "kvm_usable", lambda device=accel_probe.KVM_DEVICE: False)
    assert probe_accel(tmp_path / "no-image.qcow2", cache=cache) == "tcg"
    assert cache.read_text().strip() == "tcg"


def test_unusable_kvm_device_means_tcg_without_booting(tmp_path: Path) -> None:
    assert kvm_usable(tmp_path / "no-such-kvm") is False
    if not os.path.exists("/dev/kvm"):
        started = time.monotonic()
        assert probe_accel(tmp_path / "no-image.qcow2") == "tcg"
        assert time.monotonic() - started < 1.0


def test_a_guest_that_cannot_boot_is_not_kvm(tmp_path: Path) -> None:
    """A missing image (QEMU exits at once) or a missing QEMU binary: no marker, so not KVM."""
    assert accel_probe.boots_under_kvm(tmp_path / "missing.qcow2", timeout_s=10) is False
    assert accel_probe.boots_under_kvm(tmp_path / "missing.qcow2", 5, qemu=str(tmp_path / "no-qemu")) is False
