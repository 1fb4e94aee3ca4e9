"""Which answer model each command returns, so both ends parse answers into the right type."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

from strato.protocol.messages import COMMANDS, Message

ANSWER_MODELS: dict[str, type[BaseModel]] = {name: model.answer_model for name, model in COMMANDS.items()}
"""Command `type` -> the model of its answer (for long-running commands: of the task's answer); read
from the commands' declarations."""

COMMAND_TYPES = frozenset(ANSWER_MODELS)


def answer_model(command_type: str) -> type[BaseModel]:
    """The answer model of a command type; KeyError for a command this protocol does not know."""
    return ANSWER_MODELS[command_type]


def parse_answer(command_type: str, data: Any) -> BaseModel:
    """Validate a JSON answer (already decoded) as the answer of `command_type`."""
    return answer_model(command_type).model_validate(data)


class HealthReport(Message):
    """What `GET /v1/health` answers: the agent is serving, and which protocol version it speaks."""

    ok: bool
    version: int
