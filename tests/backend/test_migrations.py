"""Alembic: the migrations build exactly the models' schema, on SQLite and PostgreSQL, both ways."""

from __future__ import annotations

import multiprocessing
from pathlib import Path

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect

from backend.db import Database
from backend.migrate import downgrade, upgrade
from backend.settings import Settings
from backend.tables import Base


def schema_diff(db: Database) -> list:
    with db.engine.connect() as conn:
        return compare_metadata(MigrationContext.configure(conn, opts={"compare_type": True}), Base.metadata)


def test_upgrade_matches_models(settings: Settings) -> None:
    db = Database(settings.sqlalchemy_url)
    upgrade(db)
    assert schema_diff(db) == []
    upgrade(db)  # a second start is a no-op
    tables = set(inspect(db.engine).get_table_names())
    assert {"comparisons", "runs", "run_metrics", "workers", "api_tokens", "idempotency_keys"} <= tables
    db.dispose()


def test_downgrade_and_upgrade_again(settings: Settings) -> None:
    db = Database(settings.sqlalchemy_url)
    upgrade(db)
    downgrade(db)
    assert set(inspect(db.engine).get_table_names()) <= {"alembic_version"}
    upgrade(db)
    assert schema_diff(db) == []
    db.dispose()


def _upgrade_in_process(url: str) -> None:
    upgrade(Database(url))


def test_concurrent_starts_do_not_race(settings: Settings) -> None:
    ctx = multiprocessing.get_context("spawn")
    processes = [ctx.Process(target=_upgrade_in_process, args=(settings.sqlalchemy_url,)) for _ in range(3)]
    for p in processes:
        p.start()
    for p in processes:
        p.join(60)
    assert [p.exitcode for p in processes] == [0, 0, 0]
    assert schema_diff(Database(settings.sqlalchemy_url)) == []


def test_sqlite_file_is_created_under_data_dir(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path / "nested" / "data")
    upgrade(Database(settings.sqlalchemy_url))
    assert (tmp_path / "nested" / "data" / "velora.db").is_file()
