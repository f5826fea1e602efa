"""Database engines and sessions for SQLite (embedded) and PostgreSQL (cluster).

SQLite gets WAL (readers never block the writer), a busy timeout, foreign keys, and two kinds of
transaction: reads begin deferred, writes begin ``IMMEDIATE`` so that a read-then-write transaction
never fails half-way with "database is locked" when another process committed in between.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker

SQLITE_BUSY_TIMEOUT_MS = 30_000


def _sqlite_engine(url: str, *, begin: str) -> Engine:
    engine = create_engine(
        url,
        connect_args={"check_same_thread": False, "timeout": SQLITE_BUSY_TIMEOUT_MS / 1000},
        pool_size=10,
        max_overflow=40,
    )

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Take transaction control away from pysqlite so that BEGIN is ours (SQLAlchemy's recipe).
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        conn.exec_driver_sql(begin)

    return engine


class Database:
    """The engines and session factories of one database URL.

    Use :meth:`session` for reads and :meth:`write_session` for transactions that write.
    Both commit on success and roll back on error when used as context managers.
    """

    def __init__(self, url: str) -> None:
        self.url = url
        parsed = make_url(url)
        self.is_sqlite = parsed.get_backend_name() == "sqlite"
        if self.is_sqlite:
            if parsed.database and parsed.database != ":memory:":
                Path(parsed.database).expanduser().parent.mkdir(parents=True, exist_ok=True)
            self.engine = _sqlite_engine(url, begin="BEGIN")
            self.write_engine = _sqlite_engine(url, begin="BEGIN IMMEDIATE")
        else:
            self.engine = create_engine(url, pool_pre_ping=True, pool_size=10, max_overflow=20)
            self.write_engine = self.engine
        self._read_factory = sessionmaker(self.engine, expire_on_commit=False)
        self._write_factory = sessionmaker(self.write_engine, expire_on_commit=False)
        self._pid = os.getpid()

    def _check_fork(self) -> None:
        # A forked child (Celery prefork) must not share the parent's pooled connections.
        if os.getpid() != self._pid:
            self.engine.dispose(close=False)
            if self.write_engine is not self.engine:
                self.write_engine.dispose(close=False)
            self._pid = os.getpid()

    def new_session(self, *, write: bool = False) -> Session:
        self._check_fork()
        return (self._write_factory if write else self._read_factory)()

    @contextmanager
    def session(self) -> Iterator[Session]:
        with self.new_session() as session, session.begin():
            yield session

    @contextmanager
    def write_session(self) -> Iterator[Session]:
        with self.new_session(write=True) as session, session.begin():
            yield session

    def dispose(self) -> None:
        self.engine.dispose()
        if self.write_engine is not self.engine:
            self.write_engine.dispose()
