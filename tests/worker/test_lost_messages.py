"""A broker that loses its messages strands no run (issue 22.3): three runs sent to a Redis that was
then emptied stayed `queued` for ever while /health said "ok". Now /health names the runs the broker
does not hold, the reaper re-sends them, and a worker started afterwards runs each once."""

from __future__ import annotations

from pathlib import Path

import pytest
import redis

from tests.backend.harness import REDIS_TEST_URL, wait_until
from tests.worker.conftest import long_run, stack
from tests.worker.test_worker_lost import submit


def _health(services) -> dict:  # type: ignore[no-untyped-def]
    return services.client.get("/api/v1/health").json()


@pytest.mark.usefixtures("engine_available")
def test_runs_a_flushed_broker_lost_are_reported_and_sent_again(tmp_path: Path) -> None:
    with stack("postgres", tmp_path, VELORA_REDELIVER_AFTER_S="6", VELORA_HEALTH_CACHE_S="0") as services:
        runs = [submit(services, long_run(steps=2, seed=seed)) for seed in range(3)]
        assert _health(services)["broker"]["queued_messages"]["cpu"] == 3
        # The broker loses everything it held (FLUSHDB, eviction, a fail-over to an empty replica).
        client = redis.Redis.from_url(REDIS_TEST_URL)
        prefix = services.env["VELORA_REDIS_KEY_PREFIX"]
        keys = list(client.scan_iter(match=f"{prefix}*"))
        assert keys and client.delete(*keys)
        client.close()
        health = _health(services)
        assert health["broker"]["queued_messages"]["cpu"] == 0
        assert health["stranded_runs"] == {"cpu": 3} and health["status"] == "degraded", health

        # The reaper notices and sends them again, once they were sent VELORA_REDELIVER_AFTER_S ago.
        wait_until(
            lambda: _health(services)["broker"]["queued_messages"]["cpu"] == 3,
            timeout=30,
            message=lambda: f"runs were not re-sent: {_health(services)}\n{services.logs()}",
        )
        assert _health(services)["stranded_runs"] == {}
        services.worker()
        for run_id in runs:
            run = services.wait_run(
                run_id, lambda r: r["status"] not in ("queued", "running"), timeout=180, what="never ran"
            )
            assert run["status"] == "completed" and run["attempts"] == 1, run
