"""The serial reader hands over whole lines only, so a `$`-anchored wait never sees a half-written line."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from tinyvm import TinyVM


def _writer_vm(tmp_path: Path) -> TinyVM:
    """A stand-in 'QEMU' (a process that waits on stdin) and its console file."""
    proc = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE)
    return TinyVM(proc, tmp_path / "serial.log", tmp_path / "qemu.err")


def test_partial_line_is_held_back_until_its_newline(tmp_path: Path) -> None:
    vm = _writer_vm(tmp_path)
    try:
        vm.stderr.write_text("")
        vm.serial.write_text("STRATO-TINY-BOOTED\nSTRATO-INTEGRITY-GENS 1:3 2:")
        assert vm.console() == "STRATO-TINY-BOOTED\n"
        with pytest.raises(AssertionError, match="timeout"):
            vm.wait_for(r"^STRATO-INTEGRITY-GENS .*$", timeout=0.3)
        with vm.serial.open("a") as f:
            f.write("4\n")
        assert vm.wait_for(r"^STRATO-INTEGRITY-GENS .*$", timeout=5).group(0) == "STRATO-INTEGRITY-GENS 1:3 2:4"
    finally:
        assert vm.proc.stdin is not None
        vm.proc.stdin.close()
        vm.proc.wait(timeout=10)


def test_after_exit_the_last_line_counts_without_newline(tmp_path: Path) -> None:
    vm = _writer_vm(tmp_path)
    vm.serial.write_text("STRATO-DONE\nreboot: Power down")
    assert vm.proc.stdin is not None
    vm.proc.stdin.close()
    vm.proc.wait(timeout=10)
    assert vm.console().endswith("reboot: Power down")
