"""Which answer model each command returns, so both ends parse answers into the right type."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

from strato.protocol.messages import (
    Ack,
    ConsoleLog,
    HostInfo,
    LayerInfo,
    Message,
    PoolReport,
    StateReport,
    VmReport,
    VmStats,
)

ANSWER_MODELS: dict[str, type[BaseModel]] = {
    "get_host_info": HostInfo,
    "get_state": StateReport,
    "attach_pool": PoolReport,
    "create_layer": LayerInfo,
    "get_layer_info": LayerInfo,
    "copy_layer": LayerInfo,
    "rebase_layer": LayerInfo,
    "remove_layer": Ack,
    "start_vm": VmReport,
    "stop_vm": VmReport,
    "reboot_vm": VmReport,
    "get_vm": VmReport,
    "get_vm_stats": VmStats,
    "configure_simulator": Ack,
    "fetch_image": LayerInfo,
    "convert_layer": LayerInfo,
    "resize_layer": LayerInfo,
    "attach_disk": VmReport,
    "detach_disk": VmReport,
    "change_cdrom": VmReport,
    "build_config_drive": LayerInfo,
    "remove_vm": Ack,
    "get_console_log": ConsoleLog,
}
"""Command `type` -> the model of its answer (for long-running commands: of the task's answer)."""

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
