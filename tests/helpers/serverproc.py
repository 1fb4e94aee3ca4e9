"""Start a real management server (`strato server`, uvicorn) as a subprocess on a free loopback port,
talk to it as CloudStack clients do, and stop it by pid.

Style as helpers/agentproc.py: a dataclass for the running process, `start_server()` waits until it
answers, `stop()` is SIGTERM then SIGKILL, `kill()` is a crash.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from cs import CloudStack

from helpers.agentproc import Placement, PortTaken, free_port, listens_on, port_taken

ADMIN_PASSWORD = "password"
# `strato server` itself (its typer command and options), without importing every other subcommand of
# the CLI, so that server tests do not depend on unrelated CLI modules.
SERVER_MAIN = "import typer; from strato.cli.server import server_command; typer.run(server_command)"


@dataclass
class Keys:
    """A user's API key pair and ids, as registerUserKeys returns them."""

    apikey: str
    secretkey: str
    userid: str
    accountid: str = ""
    domainid: str = ""


@dataclass
class ServerProcess:
    """A running management server subprocess."""

    data_dir: Path
    port: int
    database_url: str | None
    server_id: str
    proc: subprocess.Popen[bytes]
    stderr_path: Path
    extra_args: list[str] = field(default_factory=list)
    _admin: Keys | None = None
    command_prefix: list[str] = field(default_factory=list)
    listen_host: str = "127.0.0.1"
    test_url: str | None = None
    """How the test reaches the server when that is not its own address (a relay into a namespace)."""

    @property
    def base_url(self) -> str:
        return self.test_url or f"http://{self.listen_host}:{self.port}"

    @property
    def endpoint(self) -> str:
        return self.base_url + "/client/api"

    @property
    def sqlite_path(self) -> Path:
        if self.database_url and self.database_url.startswith("sqlite:///"):
            return Path(self.database_url[len("sqlite:///") :])
        return self.data_dir / "strato.db"

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace") if self.stderr_path.exists() else ""

    def alive(self) -> bool:
        return self.proc.poll() is None

    def kill(self) -> None:
        """SIGKILL: the server gets no chance to finish anything (a crash)."""
        if self.alive():
            os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=10)

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM (orderly shutdown), SIGKILL if it does not exit in time."""
        if self.alive():
            os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.kill()

    # --- clients -----------------------------------------------------------------------------------

    def admin_keys(self) -> Keys:
        """The root admin's keys (login with the default password, then registerUserKeys), cached."""
        if self._admin is None:
            self._admin = login_and_register_keys(self.endpoint, "admin", ADMIN_PASSWORD, "/")
        return self._admin

    def cs(self, keys: Keys | None = None, **kwargs: Any) -> CloudStack:
        """A `cs` client signing with the given keys (the root admin's by default)."""
        keys = keys or self.admin_keys()
        kwargs.setdefault("timeout", 30)
        kwargs.setdefault("job_timeout", 60)
        kwargs.setdefault("poll_interval", 0.1)
        return CloudStack(self.endpoint, keys.apikey, keys.secretkey, **kwargs)

    def sql(self, query: str, *args: Any) -> list[tuple[Any, ...]]:
        """Runs one statement on the server's database (SQLite or PostgreSQL) and commits: for checks the
        API cannot show, and to age rows (e.g. a session) without waiting."""
        if self.database_url and self.database_url.startswith("postgresql"):
            import psycopg

            with psycopg.connect(self.database_url.replace("postgresql+psycopg://", "postgresql://")) as conn:
                cur = conn.execute(query.replace("?", "%s"), args)  # type: ignore[arg-type]
                return list(cur.fetchall()) if cur.description else []  # type: ignore[arg-type]
        conn = sqlite3.connect(self.sqlite_path, timeout=30)
        try:
            rows = list(conn.execute(query, args).fetchall())
            conn.commit()
            return rows
        finally:
            conn.close()

    def database(self) -> Any:
        """The server's database through Strato's own models (a strato.db.engine.Database; dispose it)."""
        from strato.db.engine import Database, sqlite_url

        return Database(self.database_url or sqlite_url(self.data_dir))

    def insert_accounts(self, count: int, prefix: str = "bulk", domain_id: str | None = None) -> list[str]:
        """Inserts user accounts (no users) straight into the database, far faster than createAccount
        (which hashes a password each time); returns their ids."""
        from sqlalchemy import select

        from strato.db.models import Account, Domain

        db = self.database()
        try:
            with db.session() as s:
                if domain_id is None:
                    domain_id = s.scalar(select(Domain.id).where(Domain.parent_id.is_(None)))
                rows = [Account(name=f"{prefix}-{i:05d}", domain_id=domain_id, type=0) for i in range(count)]
                s.add_all(rows)
                s.flush()
                return [a.id for a in rows]
        finally:
            db.dispose()

    def restart(self, timeout: float = 30.0, **overrides: Any) -> ServerProcess:
        """A new process on the same data dir, database, port and server id (after stop() or kill())."""
        self.stop()
        args: dict[str, Any] = {
            "data_dir": self.data_dir,
            "port": self.port,
            "database_url": self.database_url,
            "server_id": self.server_id,
            "extra_args": self.extra_args,
            "timeout": timeout,
            "command_prefix": self.command_prefix,
            "listen_host": self.listen_host,
        }
        if self.test_url:
            args["test_url_for"] = lambda _port: self.test_url
        args.update(overrides)
        return start_server(**args)


def server_argv(
    data_dir: Path, port: int, database_url: str | None, server_id: str, extra: list[str], host: str = "127.0.0.1"
) -> list[str]:
    argv = [
        sys.executable,
        "-c",
        SERVER_MAIN,
        "--data-dir",
        str(data_dir),
        "--listen",
        f"{host}:{port}",
        "--server-id",
        server_id,
    ]
    if database_url:
        argv += ["--database-url", database_url]
    return argv + extra


def start_server(
    data_dir: Path,
    *,
    port: int | None = None,
    database_url: str | None = None,
    server_id: str | None = None,
    extra_args: list[str] | None = None,
    env: dict[str, str] | None = None,
    timeout: float = 30.0,
    command_prefix: list[str] | None = None,
    listen_host: str = "127.0.0.1",
    test_url_for: Callable[[int], str] | None = None,
) -> ServerProcess:
    """Start `strato server` and wait until /healthz answers; raises with its stderr if it dies or hangs.
    A free port taken by another process before the server bound it is retried on a new one.
    `command_prefix` runs it under another command (`ip netns exec NS`), listening on `listen_host`;
    `test_url_for(port)` then gives the URL the test reaches it by."""
    net = Placement(command_prefix or [], listen_host, test_url_for)
    for attempt in range(3):
        try:
            return _start_server(data_dir, port, database_url, server_id, extra_args, env, timeout, net)
        except PortTaken:
            if port is not None or attempt == 2:
                raise
    raise AssertionError("unreachable")


def _start_server(
    data_dir: Path,
    port: int | None,
    database_url: str | None,
    server_id: str | None,
    extra_args: list[str] | None,
    env: dict[str, str] | None,
    timeout: float,
    net: Placement,
) -> ServerProcess:
    data_dir.mkdir(parents=True, exist_ok=True)
    port = port if port is not None else free_port()
    server_id = server_id or f"test-server-{port}"
    extra = list(extra_args or [])
    stderr_path = data_dir / f"server-stderr-{port}-{time.monotonic_ns()}.log"
    full_env = {**os.environ, **(env or {})}
    full_env.pop("STRATO_DATABASE_URL", None)
    with stderr_path.open("wb") as stderr:
        proc = subprocess.Popen(
            net.prefix + server_argv(data_dir, port, database_url, server_id, extra, net.host),
            stdout=subprocess.DEVNULL,
            stderr=stderr,
            env=full_env,
            start_new_session=True,
        )
    test_url = net.test_url_for(port) if net.test_url_for is not None else None
    server = ServerProcess(data_dir, port, database_url, server_id, proc, stderr_path, extra,
                           command_prefix=net.prefix, listen_host=net.host, test_url=test_url)  # fmt: skip
    try:
        _wait_healthy(server, timeout)
    except BaseException:
        server.stop()
        raise
    return server


def _wait_healthy(server: ServerProcess, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    with httpx.Client(timeout=2.0) as client:
        while True:
            if not server.alive():
                error = PortTaken if port_taken(server.stderr()) else RuntimeError
                raise error(f"server exited with {server.proc.returncode}:\n{server.stderr()[-3000:]}")
            try:
                ok = client.get(server.base_url + "/healthz").status_code == 200
                if ok and listens_on(server.proc.pid, server.port):
                    return
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"server not healthy after {timeout}s:\n{server.stderr()[-3000:]}")
            time.sleep(0.1)


# --- plain HTTP helpers (sessions, raw requests) ------------------------------------------------------


def login(endpoint: str, username: str, password: str, domain: str = "/") -> tuple[httpx.Client, dict[str, Any]]:
    """POST login; returns an httpx client holding the session cookies and the loginresponse."""
    client = httpx.Client(timeout=30)
    resp = client.post(
        endpoint,
        data={
            "command": "login",
            "username": username,
            "password": password,
            "domain": domain,
            "response": "json",
        },
    )
    if resp.status_code != 200:
        client.close()
        raise RuntimeError(f"login of {username} failed: {resp.status_code} {resp.text}")
    return client, resp.json()["loginresponse"]


def login_and_register_keys(endpoint: str, username: str, password: str, domain: str = "/") -> Keys:
    """Logs in, calls registerUserKeys on the user itself with the session key, logs out."""
    client, info = login(endpoint, username, password, domain)
    try:
        resp = client.post(
            endpoint,
            data={
                "command": "registerUserKeys",
                "id": info["userid"],
                "sessionkey": info["sessionkey"],
                "response": "json",
            },
        )
        resp.raise_for_status()
        keys = resp.json()["registeruserkeysresponse"]["userkeys"]
        client.post(endpoint, data={"command": "logout", "sessionkey": info["sessionkey"], "response": "json"})
    finally:
        client.close()
    return Keys(keys["apikey"], keys["secretkey"], info["userid"], domainid=info["domainid"])


def create_user_keys(
    admin: CloudStack,
    endpoint: str,
    *,
    username: str,
    password: str = "secret-pw",
    domainid: str | None = None,
    accounttype: int = 0,
) -> Keys:
    """createAccount (as `admin`), then keys for its user through the user's own login."""
    params: dict[str, Any] = {
        "username": username,
        "password": password,
        "accounttype": accounttype,
        "firstname": "Test",
        "lastname": "User",
        "email": f"{username}@example.org",
    }
    if domainid:
        params["domainid"] = domainid
    acct = admin.createAccount(**params)["account"]
    keys = login_and_register_keys(endpoint, username, password, acct["domainpath"])
    keys.accountid = acct["id"]
    keys.domainid = acct["domainid"]
    return keys


def wait_job(client: CloudStack, jobid: str, timeout: float = 60.0) -> dict[str, Any]:
    """Polls queryAsyncJobResult until jobstatus is no longer 0; returns the whole answer."""
    deadline = time.monotonic() + timeout
    while True:
        res: dict[str, Any] = client.queryAsyncJobResult(jobid=jobid)
        if res["jobstatus"] != 0:
            return res
        if time.monotonic() > deadline:
            raise TimeoutError(f"job {jobid} still pending after {timeout}s: {res}")
        time.sleep(0.05)


def signed_query(params: dict[str, str], secret: str, *, encode: Any = None, lower_sort: bool = False) -> str:
    """A query string signed the way a given client does it (default: `cs`'s quote(v, safe="*"),
    case-sensitive sort). The signature is appended last."""
    import base64
    import hashlib
    import hmac
    from urllib.parse import quote, urlencode

    enc = encode or (lambda v: quote(v, safe="*"))
    items = sorted(params.items(), key=(lambda kv: kv[0].lower()) if lower_sort else (lambda kv: kv[0]))
    canonical = "&".join(f"{k}={enc(v)}" for k, v in items).lower()
    digest = hmac.new(secret.encode(), canonical.encode(), hashlib.sha1).digest()
    return urlencode({**params, "signature": base64.b64encode(digest).decode()})
