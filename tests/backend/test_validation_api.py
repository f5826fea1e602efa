"""Bad input: a 4xx a person can act on, never a 500, and never a half-created comparison."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from backend.db import Database
from backend.models import Comparison, Run
from tests.backend.conftest import tiny_comparison, tiny_run


def nothing_stored(db: Database) -> bool:
    with db.session() as session:
        return session.query(Comparison).count() == 0 and session.query(Run).count() == 0


def messages(response) -> str:  # type: ignore[no-untyped-def]
    return " | ".join(e["msg"] for e in response.json()["detail"])


def test_unknown_method_names_the_choices(client: TestClient, auth: dict, db: Database) -> None:
    response = client.post(
        "/api/v1/comparisons", json=tiny_comparison(methods=["full", "dora"]), headers=auth
    )
    assert response.status_code == 422
    assert "unknown method(s) ['dora']" in messages(response) and "velora+lora" in messages(response)
    assert nothing_stored(db)


def test_invalid_later_run_creates_nothing(client: TestClient, auth: dict, db: Database) -> None:
    # velora+full with 200 groups is invalid for the tiny model's 128 features: the third run fails
    # validation, so the first two must not be stored either.
    body = tiny_comparison(method_configs={"velora+full": {"velora": {"num_groups": 200}}})
    response = client.post("/api/v1/comparisons", json=body, headers=auth)
    assert response.status_code == 422
    assert "num_groups=200 exceeds the layer's 128 input features" in messages(response)
    assert nothing_stored(db)


def test_field_errors_point_at_the_field(client: TestClient, auth: dict) -> None:
    body = tiny_comparison()
    body["base"]["micro_batch"] = 0
    response = client.post("/api/v1/comparisons", json=body, headers=auth)
    assert response.status_code == 422
    detail = response.json()["detail"]
    assert detail[0]["loc"] == ["body", "base", "micro_batch"]
    assert "greater than or equal to 1" in detail[0]["msg"]
    assert "input" not in detail[0]  # bodies are not echoed back

    response = client.post("/api/v1/runs", json=tiny_run(seq_len=100_000), headers=auth)
    assert response.status_code == 422
    assert "beyond the model's limit of 512 positions" in messages(response)


def test_server_limits_are_enforced(settings, db: Database, auth: dict) -> None:  # type: ignore[no-untyped-def]
    from backend.api.main import create_app

    strict = settings.model_copy(update={"max_steps": 50, "max_micro_batch": 4, "max_runs_per_comparison": 2})
    with TestClient(create_app(strict)) as client:
        body = tiny_comparison()
        body["base"].update(steps=51, micro_batch=8)
        response = client.post("/api/v1/comparisons", json=body, headers=auth)
        assert response.status_code == 422
        text = messages(response)
        assert "3 runs (methods × seeds) exceed this server's limit of 2" in text
        assert "steps=51 exceeds this server's limit of 50 (VELORA_MAX_STEPS)" in text
        assert "micro_batch=8 exceeds this server's limit of 4" in text
        response = client.post("/api/v1/runs", json=tiny_run(steps=1000), headers=auth)
        assert response.status_code == 422 and "VELORA_MAX_STEPS" in messages(response)
        preset = client.post("/api/v1/comparisons", json={"preset": "cpu-smoke"}, headers=auth)
        assert preset.status_code == 422  # the preset's 6 runs exceed the limit of 2
    assert nothing_stored(db)


def test_spec_bounds_are_enforced(client: TestClient, auth: dict) -> None:
    response = client.post("/api/v1/runs", json=tiny_run(steps=10**9), headers=auth)
    assert response.status_code == 422
    assert "less than or equal to 1000000" in messages(response)


def test_preset_errors(client: TestClient, auth: dict, db: Database) -> None:
    response = client.post("/api/v1/comparisons", json={"preset": "nope"}, headers=auth)
    assert response.status_code == 422
    assert "unknown preset 'nope'; choose one of" in messages(response) and "cpu-smoke" in messages(response)

    response = client.post(
        "/api/v1/comparisons", json={"preset": "cpu-smoke", "overrides": {"steps": -1}}, headers=auth
    )
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"][:2] == ["body", "overrides"]

    response = client.post("/api/v1/comparisons", json={"preset": "cpu-smoke", "extra": 1}, headers=auth)
    assert response.status_code == 422 and response.json()["detail"][0]["loc"] == ["body", "extra"]
    assert nothing_stored(db)


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        b"not json",
        b"[1, 2, 3]",
        b'"a string"',
        b"null",
        b'{"base": 5, "methods": "full"}',
        b'{"preset": 5}',
        b'{"preset": "cpu-smoke", "overrides": [1]}',
        b'{"preset": "cpu-smoke", "overrides": {"base": {"model": {"source": "hub"}}}}',
        b'{"base": {"workload": "pretrain", "model": {"source": "hub"}}, "methods": ["full"]}',
        b'{"name": "' + b"x" * 300 + b'", "base": {}, "methods": []}',
        b'{"a": ' * 5000 + b"1" + b"}" * 5000,
    ],
)
def test_garbage_bodies_are_4xx(client: TestClient, auth: dict, db: Database, raw: bytes) -> None:
    for path in ("/api/v1/comparisons", "/api/v1/runs"):
        response = client.post(path, content=raw, headers={**auth, "Content-Type": "application/json"})
        assert 400 <= response.status_code < 500, (path, response.status_code, response.text[:500])
        assert response.json()["detail"]
    assert nothing_stored(db)


def test_body_too_large_is_413(client: TestClient, auth: dict, settings, db: Database) -> None:  # type: ignore[no-untyped-def]
    big = tiny_comparison(name="x" * (settings.max_request_bytes + 10))
    response = client.post("/api/v1/comparisons", json=big, headers=auth)
    assert response.status_code == 413
    assert "VELORA_MAX_REQUEST_BYTES" in response.json()["detail"]

    def chunks():  # no Content-Length: the limit is enforced while streaming
        for _ in range(settings.max_request_bytes // 1000 + 10):
            yield b" " * 1000

    response = client.post(
        "/api/v1/comparisons", content=chunks(), headers={**auth, "Content-Type": "application/json"}
    )
    assert response.status_code == 413
    assert nothing_stored(db)


def test_bad_query_parameters(client: TestClient, auth: dict) -> None:
    assert client.get("/api/v1/runs", params={"limit": 0}, headers=auth).status_code == 422
    assert client.get("/api/v1/runs", params={"limit": 100_000}, headers=auth).status_code == 422
    assert client.get("/api/v1/runs", params={"offset": -1}, headers=auth).status_code == 422
    response = client.get("/api/v1/runs", params={"status": "exploded"}, headers=auth)
    assert response.status_code == 422 and "queued" in response.text
    assert client.get("/api/v1/runs/abc", headers=auth).status_code == 422
    assert client.get("/api/v1/runs/1/metrics", params={"after_step": "x"}, headers=auth).status_code == 422
