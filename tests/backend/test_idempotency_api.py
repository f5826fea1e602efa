"""``Idempotency-Key``: a retried submission is answered with the first result, never queued twice."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

from fastapi.testclient import TestClient

from backend.db import Database
from backend.settings import Settings
from backend.tables import Comparison, Run
from tests.backend.conftest import tiny_comparison, tiny_run
from tests.backend.test_comparisons_api import queued_messages


def counts(db: Database) -> tuple[int, int]:
    with db.session() as session:
        return session.query(Comparison).count(), session.query(Run).count()


def test_retried_comparison_is_not_queued_twice(
    client: TestClient, auth: dict, db: Database, settings: Settings
) -> None:
    headers = {**auth, "Idempotency-Key": "submit-1"}
    first = client.post("/api/v1/comparisons", json=tiny_comparison(), headers=headers)
    second = client.post("/api/v1/comparisons", json=tiny_comparison(), headers=headers)
    assert first.status_code == second.status_code == 201
    assert second.headers["idempotent-replayed"] == "true" and "idempotent-replayed" not in first.headers
    assert second.json()["id"] == first.json()["id"]
    assert second.json()["run_ids"] == first.json()["run_ids"]
    assert counts(db) == (1, 3)
    assert queued_messages(settings)["cpu"] == 3


def test_same_key_different_body_is_rejected(client: TestClient, auth: dict, db: Database) -> None:
    headers = {**auth, "Idempotency-Key": "submit-2"}
    assert client.post("/api/v1/comparisons", json=tiny_comparison(), headers=headers).status_code == 201
    response = client.post("/api/v1/comparisons", json=tiny_comparison(name="other"), headers=headers)
    assert response.status_code == 422
    assert "already used with a different request body" in response.json()["detail"][0]["msg"]
    assert counts(db) == (1, 3)


def test_keys_are_per_endpoint_and_per_caller(client: TestClient, auth: dict, db: Database) -> None:
    from backend import store

    with db.write_session() as session:
        _, other = store.create_token(session, name="someone else")
    key = {"Idempotency-Key": "shared"}
    a = client.post("/api/v1/runs", json=tiny_run(), headers={**auth, **key})
    b = client.post("/api/v1/runs", json=tiny_run(), headers={"Authorization": f"Bearer {other}", **key})
    c = client.post("/api/v1/comparisons", json=tiny_comparison(), headers={**auth, **key})
    assert a.status_code == b.status_code == c.status_code == 201
    assert a.json()["id"] != b.json()["id"]
    assert counts(db) == (1, 5)


def test_retried_run_is_not_queued_twice(client: TestClient, auth: dict, db: Database) -> None:
    headers = {**auth, "Idempotency-Key": "run-1"}
    ids = {client.post("/api/v1/runs", json=tiny_run(), headers=headers).json()["id"] for _ in range(3)}
    assert len(ids) == 1
    assert counts(db) == (0, 1)


def test_without_key_each_post_creates(client: TestClient, auth: dict, db: Database) -> None:
    client.post("/api/v1/runs", json=tiny_run(), headers=auth)
    client.post("/api/v1/runs", json=tiny_run(), headers=auth)
    assert counts(db) == (0, 2)


def test_concurrent_duplicates_create_one_comparison(
    client: TestClient, auth: dict, db: Database, settings: Settings
) -> None:
    headers = {**auth, "Idempotency-Key": "racing"}

    def submit(_: int) -> tuple[int, int]:
        response = client.post("/api/v1/comparisons", json=tiny_comparison(), headers=headers)
        return response.status_code, response.json()["id"]

    with ThreadPoolExecutor(max_workers=6) as pool:
        results = list(pool.map(submit, range(12)))
    assert {status for status, _ in results} == {201}
    assert len({cid for _, cid in results}) == 1
    assert counts(db) == (1, 3)
    assert queued_messages(settings)["cpu"] == 3


def test_key_length_is_limited(client: TestClient, auth: dict) -> None:
    response = client.post("/api/v1/runs", json=tiny_run(), headers={**auth, "Idempotency-Key": "k" * 300})
    assert response.status_code == 422
