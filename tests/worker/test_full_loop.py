"""The whole service over HTTP with a real worker: submit ``cpu-smoke``, watch the metrics stream in,
read the finished comparison. Once on the embedded default, once on PostgreSQL + Redis."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from backend.broker import Dispatcher
from tests.backend.harness import cpu_smoke_overrides, wait_until
from tests.worker.conftest import stack

ALL_METHODS = ["full", "lora", "qlora", "velora+full", "velora+lora", "velora+qlora"]
STEPS = 6


@pytest.mark.slow
@pytest.mark.usefixtures("engine_available")
@pytest.mark.parametrize(
    ("kind", "methods"),
    [
        ("sqlite", ALL_METHODS),
        # The cluster shape proves the same loop; two methods keep CI within its time budget.
        ("postgres", ["full", "velora+qlora"]),
    ],
)
def test_cpu_smoke_end_to_end(kind: str, methods: list[str], tmp_path: Path) -> None:
    # Reusing the pool process keeps CI fast (torch is imported once); the default is a fresh
    # process per run, which the worker-loss tests exercise.
    with stack(kind, tmp_path, VELORA_WORKER_MAX_TASKS_PER_CHILD="0") as services:
        _, worker_name = services.worker()
        client = services.client
        overrides = cpu_smoke_overrides(steps=STEPS, progress_every=1, methods=methods)
        request = {"preset": "cpu-smoke", "overrides": overrides}
        headers = {"Idempotency-Key": f"cpu-smoke-{kind}"}
        response = client.post("/api/v1/comparisons", json=request, headers=headers)
        assert response.status_code == 201, response.text
        comparison = response.json()
        # The base model's pre-training is a run of its own, first; the fine-tunes wait for it.
        base, *runs = comparison["runs"]
        assert (base["role"], base["status"]) == ("base", "queued")
        assert [r["method"] for r in runs] == methods
        assert all(r["status"] == "waiting" and r["depends_on"] == [base["id"]] for r in runs)
        run_ids = [r["id"] for r in runs]

        # A retried submission answers with the same comparison and queues nothing new.
        again = client.post("/api/v1/comparisons", json=request, headers=headers)
        assert again.status_code == 201 and again.json()["id"] == comparison["id"]
        assert client.get("/api/v1/runs", params={"limit": 1}).json()["count"] == len(methods) + 1

        # Watch the curves stream in, as a dashboard would: incremental polls per run.
        last_step = dict.fromkeys(run_ids, -1)
        points: dict[int, list[int]] = {run_id: [] for run_id in run_ids}
        seen_while_running: set[int] = set()
        deadline = time.monotonic() + 420
        while True:
            for run_id in run_ids:
                page = client.get(
                    f"/api/v1/runs/{run_id}/metrics", params={"after_step": last_step[run_id]}
                ).json()
                if page["data"]:
                    points[run_id] += [p["step"] for p in page["data"]]
                    last_step[run_id] = page["last_step"]
                    if page["status"] == "running":
                        seen_while_running.add(run_id)
            detail = client.get(f"/api/v1/comparisons/{comparison['id']}").json()
            if detail["status"] != "queued" and detail["status"] != "running":
                break
            assert time.monotonic() < deadline, (
                f"comparison unfinished: {detail['status_counts']}\n{services.logs()}"
            )
            time.sleep(0.2)

        assert detail["status"] == "completed"
        assert detail["status_counts"] == {"completed": len(methods) + 1}, (
            [(r["method"], r["error"]) for r in detail["runs"]],
            services.logs(),
        )
        assert seen_while_running, "no metrics were seen while a run was still running"
        for run_id in run_ids:
            assert points[run_id] == list(range(1, STEPS + 1)), (
                run_id,
                points[run_id],
            )  # every step once, in order

        rows = {row["method"]: row for row in detail["summary"]}
        assert set(rows) == set(methods)
        for method, row in rows.items():
            assert row["steps_done"] == STEPS, method
            assert row["eval_metric"] == "mc_accuracy" and 0.0 <= row["eval_value"] <= 1.0, method
            assert row["total_bytes"] > 0 and row["tokens_per_s"] > 0, method
        assert rows["full"]["memory_vs_full"] == 1.0
        for method in set(methods) - {"full"}:  # every memory-saving method saves memory
            assert rows[method]["memory_vs_full"] < 1.0, (method, rows[method])

        for run in detail["runs"]:
            assert run["worker_host"] == worker_name and run["attempts"] == 1
            assert run["started_at"] <= run["finished_at"]
        # No fine-tune started before its base model was saved; the base has its own result.
        base_detail = services.run(base["id"])
        assert base_detail["result"]["eval"]["metric"] == "perplexity"
        assert base_detail["artifact_path"] and base_detail["result"]["loss_curve"]
        assert all(run["started_at"] >= base_detail["finished_at"] for run in detail["runs"][1:])
        assert [row["method"] for row in detail["summary"]] == methods  # not a row of the table
        full = services.run(run_ids[0])
        assert full["result"]["status"] == "completed" and full["result"]["spec_hash"] == full["spec_hash"]
        assert full["worker_device"].startswith("cpu")

        # A duplicate delivery of a finished run's task changes nothing (the task is idempotent).
        dispatcher = Dispatcher(services.settings)
        assert dispatcher.dispatch([(run_ids[0], comparison["runs"][0]["queue"])]) == [run_ids[0]]
        dispatcher.close()
        wait_until(
            lambda: "not taken: completed" in services.processes[-1].log_path.read_text(),
            timeout=30,
            message=lambda: f"the duplicate message was not consumed:\n{services.logs()}",
        )
        assert services.run(run_ids[0])["attempts"] == 1
