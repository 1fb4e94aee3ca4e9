"""Asking an agent where a live move ended, for the undo of a live step (also after a server restart).

The agent task of a live move (MirrorDisk, MigrateVm) outlives the server that started it. Before an
undo removes anything, it stops that task with CancelBlockJob / CancelMigration, which answer where the
disk or VM is: the undo then removes the target copies only if the source still holds it, and otherwise
the operation finishes forward. An agent that is restarting is waited for a while: guessing could
remove the layer a VM uses."""

from __future__ import annotations

from strato.services.core.agents import ask_until_reachable as ask

__all__ = ["ask"]
