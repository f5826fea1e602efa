"""Fixtures for the API and store tests: the real app on SQLite and on PostgreSQL, a real broker."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from backend import store
from backend.api.main import create_app
from backend.db import Database
from backend.migrate import upgrade
from backend.settings import Settings
from tests.backend.harness import postgres_schema, redis_prefix


@pytest.fixture(params=["sqlite", "postgresql"])
def backend_kind(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture
def settings(backend_kind: str, tmp_path: Path) -> Iterator[Settings]:
    """SQLite + the embedded SQLite broker, or PostgreSQL (own schema) + Redis (own prefix).

    ``testserver`` is the Host name TestClient sends, allowed as a deployment allows its own name.
    No warm spare for ``POST /fit`` (each would import torch in the background, a CPU core for ~9 s,
    while the tests run): tests/backend/test_fit_spare.py turns it on."""
    if backend_kind == "sqlite":
        yield Settings(
            data_dir=tmp_path, reaper_enabled=False, allowed_hosts=["testserver"], fit_warm_spare=False
        )
        return
    with postgres_schema() as url, redis_prefix() as prefix:
        yield Settings(
            data_dir=tmp_path,
            database_url=url,
            redis_url="redis://127.0.0.1:6379/0",
            redis_key_prefix=prefix,
            reaper_enabled=False,
            allowed_hosts=["testserver"],
            fit_warm_spare=False,
        )


@pytest.fixture
def db(settings: Settings) -> Iterator[Database]:
    database = Database(settings.sqlalchemy_url)
    upgrade(database)
    yield database
    database.dispose()


@pytest.fixture
def token(db: Database) -> str:
    with db.write_session() as session:
        _, plain = store.create_token(session, name="test")
    return plain


@pytest.fixture
def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture
def client(settings: Settings, db: Database) -> Iterator[TestClient]:
    """The app as a remote client sees it (TestClient's address is not loopback: tokens are needed)."""
    with TestClient(create_app(settings)) as test_client:
        yield test_client


def tiny_comparison(**changes: object) -> dict:
    """A small valid ComparisonSpec body (nothing runs in these tests)."""
    body: dict = {
        "name": "tiny",
        "base": {
            "workload": "pretrain",
            "model": {"source": "preset", "name": "tiny"},
            "dataset": {"source": "builtin", "name": "stdlib-corpus"},
            "seq_len": 64,
            "micro_batch": 2,
            "steps": 3,
            "device": "cpu",
        },
        "methods": ["full", "lora", "velora+full"],
    }
    body.update(changes)
    return body


def tiny_run(**changes: object) -> dict:
    body = dict(tiny_comparison()["base"], method="full")
    body.update(changes)
    return body
