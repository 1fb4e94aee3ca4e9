"""A move's progress as the API shows it: bytes done / total over the whole job, and per part.

A part is what one move copies: a disk's layers (a volume's chain, or only its frozen layers when its
top goes with a VM's migration), the migration stream (the RAM and the disks mirrored with it), or a
child move of a maintenance. Each part's total is fixed when the operation plans it (recorded in a step's
output, so a restarted job has the same parts), and its done only grows: an agent whose own figures fall
back (a mirror restarted in write-blocking mode starts again at 0, a mirror's total grows while the guest
writes) is read as a fraction of the part, never below what was shown. So the job's done, total and
percentage never go back, and the parts add up to them (`jobprogressparts` in the job's view); the
current phase, in words, is `jobprogressphase`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from sqlalchemy.orm import Session

from strato.db.models import VirtualMachine, Volume
from strato.engine.context import JobCancelled, JobContext
from strato.services.motion.chains import bytes_to_move, chain_rows
from strato.units import MIB

Part = dict[str, Any]
"""{"name", "total", and the ids naming it: "volumeid", "virtualmachineid"}; "done" added here."""


def vm_part(session: Session, vm: VirtualMachine, moves: list[tuple[str, str]]) -> Part:
    """A VM's move to another host: its RAM and the bytes of the disks (volume id, pool id) moving with it."""
    total = vm.memory_mib * MIB
    for volume_id, pool_id in moves:
        vol = session.get(Volume, volume_id)
        total += bytes_to_move(session, vol, pool_id) if vol is not None else 0
    return {"name": vm.name, "virtualmachineid": vm.id, "total": total}


def key_of(part: Part) -> str:
    return str(part.get("key") or part.get("volumeid") or part.get("virtualmachineid") or part.get("name"))


def disk_part(session: Session, vol: Volume, pool_id: str, frozen_only: bool = False) -> Part:
    """A volume's part of a move to `pool_id`: the bytes its chain copies (frozen_only: without its
    top layer, which then goes with the VM's migration stream)."""
    total = bytes_to_move(session, vol, pool_id)
    if frozen_only:
        rows = chain_rows(session, vol.top_layer_id)
        total -= rows[0].physical_size if rows else 0
    name = f"{vol.name}: frozen layers" if frozen_only else vol.name
    return {"name": name, "volumeid": vol.id, "total": max(total, 0)}


class MoveProgress:
    """The parts of one job's progress, reported into the job as they change."""

    def __init__(self, job: JobContext, parts: list[Part]) -> None:
        self.job = job
        self.parts = [dict(p, total=max(int(p.get("total", 0)), 1), done=0) for p in parts]
        self.phase: str | None = None
        prior = job.progress_detail()
        before = {key_of(p): int(p.get("done", 0)) for p in prior.get("parts") or [] if isinstance(p, dict)}
        for part in self.parts:
            part["done"] = min(before.get(key_of(part), 0), part["total"])
        self.phase = prior.get("phase")

    def _part(self, key: str) -> Part | None:
        """The part named `key`; None for one not planned (a job planned before parts were recorded)."""
        return next((p for p in self.parts if key_of(p) == key), None)

    def set_bytes(self, key: str, done: int) -> None:
        """The part has `done` of its own bytes (clamped to its total, never less than shown)."""
        part = self._part(key)
        if part is None:
            return
        value = max(part["done"], min(int(done), part["total"]))
        if value != part["done"]:
            part["done"] = value
            self.report()

    def set_fraction(self, key: str, done: int, total: int) -> None:
        """The part is done/total through (an agent's or a child job's own units)."""
        part = self._part(key)
        if part is not None:
            self.set_bytes(key, part["total"] * min(done, total) // total if total > 0 else 0)

    def complete(self, key: str) -> None:
        part = self._part(key)
        if part is not None:
            self.set_bytes(key, part["total"])

    def say(self, text: str) -> None:
        """What the job is doing now (a step, or the agent's own phase)."""
        if text != self.phase:
            self.phase = text
            self.report()

    def report(self) -> None:
        if not self.parts:  # a job planned before parts were recorded: still the point of cancel
            if self.job.cancel_requested():
                raise JobCancelled("The job was cancelled")
            return
        done = sum(p["done"] for p in self.parts)
        total = sum(p["total"] for p in self.parts)
        self.job.progress(done, total, {"parts": [dict(p) for p in self.parts], "phase": self.phase})


def child_report(tracker: MoveProgress, key: str, label: str) -> Callable[[int, int, dict[str, Any]], None]:
    """For wait_child: a child move's progress as the fraction of the parent's part `key`, its phase
    shown after `label` (e.g. "volume 2 of 5")."""

    def report(done: int, total: int, detail: dict[str, Any]) -> None:
        phase = detail.get("phase")
        tracker.say(f"{label}: {phase}" if phase else label)
        tracker.set_fraction(key, done, total)
        tracker.report()  # also when nothing changed: the parent's cancel is seen here

    return report
