"""``/health`` and ``/presets``, and what happens when the broker is down at submission."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from backend import store
from backend.api.main import create_app
from backend.broker import Dispatcher
from backend.db import Database
from backend.reaper import reap_once
from backend.settings import Settings
from tests.backend.conftest import tiny_comparison, tiny_run
from tests.backend.harness import REPO_ROOT, free_port, service_env
from tests.backend.test_comparisons_api import queued_messages
from tests.worker.conftest import stack


def test_health_reports_database_broker_and_workers(
    client: TestClient, auth: dict, db: Database, backend_kind: str
) -> None:
    body = client.get("/api/v1/health", headers=auth).json()
    assert body["database"] == {"ok": True, "backend": backend_kind}
    assert body["broker"]["ok"] is True and body["broker"]["queued_messages"] == {"gpu": 0, "cpu": 0}
    assert body["status"] == "degraded"  # no worker yet
    with db.write_session() as session:
        store.upsert_worker(session, name="cpu0@h", host="h", pid=1, queues="cpu", device="cpu")
    time.sleep(client.app.state.settings.health_cache_s)  # the cached check ages
    response = client.get("/api/v1/health", headers=auth)
    assert response.status_code == 200 and response.json()["status"] == "ok"
    assert [w["name"] for w in response.json()["workers"]["list"]] == ["cpu0@h"]


def test_health_shows_probes_the_verdict_only(client: TestClient, backend_kind: str) -> None:
    """Issue 22.7: /health showed anyone the broker's URL and its errors."""
    body = client.get("/api/v1/health").json()
    assert body == {
        "status": "degraded",
        "database": {"ok": True},
        "broker": {"ok": True},
        "workers": {"alive": 0},
    }
    wrong = client.get("/api/v1/health", headers={"Authorization": "Bearer wrong"}).json()
    assert "url" not in wrong["broker"] and "list" not in wrong["workers"]


@pytest.mark.parametrize("kind", ["sqlite", "postgres"])
def test_health_answers_fast_hundreds_of_times_between_submissions(kind: str, tmp_path: Path) -> None:
    """Issue 8.1: each /health leaked a broker connection; call 15 waited 30 s and answered 503."""
    with stack(kind, tmp_path, VELORA_HEALTH_CACHE_S="0") as services:  # every call checks afresh
        client, expected_cpu, slowest = services.client, 0, 0.0
        for call in range(400):
            started = time.monotonic()
            health = client.get("/api/v1/health", timeout=10)
            slowest = max(slowest, time.monotonic() - started)
            assert health.status_code == 200, (call, health.text, services.logs())
            assert health.json()["broker"]["queued_messages"] == {"gpu": 0, "cpu": expected_cpu}
            if call % 20 == 0:  # a run and a comparison of three runs, alternately
                if call % 40 == 0:
                    created = client.post("/api/v1/runs", json=tiny_run(seed=call), timeout=10)
                    expected_cpu += 1
                else:
                    created = client.post(
                        "/api/v1/comparisons", json=tiny_comparison(seeds=[call]), timeout=10
                    )
                    expected_cpu += 3
                assert created.status_code == 201, (call, created.text)
        assert slowest < 2.0, f"slowest /health took {slowest:.2f} s"
        # Every submitted run reached the broker, and none is left waiting to be re-sent.
        assert queued_messages(services.settings) == {"gpu": 0, "cpu": expected_cpu} != {"gpu": 0, "cpu": 0}
        with services.db.session() as session:
            assert store.runs_to_dispatch(session, created_before=store.utcnow()) == []


def test_broker_down_is_503_and_submissions_still_land(settings: Settings, db: Database, auth: dict) -> None:
    down = settings.model_copy(update={"redis_url": f"redis://127.0.0.1:{free_port()}/0"})
    with TestClient(create_app(down)) as client:
        health = client.get("/api/v1/health")
        assert health.status_code == 503
        assert health.json()["status"] == "unavailable" and health.json()["broker"]["ok"] is False
        created = client.post("/api/v1/comparisons", json=tiny_comparison(), headers=auth)
        assert created.status_code == 201  # stored; the broker gets it when it is back
    with db.session() as session:
        assert len(store.runs_to_dispatch(session, created_before=store.utcnow())) == 3
    # The broker is back: the reaper's pass sends what never reached it.
    dispatcher = Dispatcher(settings.model_copy(update={"redispatch_after_s": 0.001}))
    reap_once(db, dispatcher, dispatcher.settings)
    dispatcher.close()
    assert queued_messages(settings)["cpu"] == 3
    with db.session() as session:
        assert store.runs_to_dispatch(session, created_before=store.utcnow()) == []


def test_presets_lists_what_forms_need(client: TestClient, auth: dict) -> None:
    body = client.get("/api/v1/presets", headers=auth).json()
    assert {"tiny", "llama-7b"} <= set(body["models"])
    assert body["models"]["llama-7b"]["hidden_size"] == 4096
    assert body["datasets"]["stdlib-corpus"]["kind"] == "lm"
    assert {"full", "lora", "qlora", "velora+full", "velora+lora", "velora+qlora"} <= set(body["methods"])
    assert {"full+gc", "lora+gc", "galore", "lora-fa"} <= set(body["methods"])
    parts = body["method_parts"]
    assert list(parts["bases"]) == ["full", "lora", "qlora", "galore", "lora-fa"]
    assert list(parts["techniques"]) == ["velora", "gc", "8bit", "offload"]
    assert parts["bases"]["galore"]["sections"]["galore"]["config_schema"]["properties"]["rank"]
    assert parts["techniques"]["offload"]["needs_cuda"] and parts["order"][:2] == ["velora", "<base>"]
    assert body["methods"]["galore"]["defaults"]["galore"]["update_proj_gap"] == 200
    velora_schema = body["methods"]["velora+lora"]["config_schema"]
    assert "velora" in velora_schema["properties"] and "lora" in velora_schema["properties"]
    assert {"cpu-smoke", "demo", "memory-7b"} <= set(body["comparisons"])
    # Defaults as the engine builds them: velora+lora's VeLoRA scale is 0.1 (the schema alone says 1.0).
    assert body["methods"]["velora+lora"]["defaults"]["velora"]["scale"] == 0.1
    assert body["methods"]["velora+full"]["defaults"]["velora"]["scale"] == 1.0
    from velora_core.contract.presets.comparisons import comparison_preset

    assert set(body["comparison_specs"]) == set(body["comparisons"])
    assert body["comparison_specs"]["cpu-smoke"] == comparison_preset("cpu-smoke").model_dump(mode="json")
    assert body["limits"]["max_steps"] == 1_000_000
    assert "RunSpec" in body["schemas"] and "ComparisonSpec" in body["schemas"]


def _refs(node: object) -> list[str]:
    if isinstance(node, dict):
        return [node["$ref"]] if "$ref" in node else [r for v in node.values() for r in _refs(v)]
    if isinstance(node, list):
        return [r for v in node for r in _refs(v)]
    return []


def test_openapi_every_ref_resolves_and_errors_are_documented(client: TestClient) -> None:
    schema = client.get("/api/v1/openapi.json").json()
    assert {"/api/v1/comparisons", "/api/v1/runs", "/api/v1/runs/{run_id}/metrics", "/api/v1/health"} <= set(
        schema["paths"]
    )
    refs = _refs(schema)
    assert (
        "#/components/schemas/ComparisonSpec" in refs and "#/components/schemas/ComparisonFromPreset" in refs
    )
    for ref in refs:
        node = schema
        for part in ref.removeprefix("#/").split("/"):
            assert part in node, f"{ref} does not resolve"
            node = node[part]
    paths = schema["paths"]
    documented = {(m.upper(), p): set(op["responses"]) for p, ops in paths.items() for m, op in ops.items()}
    # The Host guard (400) answers every path; the cross-site guard (403) every write.
    expected = {
        ("POST", "/api/v1/comparisons"): {"201", "400", "401", "403", "413", "415", "422", "429", "503"},
        ("POST", "/api/v1/runs/{run_id}/cancel"): {"200", "400", "401", "403", "404", "409", "422", "503"},
        ("GET", "/api/v1/comparisons/{comparison_id}"): {"200", "400", "401", "404", "422", "503"},
    }
    assert {key: documented[key] for key in expected} == expected
    assert documented[("GET", "/api/v1/health")] == {"200", "400", "503"}
    error = paths["/api/v1/runs/{run_id}"]["get"]["responses"]["404"]["content"]["application/json"]["schema"]
    assert error == {"$ref": "#/components/schemas/ErrorPublic"}
    assert schema["components"]["schemas"]["ErrorPublic"]["required"] == ["detail"]


def test_unsupported_methods_answer_405_naming_every_allowed_method(client: TestClient) -> None:
    for method, path, allowed in [
        ("OPTIONS", "/api/v1/runs", "GET, POST"),
        ("DELETE", "/api/v1/runs", "GET, POST"),
        ("PUT", "/api/v1/comparisons/1", "GET"),
        ("GET", "/api/v1/runs/1/cancel", "POST"),
    ]:
        response = client.request(method, path)
        assert (response.status_code, response.headers.get("allow")) == (405, allowed), (method, path)
        assert response.json() == {"detail": "Method Not Allowed"}


def test_docs_load_only_local_assets(client: TestClient) -> None:
    import re

    page = client.get("/docs")
    assert page.status_code == 200
    assets = re.findall(r'(?:src|href)="([^"]+)"', page.text)
    assert len(assets) >= 3, page.text  # the script, the stylesheet, the icon
    assert "url: '/api/v1/openapi.json'" in page.text
    for asset in assets:
        assert asset.startswith("/docs/assets/"), f"{asset} is not served by this API"
        assert client.get(asset).status_code == 200, asset
    script = client.get("/docs/assets/swagger-ui-bundle.js")
    assert script.headers["content-type"].startswith(("application/javascript", "text/javascript"))
    assert "SwaggerUIBundle" in script.text


def test_api_never_imports_torch(tmp_path) -> None:  # type: ignore[no-untyped-def]
    code = """
import sys
from fastapi.testclient import TestClient
from backend.api.main import create_app
from backend.settings import Settings
import tempfile
settings = Settings(data_dir=tempfile.mkdtemp(), api_token="vb_torch-free", allowed_hosts=["testserver"])
with TestClient(create_app(settings), headers={"Authorization": "Bearer vb_torch-free"}) as c:
    assert c.post("/api/v1/comparisons", json={"preset": "cpu-smoke"}).status_code == 201
    assert c.get("/api/v1/presets").status_code == 200
import backend.cli, worker.app, worker.tasks
assert "torch" not in sys.modules, "torch was imported"
"""
    done = subprocess.run(
        [sys.executable, "-c", code],
        cwd=REPO_ROOT,
        env=service_env(VELORA_DATA_DIR=str(tmp_path)),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-3000:]


def test_openapi_declares_the_bearer_scheme_where_a_token_is_needed(client: TestClient) -> None:
    """Swagger UI offers "Authorize" only for a declared scheme (was: none, and every "Try it out" got 401)."""
    schema = client.get("/api/v1/openapi.json").json()
    assert schema["components"]["securitySchemes"]["bearerAuth"]["scheme"] == "bearer"
    assert schema["paths"]["/api/v1/comparisons"]["get"]["security"] == [{"bearerAuth": []}]
    assert schema["paths"]["/api/v1/fit"]["post"]["security"] == [{"bearerAuth": []}]
    assert "security" not in schema["paths"]["/api/v1/health"]["get"]
