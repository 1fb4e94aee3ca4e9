"""Which accelerator really boots a guest on this machine: KVM when it works, TCG otherwise.

`/dev/kvm` opening is not enough: on some hosts (a paravirtual KVM flavour) QEMU starts under KVM but a
guest kernel hangs at boot. So the probe boots the tiny guest image under KVM (with `-snapshot`, the
image is never written) and answers "kvm" only if the guest prints its boot marker in time. The QEMU it
starts is always killed, and the answer can be cached in a file chosen by the caller.
"""

from __future__ import annotations

import os
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Literal

Accel = Literal["kvm", "tcg"]

QEMU = "qemu-system-x86_64"
BOOT_MARKER = b"STRATO-TINY-BOOTED"
KVM_DEVICE = Path("/dev/kvm")


def kvm_usable(device: Path = KVM_DEVICE) -> bool:
    """Whether this process can open the KVM device read-write (what QEMU needs for -accel kvm)."""
    try:
        fd = os.open(device, os.O_RDWR | os.O_CLOEXEC)
    except OSError:
        return False
    os.close(fd)
    return True


def boots_under_kvm(image: Path, timeout_s: float, qemu: str = QEMU) -> bool:
    """Boot `image` under KVM with a serial log; True if the boot marker shows up within `timeout_s`."""
    with tempfile.TemporaryDirectory(prefix="strato-accel-probe-") as tmp:
        serial = Path(tmp) / "serial.log"
        argv = [
            qemu, "-accel", "kvm", "-m", "128", "-smp", "1", "-nodefaults", "-display", "none",
            "-no-reboot", "-monitor", "none", "-serial", f"file:{serial}", "-snapshot",
            "-drive", f"file={image},if=virtio,format=qcow2",
        ]  # fmt: skip
        try:
            proc = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
            )
        except OSError:
            return False
        try:
            deadline = time.monotonic() + timeout_s
            while time.monotonic() < deadline:
                if serial.exists() and BOOT_MARKER in serial.read_bytes():
                    return True
                if proc.poll() is not None:
                    return serial.exists() and BOOT_MARKER in serial.read_bytes()
                time.sleep(0.1)
            return False
        finally:
            if proc.poll() is None:
                proc.kill()
            proc.wait(timeout=30)


def read_cache(cache: Path) -> Accel | None:
    try:
        value = cache.read_text().strip()
    except OSError:
        return None
    if value == "kvm":
        return "kvm"
    if value == "tcg":
        return "tcg"
    return None


def probe_accel(image: Path, timeout_s: float = 20, cache: Path | None = None) -> Accel:
    """ "kvm" if /dev/kvm is usable and the tiny guest at `image` boots under it, else "tcg".

    With `cache`, a previous answer stored there is returned without booting, and a new answer is
    stored there (written atomically)."""
    if cache is not None:
        cached = read_cache(cache)
        if cached is not None:
            return cached
    result: Accel = "kvm" if kvm_usable() and boots_under_kvm(Path(image), timeout_s) else "tcg"
    if cache is not None:
        cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache.with_name(cache.name + ".tmp")
        tmp.write_text(result + "\n")
        os.replace(tmp, cache)
    return result
