"""``/comparisons``: create from a spec or a preset, read back, list, cancel."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from backend import store
from backend.broker import Dispatcher
from backend.db import Database
from backend.settings import Settings
from tests.backend.conftest import tiny_comparison
from velora_core.contract.result import ComparisonStatus, ProgressEvent, RunResult, RunStatus
from velora_core.contract.spec import ComparisonSpec


def queued_messages(settings: Settings) -> dict[str, int]:
    dispatcher = Dispatcher(settings)
    try:
        health = dispatcher.check()
        assert health["ok"], health
        return health["queued_messages"]
    finally:
        dispatcher.close()


def test_create_comparison_from_spec_queues_every_run(
    client: TestClient, auth: dict, settings: Settings
) -> None:
    response = client.post("/api/v1/comparisons", json=tiny_comparison(seeds=[0, 1]), headers=auth)
    assert response.status_code == 201, response.text
    body = response.json()
    assert body["status"] == "queued"
    assert len(body["run_ids"]) == 6
    assert [(r["method"], r["seed"]) for r in body["runs"]] == [
        ("full", 0),
        ("lora", 0),
        ("velora+full", 0),
        ("full", 1),
        ("lora", 1),
        ("velora+full", 1),
    ]
    assert all(r["status"] == "queued" and r["queue"] == "cpu" for r in body["runs"])
    assert body["status_counts"] == {"queued": 6}
    expected = ComparisonSpec.model_validate(tiny_comparison(seeds=[0, 1]))
    assert [r["spec_hash"] for r in body["runs"]] == [s.spec_hash() for s in expected.runs()]
    assert queued_messages(settings) == {"gpu": 0, "cpu": 6}


def test_create_comparison_from_preset_with_overrides(
    client: TestClient, auth: dict, settings: Settings
) -> None:
    response = client.post(
        "/api/v1/comparisons",
        json={"preset": "cpu-smoke", "overrides": {"steps": 3, "methods": ["full", "velora+lora"]}},
        headers=auth,
    )
    assert response.status_code == 201, response.text
    body = response.json()
    assert body["preset"] == "cpu-smoke"
    methods = [r for r in body["runs"] if r["role"] == "method"]
    assert [r["method"] for r in methods] == ["full", "velora+lora"]
    assert body["spec"]["base"]["steps"] == 3
    assert all(r["total_steps"] == 3 for r in methods)
    # device "auto" goes to the default queue (gpu); only the base run is sent, the others wait for it.
    assert queued_messages(settings) == {"gpu": 1, "cpu": 0}


def test_a_fine_tune_comparison_lists_its_base_run_which_is_dispatched_alone(
    client: TestClient, auth: dict, db: Database, settings: Settings
) -> None:
    body = {"preset": "cpu-smoke", "overrides": {"methods": ["lora", "velora+lora"], "device": "cpu"}}
    created = client.post("/api/v1/comparisons", json=body, headers=auth)
    assert created.status_code == 201, created.text
    runs = created.json()["runs"]
    base = runs[0]
    assert (base["role"], base["method"], base["status"], base["depends_on"]) == (
        "base",
        "full",
        "queued",
        [],
    )
    assert [(r["role"], r["method"], r["status"], r["depends_on"]) for r in runs[1:]] == [
        ("method", "lora", "waiting", [base["id"]]),
        ("method", "velora+lora", "waiting", [base["id"]]),
    ]
    assert created.json()["status"] == "queued" and created.json()["status_counts"] == {
        "queued": 1,
        "waiting": 2,
    }
    assert [row["method"] for row in created.json()["summary"]] == ["lora", "velora+lora"]  # no base row
    assert queued_messages(settings) == {"gpu": 0, "cpu": 1}  # only the base run is sent
    listed = client.get("/api/v1/runs", params={"status": "waiting"}, headers=auth).json()
    assert sorted(r["id"] for r in listed["data"]) == [r["id"] for r in runs[1:]]
    # the base completes: its dependents are queued (by the worker, or the reaper's next pass)
    with db.write_session() as session:
        claim_id = store.claim_run(session, run_id=base["id"], worker_host="w@h", worker_device="cpu")
        result = RunResult(method="full", status=RunStatus.COMPLETED, artifact_path="/a/b")
        store.finish_run(session, run_id=base["id"], claim_id=claim_id, result=result)
        assert [i for i, _ in store.settle_waiting_runs(session)] == [r["id"] for r in runs[1:]]
    detail = client.get(f"/api/v1/comparisons/{created.json()['id']}", headers=auth).json()
    assert [r["status"] for r in detail["runs"]] == ["completed", "queued", "queued"]
    assert detail["status"] == "running"


def test_cancelling_a_base_run_cancels_the_runs_waiting_for_it(client: TestClient, auth: dict) -> None:
    created = client.post(
        "/api/v1/comparisons", json={"preset": "cpu-smoke", "overrides": {"methods": ["lora"]}}, headers=auth
    ).json()
    base_id, lora_id = created["run_ids"]
    assert client.post(f"/api/v1/runs/{base_id}/cancel", headers=auth).status_code == 200
    lora = client.get(f"/api/v1/runs/{lora_id}", headers=auth).json()
    assert lora["status"] == "cancelled"
    assert lora["error"].startswith(f"its base model's pre-training, run {base_id} (full), cancelled")


def test_read_comparison_has_runs_and_summary(client: TestClient, auth: dict, db: Database) -> None:
    created = client.post("/api/v1/comparisons", json=tiny_comparison(), headers=auth).json()
    full_id, lora_id, _ = created["run_ids"]
    memory = {
        "weight_bytes": 0,
        "trainable_bytes": 400,
        "gradient_bytes": 400,
        "optimizer_bytes": 800,
        "activation_bytes": 400,
    }
    with db.write_session() as session:
        for run_id, mem in (
            (full_id, memory),
            (
                lora_id,
                dict(memory, trainable_bytes=100, gradient_bytes=100, optimizer_bytes=200, weight_bytes=400),
            ),
        ):
            claim = store.claim_run(session, run_id=run_id, worker_host="w@h", worker_device="cpu")
            store.record_progress(
                session,
                run_id=run_id,
                claim_id=claim,
                state=ProgressEvent(phase="train", step=3, total_steps=3),
            )
            result = RunResult(
                method="x",
                status=RunStatus.COMPLETED,
                steps_done=3,
                memory=dict(
                    mem, predicted_activation_bytes=64, velora_measured_bytes=72, trainable_params=50
                ),
                eval={
                    "metric": "perplexity",
                    "value": 12.5,
                    "chance": 0.25,
                    "ci95": (11.9, 13.1),
                    "num_examples": 64,
                },
                throughput={"tokens_per_s": 1000.0, "train_time_s": 1.5},
            )
            assert store.finish_run(session, run_id=run_id, claim_id=claim, result=result)

    response = client.get(f"/api/v1/comparisons/{created['id']}", headers=auth)
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "running"  # one run still queued
    assert body["status_counts"] == {"completed": 2, "queued": 1}
    rows = {row["method"]: row for row in body["summary"]}
    assert rows["full"]["total_bytes"] == 2000
    assert rows["full"]["memory_vs_full"] == 1.0
    assert rows["lora"]["total_bytes"] == 1200
    assert rows["lora"]["memory_vs_full"] == 0.6
    assert rows["lora"]["eval_metric"] == "perplexity" and rows["lora"]["eval_value"] == 12.5
    assert rows["lora"]["eval_chance"] == 0.25
    assert {row["workload"] for row in body["summary"]} == {"pretrain"}
    assert rows["lora"]["eval_ci95"] == [11.9, 13.1] and rows["lora"]["eval_num_examples"] == 64
    assert rows["lora"]["eval_seeds_spread"] is None  # one seed: no spread
    assert rows["lora"]["predicted_activation_bytes"] == 64 and rows["lora"]["velora_measured_bytes"] == 72
    assert rows["lora"]["trainable_params"] == 50
    assert rows["velora+full"]["eval_chance"] is None and rows["velora+full"]["trainable_params"] is None
    assert body["results"] is None  # only on request
    inline = client.get(f"/api/v1/comparisons/{created['id']}?include=results", headers=auth).json()
    assert set(inline["results"]) == {str(full_id), str(lora_id)}
    for run_id in (full_id, lora_id):
        one = client.get(f"/api/v1/runs/{run_id}", headers=auth).json()
        assert inline["results"][str(run_id)] == one["result"]
    assert rows["velora+full"]["status"] == "queued" and rows["velora+full"]["total_bytes"] is None


def test_read_comparison_not_found(client: TestClient, auth: dict) -> None:
    response = client.get("/api/v1/comparisons/999", headers=auth)
    assert response.status_code == 404
    assert response.json() == {"detail": "Comparison not found"}


def test_list_comparisons_paginates_newest_first(client: TestClient, auth: dict) -> None:
    ids = [
        client.post(
            "/api/v1/comparisons", json=tiny_comparison(name=f"c{i}", methods=["full"]), headers=auth
        ).json()["id"]
        for i in range(5)
    ]
    page = client.get("/api/v1/comparisons", params={"offset": 1, "limit": 2}, headers=auth).json()
    assert page["count"] == 5
    assert [c["id"] for c in page["data"]] == [ids[3], ids[2]]
    assert [c["name"] for c in page["data"]] == ["c3", "c2"]
    last = client.get("/api/v1/comparisons", params={"offset": 4, "limit": 2}, headers=auth).json()
    assert [c["id"] for c in last["data"]] == [ids[0]]


def test_cancel_comparison_cancels_unfinished_runs(client: TestClient, auth: dict, db: Database) -> None:
    created = client.post("/api/v1/comparisons", json=tiny_comparison(), headers=auth).json()
    running_id = created["run_ids"][0]
    with db.write_session() as session:
        assert store.claim_run(session, run_id=running_id, worker_host="w@h", worker_device="cpu")
    response = client.post(f"/api/v1/comparisons/{created['id']}/cancel", headers=auth)
    assert response.status_code == 200, response.text
    runs = {r["id"]: r for r in response.json()["runs"]}
    assert runs[running_id]["status"] == "running" and runs[running_id]["cancel_requested"] is True
    assert [runs[i]["status"] for i in created["run_ids"][1:]] == ["cancelled", "cancelled"]


@pytest.mark.parametrize(
    ("statuses", "expected"),
    [
        ([], "queued"),
        (["queued", "queued"], "queued"),
        (["completed", "queued"], "running"),
        (["running", "failed"], "running"),
        (["completed", "completed"], "completed"),
        (["completed", "out_of_memory"], "partial"),
        (["completed", "cancelled"], "partial"),
        (["failed", "cancelled"], "failed"),
        (["out_of_memory"], "failed"),
        (["cancelled", "cancelled"], "cancelled"),
    ],
)
def test_comparison_status_from_run_statuses(statuses: list[str], expected: str) -> None:
    assert ComparisonStatus.of(statuses) == expected


@pytest.mark.parametrize("tracked", [False, True])
def test_api_cli_and_dashboard_agree_on_memory_vs_full_when_a_peak_is_measured(
    client: TestClient, auth: dict, db: Database, tracked: bool
) -> None:
    """On CUDA a run has a measured peak: every view ranks by it (was: the API by the total)."""
    from dashboard.summary import display_table, table_rows
    from velora_core.contract.table import comparison_table

    created = client.post(
        "/api/v1/comparisons", json=tiny_comparison(methods=["full", "lora"]), headers=auth
    ).json()
    components = {
        "trainable_bytes": 400,
        "gradient_bytes": 400,
        "optimizer_bytes": 800,
        "activation_bytes": 400,
    }
    memories = {
        "full": dict(components, peak_bytes=5000),  # total 2000
        "lora": dict(
            components, trainable_bytes=100, gradient_bytes=100, optimizer_bytes=200, peak_bytes=2000
        ),
    }
    if tracked:  # the tracker's peak (every device) wins over CUDA's allocator peak
        memories["full"]["measured_peak_bytes"], memories["lora"]["measured_peak_bytes"] = 4000, 1000
    results = []
    with db.write_session() as session:
        for run_id, method in zip(created["run_ids"], ["full", "lora"], strict=True):
            claim = store.claim_run(session, run_id=run_id, worker_host="w@h", worker_device="cuda:0")
            result = RunResult(
                method=method,
                status=RunStatus.COMPLETED,
                steps_done=3,
                memory=memories[method],
                eval={"metric": "perplexity", "value": 10.0},
                spec={"seed": 0},
            )
            assert store.finish_run(session, run_id=run_id, claim_id=claim, result=result)
            results.append(result)

    body = client.get(f"/api/v1/comparisons/{created['id']}", headers=auth).json()
    api = {row["method"]: row["memory_vs_full"] for row in body["summary"]}
    table = {row["method"]: row["memory_vs_full"] for row in body["table"]}
    cli = {row.method: row.memory_vs_full for row in comparison_table(results)}
    shown = display_table(table_rows(body), measured_peak=True)
    dashboard = {row["Method"]: row["vs full"] for row in shown}
    expected = {"full": 1.0, "lora": 0.25 if tracked else 0.4}  # 1000 / 4000; 2000 / 5000, not 1200 / 2000
    assert {row["tracked_step"] for row in body["summary"]} == {"first"}  # stored without a steady step
    assert api == table == cli == expected
    assert dashboard == {method: f"{ratio:.2f}×" for method, ratio in expected.items()}
    # The same table as files: CSV (one line per method) and JSON (with the per-seed detail).
    path = f"/api/v1/comparisons/{created['id']}/table"
    lines = client.get(path, headers=auth).text.splitlines()
    assert lines[0].startswith("method,techniques,rank,alpha,targets,groups,lr,") and len(lines) == 3
    as_json = client.get(path, params={"format": "json"}, headers=auth).json()
    assert [row["memory_vs_full"] for row in as_json["table"]] == [1.0, expected["lora"]]
    assert client.get("/api/v1/comparisons/999999/table", headers=auth).status_code == 404
    if tracked:
        assert {row["method"]: row["measured_peak_bytes"] for row in body["summary"]} == {
            "full": 4000,
            "lora": 1000,
        }
