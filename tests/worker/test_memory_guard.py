"""A run never asks its host for more memory than it has (issue 22.2): a memory-only llama-7b full run
on the CPU was accepted and its worker grew towards ~108 GB on a 23 GB host."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.worker.conftest import long_run, stack


def _llama_7b_full_on_cpu() -> dict:
    return long_run(
        steps=2,
        model={"source": "preset", "name": "llama-7b", "memory_only": True},
        seq_len=128,
        micro_batch=1,
    )


@pytest.mark.usefixtures("engine_available")
def test_a_run_predicted_not_to_fit_is_out_of_memory_before_allocating(tmp_path: Path) -> None:
    with stack("sqlite", tmp_path, VELORA_WORKER_HOST_RESERVE_BYTES=str(2 * 1024**3)) as services:
        services.worker()
        response = services.client.post("/api/v1/runs", json=_llama_7b_full_on_cpu())
        assert response.status_code == 201, response.text
        run = services.wait_run(
            response.json()["id"], lambda r: r["status"] not in ("queued", "running"), timeout=240, what="ran"
        )
        assert run["status"] == "out_of_memory", run
        error = run["error"]
        assert error.startswith("refused before allocating: a steady training step is predicted to need ")
        assert "this host's available RAM" in error and "VELORA_WORKER_HOST_RESERVE_BYTES" in error
        result = services.client.get(f"/api/v1/runs/{run['id']}").json()["result"]
        assert result["failed_shape"]["phase"] == "predicted" and result["steps_done"] == 0


@pytest.mark.usefixtures("engine_available")
def test_a_run_past_the_memory_limit_ends_as_out_of_memory(tmp_path: Path) -> None:
    """When the prediction is off (here: not made), the memory limit ends the run, not the host."""
    limits = {"VELORA_WORKER_CHECK_FIT": "false", "VELORA_WORKER_MAX_RSS": str(3 * 1024**3)}
    with stack("sqlite", tmp_path, **limits) as services:
        worker, _ = services.worker()
        response = services.client.post("/api/v1/runs", json=_llama_7b_full_on_cpu())
        assert response.status_code == 201, response.text
        run = services.wait_run(
            response.json()["id"], lambda r: r["status"] not in ("queued", "running"), timeout=240, what="ran"
        )
        assert run["status"] == "out_of_memory", run
        assert "over the worker's memory limit" in run["error"], run["error"]
        assert worker.alive()
        small = services.client.post("/api/v1/runs", json=long_run(steps=2)).json()["id"]
        run = services.wait_run(
            small, lambda r: r["status"] == "completed", timeout=120, what="did not complete"
        )
