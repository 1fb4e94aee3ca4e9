"""Asking an agent where a live move ended, for the undo of a live step (also after a server restart).

The agent task of a live move (MirrorDisk, MigrateVm) outlives the server that started it. Before an
undo removes anything, it stops that task with CancelBlockJob / CancelMigration, which answer where the
disk or VM is: the undo then removes the target copies only if the source still holds it, and otherwise
the operation finishes forward. An agent that is restarting is waited for a while: guessing could
remove the layer a VM uses."""

from __future__ import annotations

import time
from typing import TypeVar

from pydantic import BaseModel

from strato.protocol.client import AgentClient, AgentUnreachable
from strato.protocol.declare import AgentCommand
from strato.services.core.agents import agent_errors

A = TypeVar("A", bound=BaseModel)

AGENT_WAIT_S = 90.0
"""How long an undo waits for an unreachable agent (a restart) before giving up."""
RETRY_S = 1.0


def ask(client: AgentClient, host_name: str, command: AgentCommand[A], wait_s: float = AGENT_WAIT_S) -> A:
    """The agent's answer to `command`, retried while the agent cannot be reached (CloudError after)."""
    deadline = time.monotonic() + wait_s
    with agent_errors(host_name):
        while True:
            try:
                return client.call(command)
            except AgentUnreachable:
                if time.monotonic() >= deadline:
                    raise
                time.sleep(RETRY_S)
