"""A worker killed mid-run (SIGKILL: machine loss) never leaves its run "running": the reaper fails
it with the reason, or requeues it for another worker. Cancellation stops a running run within a step."""

from __future__ import annotations

import signal
import time
from pathlib import Path

import pytest

from tests.worker.conftest import long_run, stack

# heartbeat timeout 6 s + reaper interval 1 s, with room for a loaded CI machine
REAP_BOUND_S = 30


def submit(services, body: dict) -> int:  # type: ignore[no-untyped-def]
    response = services.client.post("/api/v1/runs", json=body)
    assert response.status_code == 201, response.text
    return response.json()["id"]


def is_training(run: dict) -> bool:
    return run["status"] == "running" and run["phase"] == "train" and run["step"] >= 2


@pytest.mark.slow
@pytest.mark.usefixtures("engine_available")
def test_sigkilled_worker_fails_its_run_and_loses_nothing_else(tmp_path: Path) -> None:
    with stack("sqlite", tmp_path) as services:  # embedded default: fail lost runs, fresh process per run
        worker, name = services.worker()
        doomed = submit(services, long_run())
        waiting = submit(services, long_run(steps=3))
        services.wait_run(doomed, is_training, timeout=120, what="never started training")

        worker.kill(signal.SIGKILL)  # the whole process group: main process and pool child
        killed_at = time.monotonic()
        run = services.wait_run(
            doomed,
            lambda r: r["status"] != "running",
            timeout=REAP_BOUND_S,
            what="stayed running after its worker was killed",
        )
        assert time.monotonic() - killed_at < REAP_BOUND_S
        assert run["status"] == "failed"
        assert run["error"].startswith(f"worker lost: {name} (no heartbeat for over 6 s)")
        assert run["finished_at"] is not None
        metrics = services.client.get(f"/api/v1/runs/{doomed}/metrics").json()
        assert metrics["data"], "the curve recorded before the loss is kept"

        # The run queued behind it is still in the broker: a new worker picks it up.
        assert services.run(waiting)["status"] == "queued"
        services.worker()
        done = services.wait_run(
            waiting,
            lambda r: r["status"] not in ("queued", "running"),
            timeout=120,
            what="never finished on the new worker",
        )
        assert done["status"] == "completed" and done["attempts"] == 1


@pytest.mark.slow
@pytest.mark.usefixtures("engine_available")
def test_sigkilled_worker_run_is_requeued_and_completes(tmp_path: Path) -> None:
    with stack("postgres", tmp_path, VELORA_REQUEUE_LOST_RUNS="true") as services:
        worker, first_name = services.worker()
        run_id = submit(services, long_run(steps=150))
        services.wait_run(run_id, is_training, timeout=120, what="never started training")

        worker.kill(signal.SIGKILL)
        run = services.wait_run(
            run_id,
            lambda r: r["status"] == "queued",
            timeout=REAP_BOUND_S,
            what="was not requeued after its worker was killed",
        )
        assert f"requeued after attempt 1 of 3: worker lost: {first_name}" in run["message"]

        _, second_name = services.worker()
        run = services.wait_run(
            run_id,
            lambda r: r["status"] not in ("queued", "running"),
            timeout=240,
            what="never completed after the requeue",
        )
        assert run["status"] == "completed", run["error"]
        assert run["attempts"] == 2 and run["worker_host"] == second_name
        steps = [
            p["step"]
            for p in services.client.get(f"/api/v1/runs/{run_id}/metrics", params={"limit": 10_000}).json()[
                "data"
            ]
        ]
        assert steps == list(range(1, 151))  # one clean curve from the attempt that finished


@pytest.mark.slow
@pytest.mark.usefixtures("engine_available")
def test_cancel_stops_a_running_run(tmp_path: Path) -> None:
    with stack("sqlite", tmp_path) as services:
        services.worker()
        run_id = submit(services, long_run())
        services.wait_run(run_id, is_training, timeout=120, what="never started training")

        response = services.client.post(f"/api/v1/runs/{run_id}/cancel")
        assert response.status_code == 200 and response.json()["cancel_requested"] is True
        asked_at = time.monotonic()
        run = services.wait_run(
            run_id, lambda r: r["status"] != "running", timeout=20, what="kept running after cancellation"
        )
        # The worker sees the request at its next progress write (every 0.2 s here) or heartbeat.
        assert time.monotonic() - asked_at < 20
        assert run["status"] == "cancelled"
        assert run["result"]["status"] == "cancelled" and run["result"]["error"] == "cancelled on request"
        assert 2 <= run["result"]["steps_done"] < 100_000
        again = services.client.post(f"/api/v1/runs/{run_id}/cancel")
        assert again.status_code == 409


@pytest.mark.slow
@pytest.mark.usefixtures("engine_available")
def test_sigterm_worker_stops_its_run_and_exits(tmp_path: Path) -> None:
    """A warm shutdown does not wait hours for the run: the run stops at its next step, as cancelled."""
    with stack("sqlite", tmp_path) as services:
        worker, name = services.worker()
        run_id = submit(services, long_run())
        services.wait_run(run_id, is_training, timeout=120, what="never started training")

        worker.process.send_signal(signal.SIGTERM)  # the main process only, as `docker stop` does
        run = services.wait_run(
            run_id,
            lambda r: r["status"] != "running",
            timeout=20,
            what="kept running after its worker was told to shut down",
        )
        assert run["status"] == "cancelled"
        assert run["error"] == f"cancelled: worker {name} shut down"
        assert worker.process.wait(30) == 0, worker.log_tail()
