"""Shared fixtures: real management servers (subprocesses) on SQLite or PostgreSQL, admin keys, `cs`
clients, and a throw-away PostgreSQL server. The heavy lifting is in tests/helpers/.

`server` is module-scoped and parametrized over the database backend: every test that uses it runs once
against SQLite and once against PostgreSQL (the latter is skipped when PostgreSQL is not installed).
Tests sharing a module's server use unique names (see `unique`).
"""

from __future__ import annotations

import shutil
import sys
import tempfile
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

# `helpers` lives in tests/; make it importable whatever rootdir layout pytest picks.
_TESTS = str(Path(__file__).resolve().parent)
if _TESTS not in sys.path:
    sys.path.insert(0, _TESTS)

from cs import CloudStack  # noqa: E402

from helpers import postgres  # noqa: E402
from helpers.agentproc import free_port  # noqa: E402
from helpers.serverproc import Keys, ServerProcess, create_user_keys, start_server  # noqa: E402

BACKENDS = ("sqlite", "postgres")


_SHORT_BASETEMP: list[Path] = []


def pytest_configure(config: pytest.Config) -> None:
    """Under pytest-xdist, workers' temp dirs get a `popen-gwN/` level more, and a QEMU agent's QMP socket
    under them (`.../agent/vms/i-<uuid>/qmp.sock`) outgrows the 107 bytes of a unix socket path. So a
    parallel run (controller only, no --basetemp given) uses a short /tmp/st-XXXXXXXX instead of
    /tmp/pytest-of-<user>/pytest-<n>; it is removed after a run that passed, kept after a failure."""
    parallel = getattr(config.option, "numprocesses", None)
    is_worker = hasattr(config, "workerinput")
    if parallel and not is_worker and not config.option.basetemp:
        short = Path(tempfile.mkdtemp(prefix="st-", dir="/tmp"))
        config.option.basetemp = str(short)
        _SHORT_BASETEMP.append(short)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    for short in _SHORT_BASETEMP:
        if exitstatus == 0:
            shutil.rmtree(short, ignore_errors=True)
        else:
            session.config.get_terminal_writer().line(f"temp dirs of the failed run kept in {short}")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """For pytest-xdist's `--dist loadscope` (scripts/test.sh), which keeps a module's tests on one worker
    as they share its module-scoped server and agents: the modules that boot QEMU guests, the long ones,
    are handed out first, so that the short ones fill the other worker's time instead of both waiting at
    the end for one long module (a stable sort: a module's tests keep their order). Session fixtures
    (PostgreSQL, the compute cloud, the tiny image) are made once per worker, each in its own temp dir and
    on its own ports.

    Not `--dist loadgroup`: with pytest 9 its grouping does nothing (pytest-xdist 3.8 renames a node by
    `_nodeid`, which pytest 9 no longer reads), so a module's tests were spread over both workers, each
    building the module's cloud again (tests/test_xdist_scope.py guards this)."""
    items.sort(key=lambda item: item.get_closest_marker("qemu") is None)


@pytest.fixture(scope="session")
def pg_server() -> Iterator[postgres.PostgresServer]:
    """One PostgreSQL server for the whole session, started on first use and stopped by pid at the end."""
    reason = postgres.unavailable_reason()
    if reason:
        pytest.skip(reason)
    server = postgres.start_postgres()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def pg_database(pg_server: postgres.PostgresServer) -> Iterator[str]:
    """A fresh, empty PostgreSQL database for one test; dropped afterwards."""
    url = pg_server.create_database()
    try:
        yield url
    finally:
        pg_server.drop_database(url)


def _database_url(request: pytest.FixtureRequest, backend: str) -> str | None:
    if backend == "sqlite":
        return None  # the server's default: strato.db in its data dir
    pg: postgres.PostgresServer = request.getfixturevalue("pg_server")
    url = pg.create_database()
    request.addfinalizer(lambda: pg.drop_database(url))
    return url


@pytest.fixture(scope="module", params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    """The database backend of the module's server: "sqlite" or "postgres"."""
    return str(request.param)


@pytest.fixture(scope="module")
def server(
    backend: str, request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerProcess]:
    """A management server shared by a module's tests, on a fresh database of the module's backend."""
    url = _database_url(request, backend)
    proc = start_server(tmp_path_factory.mktemp(f"server-{backend}"), database_url=url)
    try:
        yield proc
    finally:
        proc.stop()


StartServer = Callable[..., ServerProcess]


@pytest.fixture
def server_factory(tmp_path: Path) -> Iterator[StartServer]:
    """Start servers on demand (same arguments as start_server); all are stopped by pid at teardown."""
    started: list[ServerProcess] = []

    def start(**kwargs: Any) -> ServerProcess:
        kwargs.setdefault("data_dir", tmp_path / f"server{len(started)}")
        proc = start_server(**kwargs)
        started.append(proc)
        return proc

    def track(proc: ServerProcess) -> ServerProcess:
        started.append(proc)
        return proc

    start.track = track  # type: ignore[attr-defined]  # for servers made by ServerProcess.restart()
    try:
        yield start
    finally:
        for proc in started:
            proc.stop()


@pytest.fixture(scope="module")
def admin_keys(server: ServerProcess) -> Keys:
    return server.admin_keys()


@pytest.fixture(scope="module")
def admin(server: ServerProcess) -> CloudStack:
    """A `cs` client signed (signatureVersion 3, expires) with the root admin's keys."""
    return server.cs()


@pytest.fixture
def unique() -> Callable[[str], str]:
    """unique("zone") -> "zone-1a2b3c4d": names that never clash between tests sharing a server."""
    return lambda prefix: f"{prefix}-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def make_user(server: ServerProcess, admin: CloudStack) -> Callable[..., Keys]:
    """Creates an account (user, domain admin...) and returns its user's keys."""

    def make(prefix: str = "user", **kwargs: Any) -> Keys:
        return create_user_keys(admin, server.endpoint, username=f"{prefix}-{uuid.uuid4().hex[:8]}", **kwargs)

    return make


__all__ = ["free_port"]
