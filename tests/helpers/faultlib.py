"""The step-fault harness: run an operation once to learn its steps, then again with the worker stopped
after each step in turn (the server's STRATO_FAULT_FILE), and check the three promises each time:

1. the job ended (success, or an error with a clear text);
2. no VM, volume, template or layer is left in a transitional state;
3. no file is left on any pool that the database does not know (and every layer the database holds as
   Ready has its file), so nothing the user had is lost.

A server for these tests is started with `fault_server_env(path)` in its environment. Pools are checked
on disk for the QEMU driver (directories) and in the simulator's state file for simulated hosts.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cs import CloudStack

from helpers.serverproc import ServerProcess, wait_job

FAULT_FILE_ENV = "STRATO_FAULT_FILE"
VM_TRANSITIONAL = ("Starting", "Stopping", "Migrating", "Expunging", "Creating")
VOLUME_TRANSITIONAL = ("Creating", "Migrating", "Snapshotting", "Resizing")
TEMPLATE_TRANSITIONAL = ("Creating", "Deleting", "Copying")
SNAPSHOT_TRANSITIONAL = ("Allocated", "Creating", "BackingUp")
# Files an agent keeps beside the layers, not layers themselves.
NOT_LAYERS = (".strato-pool", ".partial", ".tmp", ".removing", "lost+found")
"""Marks of files that are not layers: a pool's marker, partial copies, files the agent is unlinking."""


def fault_server_env(fault_file: Path) -> dict[str, str]:
    fault_file.write_text("")
    return {FAULT_FILE_ENV: str(fault_file)}


def steps_of(server: ServerProcess, job_id: str) -> list[dict[str, Any]]:
    rows = server.sql("SELECT steps FROM jobs WHERE id = ?", job_id)
    raw = rows[0][0] if rows else None
    return list(json.loads(raw) if isinstance(raw, str) else (raw or []))


def done_steps(server: ServerProcess, job_id: str) -> list[str]:
    return [e["name"] for e in steps_of(server, job_id) if e["state"] == "done"]


def transitional(server: ServerProcess) -> list[tuple[str, str, str]]:
    """(table, name, state) of everything still in a state only a running job may hold."""
    out: list[tuple[str, str, str]] = []
    for table, states in (
        ("virtual_machines", VM_TRANSITIONAL),
        ("volumes", VOLUME_TRANSITIONAL),
        ("templates", TEMPLATE_TRANSITIONAL),
        ("snapshots", SNAPSHOT_TRANSITIONAL),
    ):
        marks = ",".join("?" for _ in states)
        for name, state in server.sql(
            f"SELECT name, state FROM {table} WHERE removed IS NULL AND state IN ({marks})", *states
        ):
            out.append((table, str(name), str(state)))
    for path, state in server.sql("SELECT path, state FROM layers WHERE removed IS NULL AND state = 'Creating'"):
        out.append(("layers", str(path), str(state)))
    return out


def known_layers(server: ServerProcess, ready_only: bool = False) -> set[tuple[str, str]]:
    """(pool or image store id, path) of every layer, template copy and volume snapshot the database holds
    (not removed; a snapshot in Error has no file)."""
    q = "SELECT pool_id, path FROM layers WHERE removed IS NULL"
    copies = "SELECT store_id, path FROM template_store_copies WHERE removed IS NULL"
    snaps = "SELECT store_id, path FROM snapshots WHERE removed IS NULL AND path IS NOT NULL AND state != 'Error'"
    if ready_only:
        q += " AND state = 'Ready'"
        copies += " AND state = 'Ready'"
        snaps += " AND state = 'BackedUp'"
    rows = [*server.sql(q), *server.sql(copies), *server.sql(snaps)]
    return {(str(p), str(path)) for p, path in rows}


def files_in_pools(pools: dict[str, Path]) -> set[tuple[str, str]]:
    """(pool id, relative path) of every file in the given pool directories."""
    out: set[tuple[str, str]] = set()
    for pool_id, root in pools.items():
        if not root.exists():
            continue
        for f in root.rglob("*"):
            if f.is_file() and not any(mark in f.name for mark in NOT_LAYERS):
                out.add((pool_id, str(f.relative_to(root))))
    return out


def simulated_layers(agent_dirs: Iterable[Path], local_pool_id: str | None = None) -> set[tuple[str, str]]:
    """(pool id, path) of every layer record in simulator agents' state files. A simulated host's own
    local pool is called "local" inside the agent: `local_pool_id` is the server's id for it."""
    out: set[tuple[str, str]] = set()
    for d in agent_dirs:
        for path in (d / "simulator-state.json", *d.glob("*shared*.json")):
            if not path.exists():
                continue
            data = json.loads(path.read_text())
            storage = data.get("storage", data)
            for pool, layers in (storage.get("layers") or {}).items():
                pool_id = local_pool_id if pool == "local" and local_pool_id else pool
                out.update((str(pool_id), str(name)) for name in layers)
    return out


@dataclass
class Promises:
    """What a step-fault run found; `broken()` lists what went wrong, empty when all promises held."""

    step: str
    job: dict[str, Any]
    transitional: list[tuple[str, str, str]]
    stray_files: set[tuple[str, str]] = field(default_factory=set)
    missing_files: set[tuple[str, str]] = field(default_factory=set)

    def broken(self) -> list[str]:
        out = []
        if self.job.get("jobstatus") not in (1, 2):
            out.append(f"job did not end: {self.job}")
        if self.job.get("jobstatus") == 2 and not self.job.get("jobresult", {}).get("errortext"):
            out.append(f"job failed without a text: {self.job}")
        if self.transitional:
            out.append(f"left transitional: {self.transitional}")
        if self.stray_files:
            out.append(f"files the database does not know: {sorted(self.stray_files)}")
        if self.missing_files:
            out.append(f"layers without their file: {sorted(self.missing_files)}")
        return out


def check_promises(
    server: ServerProcess,
    api: CloudStack,
    job_id: str,
    step: str,
    files: Callable[[], set[tuple[str, str]]],
    timeout: float = 60.0,
) -> Promises:
    """Waits for the job to end, then checks the database against the files `files()` reports."""
    job = wait_job(api, job_id, timeout=timeout)
    # Compensation and recovery run before the job ends; give a failed job's on_fail its commit.
    time.sleep(0.1)
    on_disk = files()
    known = known_layers(server)
    return Promises(
        step=step,
        job=job,
        transitional=transitional(server),
        stray_files=on_disk - known,
        missing_files=known_layers(server, ready_only=True) - on_disk,
    )


def arm(fault_file: Path, kind: str, step: str) -> None:
    """The next time a job of `kind` passes `step`, its worker stops there (then recovery runs)."""
    fault_file.write_text(f"{kind} {step}")


def run_fault_matrix(
    server: ServerProcess,
    api: CloudStack,
    fault_file: Path,
    kind: str,
    start: Callable[[], str],
    files: Callable[[], set[tuple[str, str]]],
    after_each: Callable[[str, Promises], None] | None = None,
    skip: Iterable[str] = (),
) -> list[str]:
    """Runs the operation once cleanly to learn its steps, then once per step with a fault after it.
    Returns the step names; raises AssertionError naming every step whose promises broke."""
    clean_job = start()
    clean = check_promises(server, api, clean_job, "(no fault)", files)
    assert clean.job["jobstatus"] == 1, f"the operation fails without a fault: {clean.job}"
    assert not clean.broken(), clean.broken()
    names = [n for n in done_steps(server, clean_job) if n not in set(skip)]
    assert names, "the operation recorded no steps"
    if after_each is not None:
        after_each("(no fault)", clean)
    failures: list[str] = []
    for name in names:
        arm(fault_file, kind, name)
        job_id = start()
        found = check_promises(server, api, job_id, name, files)
        if fault_file.read_text().strip():
            failures.append(f"after {name!r}: the fault did not fire (steps: {done_steps(server, job_id)})")
        failures.extend(f"after {name!r}: {b}" for b in found.broken())
        if after_each is not None:
            try:
                after_each(name, found)
            except AssertionError as exc:
                failures.append(f"after {name!r}: {exc}")
    fault_file.write_text("")
    assert not failures, "\n".join(failures)
    return names


def kill_qemus_under(base: Path) -> list[int]:
    """SIGKILLs the QEMU processes whose command line names `base` (those a test started); their pids."""
    import contextlib
    import os
    import signal

    killed = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if "qemu-system" in cmdline and str(base) in cmdline:
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(entry.name), signal.SIGKILL)
            killed.append(int(entry.name))
    return killed
