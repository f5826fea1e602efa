"""Apply the Alembic migrations programmatically (no alembic.ini: the package carries its scripts).

Every process that opens the database (API, worker, ``velora-bench up``) calls :func:`upgrade`;
concurrent starts are serialised by a lock (a PostgreSQL advisory lock, or a file lock beside the
SQLite file), so two processes never race to create the same table.
"""

from __future__ import annotations

import fcntl
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import Connection, text
from sqlalchemy.engine import make_url

from backend.db import Database

#: Arbitrary constant key for ``pg_advisory_lock`` ("velora" in ASCII).
_PG_LOCK_KEY = 0x76656C6F7261


def alembic_config(url: str) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", "backend:migrations")
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return cfg


@contextmanager
def _sqlite_file_lock(url: str) -> Iterator[None]:
    database = make_url(url).database
    if not database or database == ":memory:":
        yield
        return
    lock_path = Path(database).expanduser().with_suffix(".migrate.lock")
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with lock_path.open("w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _run(db: Database, fn: str, revision: str) -> None:
    cfg = alembic_config(db.url)
    if db.is_sqlite:
        with _sqlite_file_lock(db.url), db.engine.connect() as conn:
            cfg.attributes["connection"] = conn
            getattr(command, fn)(cfg, revision)
            conn.commit()
        return
    with db.engine.connect() as conn:
        _pg_lock(conn)
        try:
            cfg.attributes["connection"] = conn
            getattr(command, fn)(cfg, revision)
            conn.commit()
        finally:
            conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": _PG_LOCK_KEY})
            conn.commit()


def _pg_lock(conn: Connection) -> None:
    conn.execute(text("SELECT pg_advisory_lock(:k)"), {"k": _PG_LOCK_KEY})
    conn.commit()


def upgrade(db: Database, revision: str = "head") -> None:
    """Bring the schema of ``db`` up to ``revision`` (default: the newest)."""
    _run(db, "upgrade", revision)


def downgrade(db: Database, revision: str = "base") -> None:
    """Take the schema of ``db`` down to ``revision`` (default: empty)."""
    _run(db, "downgrade", revision)
