"""The import order of docs/layout.md holds (import-linter's contracts in pyproject.toml), and every job
kind still registers: registrations load modules by name, so a module moved without updating its name
there would silently disable its jobs."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

JOB_KINDS = {
    "account.delete",
    "account.disable",
    "domain.delete",
    "host.cancelmaintenance",
    "host.maintenance",
    "template.copy",
    "template.create",
    "template.delete",
    "template.download",
    "vm.deploy",
    "vm.destroy",
    "vm.expunge",
    "vm.import",
    "vm.iso.attach",
    "vm.iso.detach",
    "vm.reboot",
    "vm.scale",
    "vm.start",
    "vm.stop",
    "volume.attach",
    "volume.create",
    "volume.delete",
    "volume.detach",
    "volume.resize",
}


def test_import_contracts_are_kept() -> None:
    lint = Path(sys.executable).with_name("lint-imports")
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    run = subprocess.run(
        [str(lint), "--no-cache"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120, check=False
    )
    assert run.returncode == 0, run.stdout + run.stderr
    assert " 0 broken" in run.stdout, run.stdout


def test_every_job_kind_and_periodic_task_registers() -> None:
    from strato.engine import jobkinds, monitor, periodic
    from strato.server.registrations import load_registrations

    load_registrations()
    # Other tests register kinds of their own in the same process: only a missing kind is a failure.
    assert JOB_KINDS - set(jobkinds.KINDS) == set()
    assert {t.name for t in periodic.TASKS} >= {"expire-jobs", "expunge-destroyed-vms"}
    assert monitor.STATE_CONSUMERS
