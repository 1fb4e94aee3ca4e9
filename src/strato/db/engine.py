"""Database connection: SQLite in the data dir by default, PostgreSQL when a URL is given."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.orm import Session, sessionmaker


def sqlite_url(data_dir: Path) -> str:
    return f"sqlite:///{data_dir / 'strato.db'}"


def make_engine(url: str) -> Engine:
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30}, pool_size=20)
        event.listen(engine, "connect", _sqlite_on_connect)
        _WriteQueue().install(engine)
        return engine
    if url.startswith("postgresql://"):
        url = "postgresql+psycopg://" + url[len("postgresql://") :]
    return create_engine(url, pool_size=20, max_overflow=20, pool_pre_ping=True)


def _sqlite_on_connect(dbapi_conn: Any, _record: Any) -> None:
    # Let SQLAlchemy issue BEGIN itself (see _sqlite_on_begin) so that transactions take the write
    # lock up front: otherwise two writers deadlock on lock upgrade instead of waiting.
    dbapi_conn.isolation_level = None
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.execute("PRAGMA busy_timeout=30000")
    cur.close()


class _WriteQueue:
    """The threads of this process take SQLite's write lock in turn through a Python lock.

    Every transaction begins with BEGIN IMMEDIATE (see _sqlite_on_connect). Left to SQLite, a thread that
    finds the lock taken sleeps and retries (1, 2, 5 ... 100 ms steps): under a few concurrent requests
    most of a request's time went into those sleeps. Here the next thread wakes as soon as the previous
    one has committed. The wait is bounded (LOCK_WAIT s); past it, SQLite's own busy wait takes over
    (another process, or a thread that opened a second session while holding one)."""

    LOCK_WAIT = 30.0

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._holder: Any = None

    def install(self, engine: Engine) -> None:
        event.listen(engine, "begin", self._begin)
        # A connection closed or invalidated inside its transaction gives the lock back too.
        event.listen(engine.pool, "close", lambda dbapi_conn, _rec: self._release(dbapi_conn))
        event.listen(engine.pool, "invalidate", lambda dbapi_conn, _rec, _exc: self._release(dbapi_conn))
        dialect = engine.dialect
        commit, rollback = dialect.do_commit, dialect.do_rollback

        def do_commit(dbapi_conn: Any) -> None:
            try:
                commit(dbapi_conn)
            finally:
                self._release(dbapi_conn)

        def do_rollback(dbapi_conn: Any) -> None:
            try:
                rollback(dbapi_conn)
            finally:
                self._release(dbapi_conn)

        dialect.do_commit = do_commit  # type: ignore[method-assign,assignment]
        dialect.do_rollback = do_rollback  # type: ignore[method-assign,assignment]

    def _begin(self, conn: Any) -> None:
        dbapi_conn = conn.connection.dbapi_connection
        got = self._lock.acquire(timeout=self.LOCK_WAIT)
        if got:
            self._holder = dbapi_conn
        try:
            conn.exec_driver_sql("BEGIN IMMEDIATE")
        except BaseException:
            self._release(dbapi_conn)
            raise

    def _release(self, conn: Any) -> None:
        dbapi_conn = getattr(conn, "dbapi_connection", conn)  # the pool's proxy or the raw connection
        if self._holder is not None and self._holder is dbapi_conn:
            self._holder = None
            self._lock.release()


class Database:
    """The engine and a session factory; one per server process."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.engine = make_engine(url)
        self.is_postgres = self.engine.dialect.name == "postgresql"
        self._factory = sessionmaker(self.engine, expire_on_commit=False)

    @contextmanager
    def session(self) -> Iterator[Session]:
        """A unit of work: commits when the block ends normally, rolls back on an exception.

        On SQLite a session holds the single write lock from its start: never open a second session
        in the same thread while one is open, it would wait for the first one for ever."""
        with self._factory() as s:
            try:
                yield s
                s.commit()
            except BaseException:
                s.rollback()
                raise

    def dispose(self) -> None:
        self.engine.dispose()
