"""A comparison's status says how its runs ended (issue 8.10: one whose runs failed said "completed")."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.backend.harness import REPO_ROOT, service_env, wait_until
from tests.backend.test_cli import cli
from tests.worker.conftest import long_run, stack


def comparison(name: str, methods: list[str], **changes: Any) -> dict[str, Any]:
    base = {k: v for k, v in long_run(steps=3).items() if k != "method"}
    return {"name": name, "base": {**base, **changes.pop("base", {})}, "methods": methods, **changes}


@pytest.mark.slow
@pytest.mark.usefixtures("engine_available")
def test_comparison_status_is_partial_or_failed_when_runs_fail(tmp_path: Path) -> None:
    with stack("sqlite", tmp_path, VELORA_WORKER_MAX_TASKS_PER_CHILD="0") as services:
        client = services.client
        bodies = {
            # One run completes, the other is cancelled before any worker starts.
            "partial": comparison("one cancelled", ["full", "lora"]),
            # A hub model that is not on this machine, and the hub is off: every run fails.
            "failed": comparison(
                "all fail",
                ["full", "lora"],
                base={"model": {"source": "hub", "name": "velora-tests/no-such-model"}},
            ),
            "completed": comparison("all complete", ["full", "lora"]),
            # The base model's pre-training fails (its hub model is not here): the fine-tunes
            # waiting for it fail too, naming it, without ever being claimed.
            "failed base": {
                "preset": "cpu-smoke",
                "overrides": {
                    "methods": ["lora", "velora+lora"],
                    "device": "cpu",
                    "pretrain": {"model": {"source": "hub", "name": "velora-tests/no-such-base"}},
                },
            },
            "cancelled": comparison("all cancelled", ["full"], seeds=[0, 1]),
        }
        created = {}
        for expected, body in bodies.items():
            response = client.post("/api/v1/comparisons", json=body)
            assert response.status_code == 201, response.text
            assert response.json()["status"] == "queued"
            created[expected] = response.json()["id"]
        cancelled = client.post(f"/api/v1/comparisons/{created['cancelled']}/cancel")
        assert cancelled.status_code == 200 and cancelled.json()["status"] == "cancelled"
        partial_runs = client.get(f"/api/v1/comparisons/{created['partial']}").json()["runs"]
        lora_run = next(r["id"] for r in partial_runs if r["method"] == "lora")
        assert client.post(f"/api/v1/runs/{lora_run}/cancel").json()["status"] == "cancelled"

        services.worker(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")

        def finished() -> dict[str, dict[str, Any]] | None:
            bodies = {k: client.get(f"/api/v1/comparisons/{i}").json() for k, i in created.items()}
            return bodies if all(b["status"] not in ("queued", "running") for b in bodies.values()) else None

        final = wait_until(
            finished, timeout=300, message=lambda: f"comparisons unfinished\n{services.logs()}"
        )
        assert {expected: body["status"] for expected, body in final.items()} == {
            "partial": "partial",
            "failed": "failed",
            "completed": "completed",
            "cancelled": "cancelled",
            "failed base": "failed",
        }, {k: [(r["method"], r["status"], r["error"]) for r in b["runs"]] for k, b in final.items()}
        base, *dependents = final["failed base"]["runs"]
        assert base["role"] == "base" and base["status"] == "failed" and base["error"]
        for run in dependents:
            assert run["status"] == "failed" and run["attempts"] == 0 and run["started_at"] is None
            assert run["error"].startswith(
                f"its base model's pre-training, run {base['id']} (full), failed: "
            )
            assert " ".join(base["error"].split())[:200] in run["error"]  # the base's own error
        assert final["partial"]["status_counts"] == {"completed": 1, "cancelled": 1}
        assert final["failed"]["status_counts"] == {"failed": 2}
        # The list shows the same word as the detail (one definition).
        listed = {c["id"]: c["status"] for c in client.get("/api/v1/comparisons").json()["data"]}
        assert {listed[i] for i in created.values()} == {"partial", "failed", "completed", "cancelled"}
        assert listed[created["failed base"]] == "failed"

        # The CLI says it too, above the table, and exits 1 (not every run completed).
        spec = tmp_path / "failed.json"
        spec.write_text(json.dumps(bodies["failed"]))
        api = ["--api", str(client.base_url), "--token", services.token]
        done = subprocess.run(
            [*cli(), "submit", "--spec", str(spec), "--wait", *api],
            env=service_env(),
            capture_output=True,
            text=True,
            timeout=300,
            cwd=REPO_ROOT,
        )
        assert done.returncode == 1, done.stdout + done.stderr
        assert re.search(r"^Comparison \d+: failed \(2 failed\)$", done.stdout, re.M), done.stdout
