"""The Starlette application of the management server and its start-up sequence."""

from __future__ import annotations

import contextlib
import gc
import json
import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

import orjson
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request as HttpRequest
from starlette.responses import PlainTextResponse, RedirectResponse, Response
from starlette.routing import Mount, Route, WebSocketRoute
from starlette.staticfiles import StaticFiles
from starlette.websockets import WebSocket

from strato.api.dispatch import Dispatcher, Reply, Request
from strato.db import migrate
from strato.db.engine import Database
from strato.engine.monitor import HostMonitor
from strato.engine.periodic import PeriodicRunner
from strato.engine.runner import JobRunner
from strato.server import sqlcount
from strato.server.config import ServerConfig
from strato.server.console import console_websocket
from strato.server.metrics import render_metrics
from strato.server.registrations import load_registrations
from strato.services.compute import console
from strato.services.core import agents, settings
from strato.services.identity import identity

log = logging.getLogger("strato.server")

UI_DIR = Path(__file__).resolve().parent / "ui"

MAX_BODY = 1024 * 1024
# A GET's query string above this is refused with CloudStack's envelope. uvicorn's own limit on an
# incomplete HTTP event (the request line and headers) is set above it in run.py, so the app sees such a
# request instead of h11 answering a plain-text 400 or dropping the connection.
MAX_QUERY = 64 * 1024


def _too_large(what: str, limit: int) -> Reply:
    return Reply(
        431,
        {
            "errorresponse": {
                "errorcode": 431,
                "cserrorcode": 9999,
                "uuidList": [],
                "errortext": f"{what} larger than {limit} bytes",
            }
        },
    )


JSON_TYPE = "application/json; charset=UTF-8"


class ServerState:
    """What lives as long as the process: the database, the job runner, the dispatcher."""

    def __init__(self, config: ServerConfig) -> None:
        load_registrations()
        self.config = config
        self.db = Database(config.db_url)
        self.count_sql = sqlcount.enabled()
        if self.count_sql:
            sqlcount.install(self.db.engine)
        self.runner = JobRunner(
            self.db,
            config.node_id,
            workers=config.job_workers,
            poll_interval=config.job_poll_interval,
            heartbeat_interval=config.heartbeat_interval,
            dead_after=config.dead_after,
        )
        self.dispatcher = Dispatcher(self.db, self.runner.notify)
        self.periodic = PeriodicRunner(self.db, config.node_id, dead_after=config.dead_after)
        self.monitor = HostMonitor(
            self.db,
            config.node_id,
            agents.client_for,
            self._ping_interval,
            self._alert_after,
            dead_after=config.dead_after,
        )

    def _setting(self, name: str) -> float:
        with self.db.session() as s:
            return float(settings.get(s, name))

    def _ping_interval(self) -> float:
        return self._setting("ping.interval")

    def _alert_after(self) -> float:
        return self._setting("ping.interval") * self._setting("ping.timeout")

    def start(self) -> None:
        migrate.upgrade(self.db.engine)
        with self.db.session() as s:
            if identity.bootstrap(s, self.config.admin_password):
                log.info("first start: created the ROOT domain and the admin account")
            settings.bootstrap_capabilities(s)
        # What start-up made (models, compiled queries, registrations) lives as long as the process:
        # out of the collector's view, so that a collection during a 500-row page does not walk it.
        gc.freeze()
        self.runner.start()
        if self.config.monitor:
            self.monitor.start()
        self.periodic.start()

    def stop(self) -> None:
        self.periodic.stop()
        self.monitor.stop()
        self.runner.stop()
        agents.close_all()
        self.db.dispose()


def encode_body(body: dict[str, Any]) -> bytes:
    """The response as JSON. orjson: a 500-row page encodes in a tenth of json.dumps' time; what it
    refuses (an int beyond 64 bits) goes through json.dumps."""
    try:
        return orjson.dumps(body)
    except TypeError:
        return json.dumps(body).encode()


def _reply_response(reply: Reply) -> Response:
    resp = Response(encode_body(reply.body), status_code=reply.status, media_type=JSON_TYPE)
    for name, value in (reply.cookies or {}).items():
        if value is None:
            resp.delete_cookie(name, path="/client")
        else:
            resp.set_cookie(name, value, path="/client", httponly=True, samesite="lax")
    return resp


def create_app(config: ServerConfig) -> Starlette:
    state = ServerState(config)
    console.PUBLIC_ADDRESS.update(host=config.host, port=config.port)

    async def api_endpoint(request: HttpRequest) -> Response:
        if len(request.scope.get("query_string", b"")) > MAX_QUERY:
            return _reply_response(_too_large("Request query string", MAX_QUERY))
        params: dict[str, str] = dict(request.query_params)
        if request.method == "POST":
            body = await request.body()
            if len(body) > MAX_BODY:
                return _reply_response(_too_large("Request body", MAX_BODY))
            ctype = request.headers.get("content-type", "")
            if body and ("form" in ctype or not ctype):
                params.update(dict(parse_qsl(body.decode("utf-8", "replace"), keep_blank_values=True)))
        req = Request(
            params=params,
            method=request.method,
            session_cookie=request.cookies.get("JSESSIONID"),
            remote=request.client.host if request.client else "",
            session_header=request.headers.get("sessionkey"),
        )
        if state.count_sql:
            reply, statements = await run_in_threadpool(sqlcount.counted, lambda: state.dispatcher.handle(req))
            resp = _reply_response(reply)
            resp.headers[sqlcount.HEADER] = str(statements)
            return resp
        reply = await run_in_threadpool(state.dispatcher.handle, req)
        return _reply_response(reply)

    async def metrics(_: HttpRequest) -> Response:
        text = await run_in_threadpool(render_metrics, state.db, state.monitor)
        return PlainTextResponse(text, media_type="text/plain; version=0.0.4")

    async def health(_: HttpRequest) -> Response:
        return Response(json.dumps({"ok": True}), media_type=JSON_TYPE)

    async def console_ws(websocket: WebSocket) -> None:
        await console_websocket(websocket, state.db)

    async def to_ui(_: HttpRequest) -> Response:
        return RedirectResponse("/client/")

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await run_in_threadpool(state.start)
        app.state.strato = state
        try:
            yield
        finally:
            await run_in_threadpool(state.stop)

    routes: list[Any] = [
        Route("/client/api", api_endpoint, methods=["GET", "POST"]),
        Route("/client/api/", api_endpoint, methods=["GET", "POST"]),
        Route("/metrics", metrics),
        Route("/healthz", health),
        WebSocketRoute(console.WEBSOCKET_PATH, console_ws),
        Route("/client", to_ui),
        Mount("/client", StaticFiles(directory=UI_DIR, html=True, check_dir=False), name="ui"),
    ]
    return Starlette(routes=routes, lifespan=lifespan)
