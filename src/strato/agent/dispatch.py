"""Turns one typed command into the call its declaration names and returns its typed answer.

Nothing here lists commands: each command's declaration (strato.protocol.declare) names the driver
role and method that serve it, and the method's parameters name the command's fields to pass."""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, cast

from pydantic import BaseModel

from strato.agent.drivers.base import Driver, DriverError, ProgressFn
from strato.agent.drivers.roles import ROLES, SimulatorControl
from strato.agent.network.base import HostNetwork
from strato.protocol.messages import COMMANDS, Ack, AgentCommand, Command, ErrorCode, Role, StateReport


@dataclass(frozen=True)
class Served:
    """How the agent serves one declared command."""

    role: type[Any]
    method: str
    fields: tuple[str, ...]
    """The command's fields passed to the method, in the order of its parameters."""
    long_running: bool
    answer: type[BaseModel]


SERVING_ROLES: dict[Role, type[Any]] = {**ROLES, Role.NETWORK: HostNetwork}
"""The drivers' roles, and host networking, which the agent serves beside its driver."""


def _served(model: type[AgentCommand[Any]]) -> Served:
    """Check a declaration against its role's method and say how to call it (TypeError if it does not fit)."""
    declared = model.declared
    role = SERVING_ROLES[declared.role]
    function = getattr(role, declared.method, None)
    if function is None or not inspect.iscoroutinefunction(function):
        raise TypeError(f"{model.__name__}: role {role.__name__} has no async method {declared.method!r}")
    params = [p for p in inspect.signature(function).parameters.values() if p.name != "self"]
    if declared.long_running:
        if not params or params[-1].name != "progress":
            raise TypeError(f"{model.__name__} is long-running: {declared.method} must end with `progress`")
        params = params[:-1]
    fields = tuple(p.name for p in params)
    missing = [name for name in fields if name not in model.model_fields]
    if missing:
        raise TypeError(f"{model.__name__} has no field for {declared.method}'s parameters {missing}")
    return Served(role, declared.method, fields, declared.long_running, model.answer_model)


SERVED: dict[str, Served] = {name: _served(model) for name, model in COMMANDS.items()}
"""Command type -> how it is served, checked when the agent imports this module."""


def _no_progress(done: int, total: int) -> None:
    """Progress sink for a long command run synchronously."""


def driver_name(driver: Driver) -> str:
    return type(driver).__name__.removesuffix("Driver").lower() or type(driver).__name__


async def dispatch(
    driver: Driver, command: Command, progress: ProgressFn = _no_progress, network: HostNetwork | None = None
) -> BaseModel:
    """Run `command` on `driver` (a network command on `network`); DriverError propagates for the
    caller to map to a status."""
    served = SERVED.get(command.type)
    if served is None:
        raise DriverError(ErrorCode.UNKNOWN_COMMAND, f"no handler for command {command.type!r}")
    if served.role is HostNetwork:
        if network is None:
            raise DriverError(ErrorCode.BAD_REQUEST, f"this agent serves no host networking ({command.type})")
        if isinstance(driver, SimulatorControl):
            await driver.before_command(command.type, served.long_running)
        return await _call(network, served, command, progress)
    if not isinstance(driver, served.role):
        raise DriverError(
            ErrorCode.BAD_REQUEST,
            f"the {driver_name(driver)} driver does not support {command.type} (it has no {served.role.__name__} role)",
        )
    if isinstance(driver, SimulatorControl) and served.role is not SimulatorControl:
        await driver.before_command(command.type, served.long_running)
    answer = await _call(driver, served, command, progress)
    if isinstance(answer, StateReport) and network is not None:
        # The host's ground truth covers its networking too (the driver knows nothing of it).
        answer.networks = await network.carried()
        answer.firewall = await network.firewall_state()
    return answer


async def _call(target: object, served: Served, command: Command, progress: ProgressFn) -> BaseModel:
    method = cast(Callable[..., Awaitable[object]], getattr(target, served.method))
    args: list[object] = [getattr(command, name) for name in served.fields]
    if served.long_running:
        args.append(progress)
    result = await method(*args)
    if result is None and served.answer is Ack:
        return Ack()
    if not isinstance(result, served.answer):
        raise DriverError(
            ErrorCode.INTERNAL,
            f"{type(target).__name__}.{served.method} answered {type(result).__name__}, not {served.answer.__name__}",
        )
    return result
