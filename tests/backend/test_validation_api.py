"""Bad input: a 4xx a person can act on, never a 500, and never a half-created comparison."""

from __future__ import annotations

import json

import pytest
from fastapi.testclient import TestClient

from backend.db import Database
from backend.tables import Comparison, Run
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


@pytest.mark.parametrize(
    ("methods", "message"),
    [
        (["lora-fa+velora"], "'lora-fa' and 'velora' do not combine: LoRA-FA freezes lora_A"),
        (["lora+gc+gc"], "repeats the technique(s) ['gc']"),
        (["lora+velora", "velora+lora"], "methods must not repeat (after putting their parts in order)"),
        (["lora+offload"], "needs a CUDA device, not 'cpu'"),
        (["lora+warp"], "unknown method(s) ['lora+warp']; a method is a base (full, lora, qlora, galore"),
    ],
)
def test_a_bad_composition_is_a_422_naming_the_problem(
    client: TestClient, auth: dict, db: Database, methods: list[str], message: str
) -> None:
    response = client.post("/api/v1/comparisons", json=tiny_comparison(methods=methods), headers=auth)
    assert response.status_code == 422
    assert message in messages(response)
    assert nothing_stored(db)


def test_a_composed_name_is_stored_in_its_canonical_spelling(client: TestClient, auth: dict) -> None:
    response = client.post("/api/v1/runs", json=tiny_run(method="gc+lora+velora"), headers=auth)
    assert response.status_code == 201, response.text
    assert response.json()["method"] == "velora+lora+gc"
    assert set(response.json()["spec"]["method_config"]) == {"lora", "velora"}


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


# ---------------------------------------------------------------------------------------------------
# Integers beyond what a column holds, NaN, content types


HUGE = 2**70


@pytest.mark.parametrize(
    ("method", "path", "params"),
    [
        ("GET", f"/api/v1/runs/{HUGE}", {}),
        ("GET", f"/api/v1/runs/{2**31}", {}),
        ("GET", f"/api/v1/runs/{HUGE}/metrics", {}),
        ("GET", "/api/v1/runs/1/metrics", {"after_step": HUGE}),
        ("GET", "/api/v1/runs/1/metrics", {"limit": HUGE}),
        ("GET", f"/api/v1/comparisons/{HUGE}", {}),
        ("GET", "/api/v1/runs", {"comparison_id": HUGE}),
        ("GET", "/api/v1/runs", {"offset": HUGE}),
        ("GET", "/api/v1/runs", {"limit": HUGE}),
        ("GET", "/api/v1/comparisons", {"offset": HUGE}),
        ("GET", "/api/v1/runs/0", {}),
        ("POST", f"/api/v1/runs/{HUGE}/cancel", {}),
        ("POST", f"/api/v1/comparisons/{HUGE}/cancel", {}),
    ],
)
def test_integers_beyond_the_columns_are_422(client: TestClient, auth: dict, method, path, params) -> None:
    response = client.request(method, path, params=params, headers=auth)
    assert response.status_code == 422, response.text
    assert "less than or equal to" in messages(response) or "greater than or equal to 1" in messages(response)


def test_openapi_shows_the_integer_bounds(client: TestClient) -> None:
    paths = client.get("/api/v1/openapi.json").json()["paths"]
    run_id = next(p for p in paths["/api/v1/runs/{run_id}"]["get"]["parameters"] if p["name"] == "run_id")
    assert (run_id["schema"]["minimum"], run_id["schema"]["maximum"]) == (1, 2**31 - 1)
    listing = {p["name"]: p["schema"] for p in paths["/api/v1/runs"]["get"]["parameters"]}
    assert listing["offset"]["maximum"] == 2**31 - 1 and listing["limit"]["maximum"] == 500
    assert listing["comparison_id"]["anyOf"][0]["maximum"] == 2**31 - 1
    metrics = {p["name"]: p["schema"] for p in paths["/api/v1/runs/{run_id}/metrics"]["get"]["parameters"]}
    assert metrics["after_step"]["maximum"] == 2**31 - 1


@pytest.mark.parametrize("raw", [b"NaN", b"Infinity", b"-Infinity"])
def test_non_finite_numbers_say_finite(client: TestClient, auth: dict, db: Database, raw: bytes) -> None:
    body = json.dumps(tiny_run(optimizer={"lr": 0.001})).replace("0.001", raw.decode()).encode()
    response = client.post("/api/v1/runs", content=body, headers={**auth, "Content-Type": "application/json"})
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["body", "optimizer", "lr"]
    assert messages(response) == "Input should be a finite number"
    assert nothing_stored(db)


@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded", "text/json"])
def test_json_sent_with_another_content_type_is_415(
    client: TestClient, auth: dict, db: Database, content_type: str
) -> None:
    for path, body in (("/api/v1/runs", tiny_run()), ("/api/v1/comparisons", tiny_comparison())):
        response = client.post(path, content=json.dumps(body), headers={**auth, "Content-Type": content_type})
        assert response.status_code == 415, response.text
        assert "application/json" in response.json()["detail"]
    assert nothing_stored(db)
    response = client.post(
        "/api/v1/runs",
        content=json.dumps(tiny_run()),
        headers={**auth, "Content-Type": "application/json; charset=utf-8"},
    )
    assert response.status_code == 201


# ---------------------------------------------------------------------------------------------------
# Preset overrides of the wrong shape


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"base": "x"}, "overrides.base must be an object"),
        ({"base": [1]}, "overrides.base must be an object"),
        ({"pretrain": 5}, "overrides.pretrain must be an object"),
        ({"methods": 5}, "overrides.methods: Input should be a valid array"),
        ({"methods": [5]}, "overrides.methods.0: Input should be a valid string"),
        ({"seeds": "x"}, "overrides.seeds: Input should be a valid array"),
        ({"model": "x"}, "overrides.base.model: Input should be an object"),
        ({"optimizer": {"lr": "fast"}}, "overrides.base.optimizer.lr: Input should be a valid number"),
    ],
)
def test_malformed_overrides_are_422_naming_the_field(
    client: TestClient, auth: dict, db: Database, overrides: dict, message: str
) -> None:
    response = client.post(
        "/api/v1/comparisons", json={"preset": "cpu-smoke", "overrides": overrides}, headers=auth
    )
    assert response.status_code == 422, response.text
    assert response.json()["detail"][0]["loc"] == ["body", "overrides"]
    assert message in messages(response)
    assert "not iterable" not in messages(response)
    assert nothing_stored(db)


# ---------------------------------------------------------------------------------------------------
# Pre-training chains and checks that need the model's layers


def _pretrain(model: dict, **changes: object) -> dict:
    return dict(tiny_run(model=model), **changes)


def test_pretraining_is_one_level(client: TestClient, auth: dict, db: Database) -> None:
    model: dict = {"source": "preset", "name": "tiny"}
    for _ in range(10):  # 20 levels of JSON: under the edge's depth limit, so the spec says why
        model = {"source": "artifact", "pretrain": _pretrain(model)}
    response = client.post("/api/v1/runs", json=tiny_run(workload="finetune", model=model), headers=auth)
    assert response.status_code == 422
    assert "one level of pre-training" in messages(response)
    one_level = {"source": "artifact", "pretrain": _pretrain({"source": "preset", "name": "tiny"})}
    response = client.post("/api/v1/runs", json=tiny_run(workload="finetune", model=one_level), headers=auth)
    assert response.status_code == 201, response.text


def test_server_limits_apply_to_the_pretraining_run(settings, db: Database, auth: dict) -> None:  # type: ignore[no-untyped-def]
    from backend.api.main import create_app

    strict = settings.model_copy(update={"max_steps": 50, "max_micro_batch": 4, "max_seq_len": 64})
    pretrain = _pretrain({"source": "preset", "name": "tiny"}, steps=51, micro_batch=8, seq_len=128)
    body = tiny_comparison()
    body["base"].update(workload="finetune", model={"source": "artifact", "pretrain": pretrain})
    with TestClient(create_app(strict)) as client:
        response = client.post("/api/v1/comparisons", json=body, headers=auth)
        assert response.status_code == 422
        detail = response.json()["detail"]
        by_field = {tuple(e["loc"][-1:]): e for e in detail}
        assert by_field[("steps",)]["loc"] == ["body", "base", "model", "pretrain", "steps"]
        text = messages(response)
        assert "steps=51 exceeds this server's limit of 50 (VELORA_MAX_STEPS)" in text
        assert "micro_batch=8 exceeds this server's limit of 4 (VELORA_MAX_MICRO_BATCH)" in text
        assert "seq_len=128 exceeds this server's limit of 64 (VELORA_MAX_SEQ_LEN)" in text
        assert len(detail) == 3  # once, not once per method
    assert nothing_stored(db)


def test_regex_targets_are_checked_against_the_layers(client: TestClient, auth: dict, db: Database) -> None:
    configs = {"velora+full": {"velora": {"num_groups": 4000, "target_modules": [r".*\.down_proj"]}}}
    response = client.post("/api/v1/comparisons", json=tiny_comparison(method_configs=configs), headers=auth)
    assert response.status_code == 422
    assert (
        "'model.layers.0.mlp.down_proj': num_groups=4000 exceeds the layer's 352 input features"
        in messages(response)
    )
    configs = {"velora+full": {"velora": {"target_modules": [r"model\.layers\.\d+\.attn\.v_proj"]}}}
    response = client.post("/api/v1/comparisons", json=tiny_comparison(method_configs=configs), headers=auth)
    assert response.status_code == 422 and "match no module" in messages(response)
    assert nothing_stored(db)
