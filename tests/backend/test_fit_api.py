"""``POST /fit``: bounded input (422s), a real small prediction in a subprocess, and a clear 504."""

from __future__ import annotations

import sys

import pytest
from fastapi.testclient import TestClient

from velora_core.contract.result import PEAK_COMPONENTS

pytestmark = pytest.mark.parametrize("backend_kind", ["sqlite"])  # no database work here

TINY = {"model": "tiny", "methods": ["lora", "velora+lora"], "micro_batch": 1, "seq_len": 16, "dtype": "fp32"}


@pytest.mark.parametrize(
    ("change", "loc", "words"),
    [
        ({"micro_batch": 0}, ["body", "micro_batch"], "greater than or equal to 1"),
        ({"seq_len": 10**6}, ["body", "seq_len"], "less than or equal to"),
        ({"methods": []}, ["body", "methods"], "at least 1"),
        ({"methods": ["lora", "dora"]}, ["body"], "unknown method(s) ['dora']"),
        ({"methods": ["lora", "lora"]}, ["body"], "must not repeat"),
        ({"gpu_gib": -1}, ["body", "gpu_gib"], "greater than 0"),
        ({"dtype": "int3"}, ["body", "dtype"], "'fp32', 'bf16' or 'fp16'"),
        ({"model": "../../etc"}, ["body", "model"], "is not a hub id"),
        ({"method_configs": {"full": {}}}, ["body"], "names methods not in the request"),
        ({"spec": {"workload": "finetune"}}, ["body"], "give either spec or"),
        ({"card_family": "kepler"}, ["body", "card_family"], "'hopper'"),
        ({"extra": 1}, ["body", "extra"], "Extra inputs are not permitted"),
        ({"dtype": "bf16", "autocast": "fp16"}, ["body"], "needs fp32 weights"),
        ({"autocast": "fp8"}, ["body", "autocast"], "'bf16' or 'fp16'"),
    ],
)
def test_bad_fit_requests_are_422(client: TestClient, auth: dict, change, loc, words) -> None:
    response = client.post("/api/v1/fit", json={**TINY, **change}, headers=auth)
    assert response.status_code == 422, response.text
    detail = response.json()["detail"]
    assert detail[0]["loc"] == loc and words in detail[0]["msg"]


def test_the_fit_subprocess_is_given_autocast_only_when_set(backend_kind: str) -> None:
    import json

    from backend.api.routes.fit import fit_input
    from velora_core.contract.fit_request import FitRequest

    assert "autocast" not in json.loads(fit_input(FitRequest(**TINY)))
    assert json.loads(fit_input(FitRequest(**{**TINY, "autocast": "bf16"})))["autocast"] == "bf16"


def test_fit_needs_a_token(client: TestClient) -> None:
    assert client.post("/api/v1/fit", json=TINY).status_code == 401


def test_a_shape_the_model_refuses_is_422_from_the_engine(client: TestClient, auth: dict) -> None:
    response = client.post("/api/v1/fit", json={**TINY, "seq_len": 4096}, headers=auth)
    assert response.status_code == 422
    assert "beyond the model's limit of 512 positions" in response.json()["detail"][0]["msg"]


@pytest.mark.slow
def test_a_real_small_fit(client: TestClient, auth: dict) -> None:
    response = client.post("/api/v1/fit", json={**TINY, "gpu_gib": 1}, headers=auth)
    assert response.status_code == 200, response.text
    body = response.json()
    assert [e["method"] for e in body["estimates"]] == TINY["methods"]
    for estimate in body["estimates"]:
        assert estimate["peak_bytes"] == sum(estimate[c] for c in PEAK_COMPONENTS)
        assert estimate["fits"] is True and estimate["max_micro_batch"] >= 1
    assert body["request"]["gpu_gib"] == 1.0 and body["request"]["methods"] == TINY["methods"]
    for estimate in body["estimates"]:
        assert estimate["reserved_bytes"] >= estimate["peak_bytes"] and estimate["context_bytes"] > 0


@pytest.mark.slow
def test_a_fit_of_a_spec_with_the_methods_settings(client: TestClient, auth: dict) -> None:
    """A RunSpec as run would read it, LoRA's rank included: the trainable bytes follow the rank."""
    spec = {
        "workload": "finetune",
        "model": {"source": "preset", "name": "tiny", "memory_only": True},
        "dataset": {"name": "stdlib-corpus"},
        "method": "lora",
        "seq_len": 16,
        "micro_batch": 1,
        "dtype": "fp32",
    }
    trainable = []
    for rank in (4, 8):
        body = {"spec": {**spec, "method_config": {"lora": {"r": rank}}}}
        response = client.post("/api/v1/fit", json=body, headers=auth)
        assert response.status_code == 200, response.text
        trainable.append(response.json()["estimates"][0]["trainable"])
    assert trainable[1] == 2 * trainable[0]


def test_a_spec_with_a_local_model_is_422(client: TestClient, auth: dict) -> None:
    spec = {
        "workload": "finetune",
        "model": {"source": "local", "name": "/etc", "memory_only": True},
        "dataset": {"name": "stdlib-corpus"},
    }
    response = client.post("/api/v1/fit", json={"spec": spec}, headers=auth)
    assert response.status_code == 422


def test_a_fit_past_the_time_limit_is_504(settings, db, auth: dict) -> None:  # type: ignore[no-untyped-def]
    from backend.api.main import create_app

    with TestClient(create_app(settings.model_copy(update={"fit_timeout_s": 0.2}))) as client:
        response = client.post("/api/v1/fit", json=TINY, headers=auth)
    assert response.status_code == 504
    assert "VELORA_FIT_TIMEOUT_S" in response.json()["detail"]


def test_an_api_installed_without_torch_says_so_with_a_503(
    client: TestClient, auth: dict, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "torch", None)  # as after `pip install '.[service]'`: no torch to import
    response = client.post("/api/v1/fit", json=TINY, headers=auth)
    assert response.status_code == 503
    assert "installed without torch" in response.json()["detail"]


def test_8bit_optimizer_methods_are_predicted(client: TestClient, auth: dict) -> None:
    """Issue 22.6: bitsandbytes builds its 8-bit quantisation maps from tensor values, which fake
    tensors refused (a 503). Each method gets a prediction with its optimizer state."""
    methods = ["full+8bit", "lora+8bit", "qlora+8bit"]
    response = client.post("/api/v1/fit", json={**TINY, "methods": methods}, headers=auth)
    assert response.status_code == 200, response.text
    estimates = response.json()["estimates"]
    assert [e["method"] for e in estimates] == methods
    assert all(e["peak_bytes"] == sum(e[c] for c in PEAK_COMPONENTS) > 0 for e in estimates)
