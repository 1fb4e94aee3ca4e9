"""The agent's HTTP service: the versioned command endpoint, task polling and health, on Starlette.

Every request carries the host's bearer token. Typed failures come back as an `AgentError` body with
a status derived from its code, so the server never has to parse free text.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, Literal, cast

from pydantic import BaseModel, ValidationError
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import BaseRoute, Route, WebSocketRoute
from starlette.websockets import WebSocket

from strato.agent.agentlog import get_logger, setup_agent_logging
from strato.agent.auth import is_authorized
from strato.agent.dispatch import dispatch
from strato.agent.drivers.base import Driver, DriverError, check_driver
from strato.agent.drivers.layerexport import LayerExport, OpenedLayer
from strato.agent.errors import error_response
from strato.agent.network.base import HostNetwork
from strato.agent.tasks import TaskRegistry
from strato.agent.vncrelay import relay_console
from strato.protocol.answers import COMMAND_TYPES, HealthReport
from strato.protocol.messages import (
    PROTOCOL_VERSION,
    CommandEnvelope,
    ErrorCode,
    TaskStarted,
)

log = get_logger("service")

Handler = Callable[[Request], Awaitable[Response]]


class AgentState:
    """What one agent serves: its driver, its token and its long-running tasks."""

    def __init__(self, driver: Driver, token: str, name: str = "agent", network: HostNetwork | None = None) -> None:
        if not token:
            raise ValueError("the agent needs a non-empty token")
        check_driver(driver)  # a driver claiming what it cannot do never serves
        self.driver = driver
        self.network = network if network is not None else host_network_for(driver)
        self.token = token
        self.name = name
        self.tasks = TaskRegistry()

    async def startup(self) -> None:
        await self.driver.start()
        log.info("agent started", extra={"agent": self.name, "driver": type(self.driver).__name__})

    async def shutdown(self) -> None:
        """Cancel running tasks and close the driver; running VMs are left alone."""
        await self.tasks.close()
        await self.driver.close()
        log.info("agent stopped", extra={"agent": self.name})


def _json(model: BaseModel, status: int = 200) -> JSONResponse:
    return JSONResponse(model.model_dump(mode="json"), status_code=status)


def _guarded(state: AgentState, handler: Handler) -> Handler:
    """Check the token, then run the handler; any unexpected exception becomes a logged 500."""

    async def endpoint(request: Request) -> Response:
        if not is_authorized(request, state.token):
            return error_response(ErrorCode.UNAUTHORIZED, "missing or wrong bearer token")
        try:
            return await handler(request)
        except DriverError as exc:
            return error_response(exc.code, exc.message)
        except Exception as exc:
            log.exception("unexpected error", extra={"agent": state.name, "path": request.url.path})
            return error_response(ErrorCode.INTERNAL, f"internal error: {type(exc).__name__}: {exc}")

    return endpoint


def _describe_validation_error(exc: ValidationError, command_type: str | None) -> str:
    """Name each offending field by its dotted path, without pydantic's union-tag segment."""
    parts = []
    for err in exc.errors():
        loc = [str(p) for p in err["loc"]]
        if len(loc) >= 2 and loc[0] == "command" and loc[1] == command_type:
            del loc[1]
        parts.append(f"{'.'.join(loc) or '(body)'}: {err['msg']}")
    return "invalid command: " + "; ".join(parts)


def parse_envelope(raw: bytes) -> CommandEnvelope | Response:
    """Decode the body into an envelope, or return the specific 400 that explains why not."""
    try:
        data: Any = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        return error_response(ErrorCode.BAD_REQUEST, f"malformed JSON body: {exc}")
    if not isinstance(data, dict):
        return error_response(ErrorCode.BAD_REQUEST, "the body must be a JSON object (a command envelope)")
    version = data.get("version", PROTOCOL_VERSION)
    if isinstance(version, int) and version > PROTOCOL_VERSION:
        return error_response(
            ErrorCode.BAD_REQUEST,
            f"protocol version {version} is newer than this agent's ({PROTOCOL_VERSION}); upgrade the agent",
        )
    command = data.get("command")
    command_type = command.get("type") if isinstance(command, dict) else None
    if isinstance(command_type, str) and command_type not in COMMAND_TYPES:
        known = ", ".join(sorted(COMMAND_TYPES))
        return error_response(
            ErrorCode.UNKNOWN_COMMAND, f"unknown command type {command_type!r}; this agent knows: {known}"
        )
    try:
        return CommandEnvelope.model_validate(data)
    except ValidationError as exc:
        tag = command_type if isinstance(command_type, str) else None
        return error_response(ErrorCode.BAD_REQUEST, _describe_validation_error(exc, tag))


def agent_routes(state: AgentState) -> list[BaseRoute]:
    """The versioned endpoints of one agent, reusable under a prefix (see strato.agent.multi)."""

    async def command(request: Request) -> Response:
        parsed = parse_envelope(await request.body())
        if isinstance(parsed, Response):
            return parsed
        cmd = parsed.command
        if cmd.declared.long_running:
            task_id = state.tasks.start(
                cmd.type, lambda progress: dispatch(state.driver, cmd, progress, network=state.network)
            )
            return _json(TaskStarted(task_id=task_id), status=202)
        started = time.monotonic()
        try:
            answer = await dispatch(state.driver, cmd, network=state.network)
        except DriverError as exc:
            log.info(
                "command failed",
                extra={
                    "agent": state.name,
                    "command": cmd.type,
                    "code": exc.code.value,
                    "error": exc.message,
                },
            )
            raise
        log.debug(
            "command done",
            extra={
                "agent": state.name,
                "command": cmd.type,
                "ms": round((time.monotonic() - started) * 1000),
            },
        )
        return _json(answer)

    async def get_task(request: Request) -> Response:
        task_id = request.path_params["task_id"]
        report = state.tasks.get(task_id)
        if report is None:
            return error_response(ErrorCode.NOT_FOUND, f"no task {task_id!r} (unknown or forgotten)")
        return _json(report)

    async def cancel_task(request: Request) -> Response:
        task_id = request.path_params["task_id"]
        report = await state.tasks.cancel(task_id)
        if report is None:
            return error_response(ErrorCode.NOT_FOUND, f"no task {task_id!r} (unknown or forgotten)")
        return _json(report)

    async def health(request: Request) -> Response:
        return _json(HealthReport(ok=True, version=PROTOCOL_VERSION))

    async def get_layer(request: Request) -> Response:
        """The bytes of one layer file of an attached pool, for another agent's pull_layer."""
        pool_id, name = request.query_params.get("pool"), request.query_params.get("name")
        if not pool_id or not name:
            return error_response(ErrorCode.BAD_REQUEST, "pool and name query parameters are required")
        if not isinstance(state.driver, LayerExport):
            return error_response(ErrorCode.BAD_REQUEST, "this agent's driver does not serve layer files")
        opened = await state.driver.open_layer(pool_id, name, request.query_params.get("path"))
        log.info("serving layer", extra={"agent": state.name, "pool": pool_id, "layer": name, "bytes": opened.size})
        return StreamingResponse(
            _file_chunks(opened),
            media_type="application/octet-stream",
            headers={"Content-Length": str(opened.size)},
        )

    async def console(websocket: WebSocket) -> None:
        await relay_console(websocket, state.driver, state.token)

    return [
        WebSocketRoute("/v1/console", console),
        Route("/v1/command", _guarded(state, command), methods=["POST"]),
        Route("/v1/tasks/{task_id}", _guarded(state, get_task), methods=["GET"]),
        Route("/v1/tasks/{task_id}", _guarded(state, cancel_task), methods=["DELETE"]),
        Route("/v1/health", _guarded(state, health), methods=["GET"]),
        Route("/v1/layers", _guarded(state, get_layer), methods=["GET"]),
    ]


LAYER_CHUNK = 1024 * 1024


async def _file_chunks(opened: OpenedLayer) -> AsyncIterator[bytes]:
    """Read the opened file in a thread, chunk by chunk, up to the size it had when opened; closed at
    the end or when the client goes away."""
    fd = opened.file.fileno()
    try:
        offset = 0
        while offset < opened.size:
            chunk = await asyncio.to_thread(os.pread, fd, min(LAYER_CHUNK, opened.size - offset), offset)
            if not chunk:
                break
            offset += len(chunk)
            yield chunk
    finally:
        opened.file.close()


def create_agent_app(driver: Driver, token: str) -> Starlette:
    """One agent as an ASGI app: starts the driver on startup and closes it (VMs untouched) on shutdown."""
    state = AgentState(driver, token)

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await state.startup()
        try:
            yield
        finally:
            await state.shutdown()

    app = Starlette(routes=agent_routes(state), lifespan=lifespan)
    app.state.agent = state
    return app


def host_network_for(driver: Driver) -> HostNetwork:
    """A simulated host's networking stays in memory; a real driver's is the kernel's, its state kept
    beside the driver's data."""
    from strato.agent.drivers.roles import SimulatorControl

    if isinstance(driver, SimulatorControl):
        from strato.agent.network.simulated import SimulatedNetwork

        return SimulatedNetwork()
    from strato.agent.network.linux import LinuxNetwork

    return LinuxNetwork(Path(getattr(driver, "data_dir", ".")))


def parse_listen(listen: str) -> tuple[str, int]:
    """Split "HOST:PORT" (or "[v6]:PORT") into its parts."""
    host, sep, port = listen.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise ValueError(f"--listen must be HOST:PORT, got {listen!r}")
    return host.strip("[]"), int(port)


def make_driver(driver_name: str, data_dir: Path, accel: str = "auto") -> Driver:
    """Build the named driver; the QEMU driver is imported only when asked for."""
    if driver_name == "simulator":
        from strato.agent.drivers.simulator import SimulatorDriver

        return SimulatorDriver(data_dir)
    if driver_name == "qemu":
        from strato.agent.drivers.qemu.driver import QemuDriver

        if accel not in ("auto", "kvm", "tcg"):
            raise ValueError(f"unknown accel {accel!r}: expected auto, kvm or tcg")
        return QemuDriver(data_dir, accel=cast(Literal["auto", "kvm", "tcg"], accel))
    raise ValueError(f"unknown driver {driver_name!r}: expected 'qemu' or 'simulator'")


def serve(app: Starlette, listen: str) -> None:
    """Serve an ASGI app with uvicorn until SIGINT/SIGTERM, keeping our JSON logging."""
    import uvicorn

    host, port = parse_listen(listen)
    uvicorn.run(app, host=host, port=port, log_config=None, access_log=False, lifespan="on")


def run_agent(data_dir: Path, listen: str, driver_name: str, token: str, accel: str = "auto") -> None:
    """Run one agent in the foreground (what `strato agent` does)."""
    data_dir = Path(data_dir)
    setup_agent_logging(data_dir)
    driver = make_driver(driver_name, data_dir, accel)
    log.info("agent listening", extra={"listen": listen, "driver": driver_name, "data_dir": str(data_dir)})
    serve(create_agent_app(driver, token), listen)
