"""``/runs``: single runs, filters and pagination, the incremental metrics series, cancellation."""

from __future__ import annotations

from fastapi.testclient import TestClient
from sqlalchemy import event

from backend import store
from backend.db import Database
from tests.backend.conftest import tiny_comparison, tiny_run
from velora_core.contract.result import EvalResult, ItemRecords, ProgressEvent, RunResult, RunStatus
from velora_core.contract.spec import RunSpec


def test_create_run(client: TestClient, auth: dict) -> None:
    response = client.post("/api/v1/runs", json=tiny_run(method="lora"), headers=auth)
    assert response.status_code == 201, response.text
    body = response.json()
    assert body["status"] == "queued" and body["comparison_id"] is None and body["method"] == "lora"
    assert body["spec_hash"] == RunSpec.model_validate(tiny_run(method="lora")).spec_hash()
    assert body["spec"]["method_config"]["lora"]["r"] == 8  # stored validated, with defaults filled in
    assert client.get(f"/api/v1/runs/{body['id']}", headers=auth).json()["spec"] == body["spec"]


def test_a_single_fine_tune_gets_its_base_run_and_waits_for_it(client: TestClient, auth: dict) -> None:
    from velora_core.contract.presets.comparisons import comparison_preset

    spec = comparison_preset("cpu-smoke", {"methods": ["lora"]}).runs()[0].model_dump(mode="json")
    response = client.post("/api/v1/runs", json=spec, headers=auth)
    assert response.status_code == 201, response.text
    run = response.json()
    assert (run["role"], run["status"], run["method"]) == ("method", "waiting", "lora")
    (base_id,) = run["depends_on"]
    base = client.get(f"/api/v1/runs/{base_id}", headers=auth).json()
    assert (base["role"], base["status"], base["spec"]["workload"]) == ("base", "queued", "pretrain")
    # the idempotent retry answers the run, and creates no second base
    again = client.post("/api/v1/runs", json=spec, headers={**auth, "Idempotency-Key": "k1"})
    retry = client.post("/api/v1/runs", json=spec, headers={**auth, "Idempotency-Key": "k1"})
    assert again.json()["id"] == retry.json()["id"]
    assert client.get("/api/v1/runs", headers=auth).json()["count"] == 4


def test_read_run_not_found(client: TestClient, auth: dict) -> None:
    for path in ("/api/v1/runs/424242", "/api/v1/runs/424242/metrics"):
        response = client.get(path, headers=auth)
        assert response.status_code == 404
        assert response.json() == {"detail": "Run not found"}
    assert client.post("/api/v1/runs/424242/cancel", headers=auth).status_code == 404


def test_list_runs_filters_and_paginates(client: TestClient, auth: dict, db: Database) -> None:
    first = client.post("/api/v1/comparisons", json=tiny_comparison(), headers=auth).json()
    second = client.post("/api/v1/comparisons", json=tiny_comparison(seeds=[0, 1, 2]), headers=auth).json()
    single = client.post("/api/v1/runs", json=tiny_run(), headers=auth).json()
    with db.write_session() as session:
        store.claim_run(session, run_id=first["run_ids"][0], worker_host="w@h", worker_device="cpu")
    total = 3 + 9 + 1

    everything = client.get("/api/v1/runs", params={"limit": 500}, headers=auth).json()
    assert everything["count"] == total
    assert [r["id"] for r in everything["data"]] == sorted(
        [*first["run_ids"], *second["run_ids"], single["id"]], reverse=True
    )

    seen = []
    for offset in range(0, total, 5):
        page = client.get("/api/v1/runs", params={"offset": offset, "limit": 5}, headers=auth).json()
        assert page["count"] == total and page["offset"] == offset and page["limit"] == 5
        seen += [r["id"] for r in page["data"]]
    assert seen == [r["id"] for r in everything["data"]]  # pages tile the list, no gaps or repeats

    by_comparison = client.get("/api/v1/runs", params={"comparison_id": second["id"]}, headers=auth).json()
    assert sorted(r["id"] for r in by_comparison["data"]) == sorted(second["run_ids"])
    by_method = client.get("/api/v1/runs", params={"method": "lora"}, headers=auth).json()
    assert by_method["count"] == 4 and {r["method"] for r in by_method["data"]} == {"lora"}
    running = client.get("/api/v1/runs", params={"status": "running"}, headers=auth).json()
    assert [r["id"] for r in running["data"]] == [first["run_ids"][0]]
    several = client.get(
        "/api/v1/runs", params=[("status", "running"), ("status", "queued")], headers=auth
    ).json()
    assert several["count"] == total
    combined = client.get(
        "/api/v1/runs",
        params={"comparison_id": second["id"], "method": "full", "status": "queued"},
        headers=auth,
    ).json()
    assert combined["count"] == 3
    assert "spec" not in everything["data"][0] and "result" not in everything["data"][0]


def test_metrics_are_incremental(client: TestClient, auth: dict, db: Database) -> None:
    run_id = client.post("/api/v1/runs", json=tiny_run(steps=10), headers=auth).json()["id"]
    with db.write_session() as session:
        claim = store.claim_run(session, run_id=run_id, worker_host="w@h", worker_device="cpu")
        points = [
            ProgressEvent(phase="train", step=s, total_steps=10, loss=10.0 - s, lr=1e-3, tokens_per_s=100.0)
            for s in (1, 2, 3, 4)
        ]
        store.record_progress(session, run_id=run_id, claim_id=claim, state=points[-1], points=points)

    response = client.get(f"/api/v1/runs/{run_id}/metrics", headers=auth).json()
    assert response["status"] == "running"
    assert [p["step"] for p in response["data"]] == [1, 2, 3, 4]
    assert response["data"][0] == {
        "step": 1,
        "loss": 9.0,
        "lr": 1e-3,
        "tokens_per_s": 100.0,
        "step_time_s": None,
        "memory_allocated_bytes": None,
    }
    assert response["last_step"] == 4

    newer = client.get(f"/api/v1/runs/{run_id}/metrics", params={"after_step": 2}, headers=auth).json()
    assert [p["step"] for p in newer["data"]] == [3, 4]
    nothing_new = client.get(f"/api/v1/runs/{run_id}/metrics", params={"after_step": 4}, headers=auth).json()
    assert nothing_new["data"] == [] and nothing_new["last_step"] == 4
    limited = client.get(f"/api/v1/runs/{run_id}/metrics", params={"limit": 3}, headers=auth).json()
    assert [p["step"] for p in limited["data"]] == [1, 2, 3] and limited["last_step"] == 3

    run = client.get(f"/api/v1/runs/{run_id}", headers=auth).json()
    assert (run["phase"], run["step"], run["total_steps"]) == ("train", 4, 10)


def test_cancel_queued_run_is_immediate(client: TestClient, auth: dict) -> None:
    run_id = client.post("/api/v1/runs", json=tiny_run(), headers=auth).json()["id"]
    response = client.post(f"/api/v1/runs/{run_id}/cancel", headers=auth)
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "cancelled" and body["finished_at"] is not None


def test_cancel_running_run_is_requested(client: TestClient, auth: dict, db: Database) -> None:
    run_id = client.post("/api/v1/runs", json=tiny_run(), headers=auth).json()["id"]
    with db.write_session() as session:
        claim = store.claim_run(session, run_id=run_id, worker_host="w@h", worker_device="cpu")
    body = client.post(f"/api/v1/runs/{run_id}/cancel", headers=auth).json()
    assert body["status"] == "running" and body["cancel_requested"] is True
    with db.write_session() as session:  # the worker learns it at its next progress write or heartbeat
        assert store.heartbeat_run(session, run_id=run_id, claim_id=claim) is True


def test_cancel_finished_run_conflicts(client: TestClient, auth: dict, db: Database) -> None:
    run_id = client.post("/api/v1/runs", json=tiny_run(), headers=auth).json()["id"]
    with db.write_session() as session:
        claim = store.claim_run(session, run_id=run_id, worker_host="w@h", worker_device="cpu")
        store.finish_run(
            session,
            run_id=run_id,
            claim_id=claim,
            result=RunResult(method="full", status=RunStatus.COMPLETED, steps_done=3),
        )
    response = client.post(f"/api/v1/runs/{run_id}/cancel", headers=auth)
    assert response.status_code == 409
    assert "already finished (completed)" in response.json()["detail"]


def test_metrics_page_is_one_database_query(client: TestClient, auth: dict, db: Database) -> None:
    run_id = client.post("/api/v1/runs", json=tiny_run(steps=10), headers=auth).json()["id"]
    with db.write_session() as session:
        claim = store.claim_run(session, run_id=run_id, worker_host="w@h", worker_device="cpu")
        points = [ProgressEvent(phase="train", step=s, total_steps=10, loss=1.0) for s in (1, 2, 3)]
        store.record_progress(session, run_id=run_id, claim_id=claim, state=points[-1], points=points)
    url = f"/api/v1/runs/{run_id}/metrics"
    client.get(url, headers=auth)  # the token is verified once, then cached
    statements: list[str] = []

    def record(conn, cursor, statement, *args) -> None:  # type: ignore[no-untyped-def]
        if not statement.startswith(("BEGIN", "COMMIT", "ROLLBACK")):  # SQLite's explicit transaction
            statements.append(statement)

    engine = client.app.state.db.engine
    event.listen(engine, "before_cursor_execute", record)
    try:
        for after_step, expected in ((-1, [1, 2, 3]), (1, [2, 3]), (3, [])):
            statements.clear()
            body = client.get(url, params={"after_step": after_step}, headers=auth).json()
            assert [p["step"] for p in body["data"]] == expected and body["status"] == "running"
            assert len(statements) == 1, statements
        statements.clear()
        assert client.get("/api/v1/runs/424242/metrics", headers=auth).status_code == 404
        assert len(statements) == 1, statements
    finally:
        event.remove(engine, "before_cursor_execute", record)


def test_item_records_are_downloadable_page_by_page(client: TestClient, auth: dict, db: Database) -> None:
    run_id = client.post("/api/v1/runs", json=tiny_run(), headers=auth).json()["id"]
    missing = client.get(f"/api/v1/runs/{run_id}/items", headers=auth)
    assert missing.status_code == 404 and "no item records" in missing.json()["detail"]
    assert client.get("/api/v1/runs/999999/items", headers=auth).status_code == 404
    items = ItemRecords(
        prompt_hash=["a1", "b2", "c3"],
        loglikelihoods=[[-1.0, -2.0], [-3.0, -0.5], [-1.5, -1.5]],
        choice=[0, 1, 0],
        answer=[0, 0, 1],
        correct=[True, False, False],
        extra={"shots": [5, 5, 3]},
    )
    evaluation = EvalResult(metric="mc_accuracy", value=1 / 3, num_examples=3, items=items)
    with db.write_session() as session:
        claim = store.claim_run(session, run_id=run_id, worker_host="w@h", worker_device="cpu")
        result = RunResult(method="full", status=RunStatus.COMPLETED, steps_done=3, eval=evaluation)
        store.finish_run(session, run_id=run_id, claim_id=claim, result=result)

    page = client.get(f"/api/v1/runs/{run_id}/items", params={"offset": 1, "limit": 1}, headers=auth).json()
    assert (page["count"], page["metric"], page["offset"]) == (3, "mc_accuracy", 1)
    assert page["data"] == [
        {
            "prompt_hash": "b2",
            "loglikelihoods": [-3.0, -0.5],
            "choice": 1,
            "answer": 0,
            "correct": False,
            "shots": 5,
        }
    ]
    download = client.get(f"/api/v1/runs/{run_id}/items", params={"format": "jsonl"}, headers=auth)
    assert download.headers["content-type"] == "application/x-ndjson"
    assert "attachment" in download.headers["content-disposition"]
    assert download.text == items.jsonl() and len(download.text.splitlines()) == 3
    bad = client.get(f"/api/v1/runs/{run_id}/items", params={"format": "csv"}, headers=auth)
    assert bad.status_code == 422
