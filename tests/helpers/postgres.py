"""A throw-away PostgreSQL server for tests: initdb in a temp dir, postgres on a free loopback port.

We run as root and initdb/postgres refuse that, so both run as the `postgres` system user (Debian's
`postgresql` package) on a directory owned by it. Authentication is `trust` and the server listens on
127.0.0.1 only. The server is stopped by its pid (also on failure); its directory is removed.
"""

from __future__ import annotations

import atexit
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import psycopg

from helpers.agentproc import PortTaken, free_port, listens_on, port_taken

PG_BIN_CANDIDATES = sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True)
PG_USER = "postgres"


def pg_bin() -> Path | None:
    """The directory of initdb/postgres, or None when PostgreSQL is not installed."""
    override = os.environ.get("STRATO_PG_BIN")
    if override:
        return Path(override)
    for candidate in PG_BIN_CANDIDATES:
        if (candidate / "initdb").exists() and (candidate / "postgres").exists():
            return candidate
    return None


def unavailable_reason() -> str | None:
    """Why a PostgreSQL server cannot be started here (None when it can)."""
    if pg_bin() is None:
        return "PostgreSQL binaries not found (apt-get install postgresql)"
    try:
        pwd.getpwnam(PG_USER)
    except KeyError:
        return f"no '{PG_USER}' system user to run PostgreSQL as"
    if os.geteuid() != 0 and os.environ.get("USER") != PG_USER:
        return "tests must run as root (to switch to the postgres user) or as postgres"
    return None


def _as_postgres() -> dict[str, object]:
    """Popen arguments that run the child as the postgres user (when we are root)."""
    if os.geteuid() != 0:
        return {}
    entry = pwd.getpwnam(PG_USER)
    return {"user": entry.pw_uid, "group": entry.pw_gid, "extra_groups": []}


@dataclass
class PostgresServer:
    """A running postmaster; `url(db)` names a database on it, `create_database()` makes a fresh one."""

    root: Path
    port: int
    proc: subprocess.Popen[bytes]
    log_path: Path
    databases: list[str] = field(default_factory=list)

    @property
    def data_dir(self) -> Path:
        return self.root / "data"

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://{PG_USER}@127.0.0.1:{self.port}/{database}"

    def dsn(self, database: str = "postgres") -> str:
        return f"host=127.0.0.1 port={self.port} user={PG_USER} dbname={database}"

    def create_database(self, prefix: str = "strato") -> str:
        """A new empty database; returns its SQLAlchemy URL."""
        name = f"{prefix}_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(self.dsn(), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        self.databases.append(name)
        return self.url(name)

    def drop_database(self, url: str) -> None:
        name = url.rsplit("/", 1)[1]
        with psycopg.connect(self.dsn(), autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        if name in self.databases:
            self.databases.remove(name)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self, timeout: float = 15.0) -> None:
        """Fast shutdown (SIGINT to the postmaster, by pid), SIGKILL if it hangs; removes the files."""
        if self.alive():
            os.kill(self.proc.pid, signal.SIGINT)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)
        shutil.rmtree(self.root, ignore_errors=True)


def start_postgres(timeout: float = 60.0) -> PostgresServer:
    """initdb + postgres as the postgres user on 127.0.0.1:<free port>; waits until it accepts queries."""
    reason = unavailable_reason()
    if reason:
        raise RuntimeError(reason)
    bindir = pg_bin()
    assert bindir is not None
    root = Path(tempfile.mkdtemp(prefix="strato-pg-"))
    data = root / "data"
    log_path = root / "postgres.log"
    entry = pwd.getpwnam(PG_USER)
    if os.geteuid() == 0:
        os.chown(root, entry.pw_uid, entry.pw_gid)
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(root), "LC_ALL": "C.UTF-8"}
    try:
        subprocess.run(
            [str(bindir / "initdb"), "-D", str(data), "-U", PG_USER, "--auth=trust", "--no-sync",
             "-E", "UTF8", "--locale=C.UTF-8"],
            check=True, capture_output=True, env=env, cwd=root, timeout=120, **_as_postgres(),  # type: ignore[arg-type]
        )  # fmt: skip
    except subprocess.CalledProcessError as exc:
        shutil.rmtree(root, ignore_errors=True)
        raise RuntimeError(f"initdb failed: {exc.stderr.decode(errors='replace')[-2000:]}") from None
    for attempt in range(3):
        try:
            return _run_postmaster(bindir, root, data, log_path, env, timeout)
        except PortTaken:
            if attempt == 2:
                shutil.rmtree(root, ignore_errors=True)
                raise
    raise AssertionError("unreachable")


def _run_postmaster(
    bindir: Path, root: Path, data: Path, log_path: Path, env: dict[str, str], timeout: float
) -> PostgresServer:
    """postgres on a free port until it answers; PortTaken when another process bound that port first."""
    port = free_port()
    with log_path.open("wb") as log_file:
        proc = subprocess.Popen(
            [str(bindir / "postgres"), "-D", str(data), "-p", str(port),
             "-c", "listen_addresses=127.0.0.1", "-c", f"unix_socket_directories={root}",
             "-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off",
             "-c", "max_connections=300", "-c", "shared_buffers=64MB"],
            stdout=log_file, stderr=subprocess.STDOUT, env=env, cwd=root, start_new_session=True,
            **_as_postgres(),  # type: ignore[arg-type]
        )  # fmt: skip
    server = PostgresServer(root=root, port=port, proc=proc, log_path=log_path)
    deadline = time.monotonic() + timeout
    while True:
        if not server.alive():
            text = server.log()[-3000:]
            if port_taken(text):
                return_code = proc.returncode
                log_path.unlink(missing_ok=True)
                raise PortTaken(f"postgres exited with {return_code}: port {port} taken")
            server.stop()
            raise RuntimeError(f"postgres exited with {proc.returncode}:\n{text}")
        try:
            with psycopg.connect(server.dsn(), connect_timeout=2) as conn:
                conn.execute("SELECT 1")
            if not listens_on(proc.pid, port):  # answered by another test's postgres on that port
                time.sleep(0.1)
                continue
            atexit.register(server.stop)  # a second safety net if the fixture's teardown never runs
            return server
        except psycopg.OperationalError:
            pass
        if time.monotonic() > deadline:
            text = server.log()[-3000:]
            server.stop()
            raise TimeoutError(f"postgres not ready after {timeout}s:\n{text}")
        time.sleep(0.1)
