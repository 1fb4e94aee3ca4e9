"""How an agent command is declared: once, on its model, with everything both ends need to know.

A command is a pydantic model that subclasses `AgentCommand[Answer]` and sets `declared`; defining the
class registers it. The server's client (timeouts, answer parsing, long-running or not), the agent's
dispatch (which driver role and method serve it) and the simulator (which commands it can delay or
fail) all read the registry, so a new command is its model here plus the drivers' methods.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Any, ClassVar, Generic, TypeVar

from pydantic import BaseModel, ConfigDict


class Message(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Role(StrEnum):
    """The parts of the driver contract; a driver serves a command only if it has the command's role."""

    LIFECYCLE = "lifecycle"
    LAYERS = "layers"
    BLOCK_JOBS = "block_jobs"
    MIGRATION_SOURCE = "migration_source"
    MIGRATION_TARGET = "migration_target"
    SNAPSHOTS = "snapshots"
    NETWORK = "network"
    """Served by the agent's host networking (strato.agent.network), not by the hypervisor driver."""
    SIMULATOR = "simulator"


@dataclass(frozen=True)
class Declared:
    """What is declared about one command besides its fields.

    `method` is the name of the role's method that serves it; the agent passes it the command's fields
    named by that method's parameters (and a progress callback for a long-running command).
    `timeout_s` is None for a command the agent answers at once (the caller's client timeout applies),
    or how long the agent may legitimately take to answer (the client waits at least that long).
    A long-running command is started as an agent task the client polls, reporting progress; it can
    be cancelled."""

    role: Role
    method: str
    timeout_s: float | None = None
    long_running: bool = False


A = TypeVar("A", bound=BaseModel)

_REGISTRY: dict[str, type[AgentCommand[Any]]] = {}


class AgentCommand(Message, Generic[A]):
    """Base of every command; `A` is the model of its answer (of its task's answer when long-running)."""

    declared: ClassVar[Declared]
    answer_model: ClassVar[type[BaseModel]]
    type: str
    """The command's name on the wire: each command narrows it to a Literal with a default."""

    @classmethod
    def __pydantic_init_subclass__(cls, **kwargs: Any) -> None:
        super().__pydantic_init_subclass__(**kwargs)
        if "declared" not in cls.__dict__:
            return  # AgentCommand[X] itself, made by parametrizing the generic
        command_type = cls.model_fields["type"].default
        if not isinstance(command_type, str):
            raise TypeError(f"{cls.__name__} needs a `type` literal with a default")
        if command_type in _REGISTRY:
            raise TypeError(f"command type {command_type!r} is declared twice")
        cls.answer_model = _answer_of(cls)
        _REGISTRY[command_type] = cls

    def answer_within(self) -> float | None:
        """How long the agent may take to answer this command (see `Declared.timeout_s`)."""
        return self.declared.timeout_s


def _answer_of(cls: type) -> type[BaseModel]:
    """The `A` of the `AgentCommand[A]` that `cls` derives from."""
    for klass in cls.__mro__:
        meta = getattr(klass, "__pydantic_generic_metadata__", None)
        if meta and meta.get("origin") is AgentCommand and meta.get("args"):
            answer = meta["args"][0]
            if isinstance(answer, type) and issubclass(answer, BaseModel):
                return answer
    raise TypeError(f"{cls.__name__} must derive from AgentCommand[<answer model>]")


def declared_commands() -> dict[str, type[AgentCommand[Any]]]:
    """Command type -> its model, in declaration order (a copy)."""
    return dict(_REGISTRY)
