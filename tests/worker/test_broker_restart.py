"""Redis restarting during a run loses no run: the running one goes on training (and still answers a
cancellation afterwards), the queued one still runs, and one submitted while Redis was down reaches
it once it is back (a private Redis with AOF on)."""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path

import pytest
import redis

from tests.backend.harness import ServiceProcess, free_port, unavailable, wait_until
from tests.worker.conftest import long_run, stack
from tests.worker.test_worker_lost import is_training, submit


def start_redis(port: int, data_dir: Path) -> ServiceProcess:
    # Persistence as docs/service.md recommends for the cluster broker (append-only file, fsync always).
    argv = [
        "redis-server",
        "--port",
        str(port),
        "--bind",
        "127.0.0.1",
        "--dir",
        str(data_dir),
        "--appendonly",
        "yes",
        "--appendfsync",
        "always",
        "--save",
        "",
    ]
    server = ServiceProcess("redis", argv, {"PATH": "/usr/bin:/bin:/usr/local/bin"}, data_dir / "redis.log")
    client = redis.Redis(port=port, socket_connect_timeout=1)

    def up() -> bool:
        try:
            return bool(client.ping())
        except redis.RedisError:
            return False

    wait_until(up, timeout=20, message=lambda: f"redis-server did not start:\n{server.log_tail()}")
    client.close()
    return server


@pytest.mark.slow
@pytest.mark.usefixtures("engine_available")
def test_redis_restart_during_a_run_loses_no_run(tmp_path: Path) -> None:
    if shutil.which("redis-server") is None:
        unavailable("redis-server (to run a private, restartable Redis)")
    port = free_port()
    redis_dir = tmp_path / "redis"
    redis_dir.mkdir()
    server = start_redis(port, redis_dir)
    try:
        with stack("postgres", tmp_path, REDIS_URL=f"redis://127.0.0.1:{port}/0") as services:
            services.worker()
            running = submit(services, long_run())
            queued = submit(services, long_run(steps=3))
            services.wait_run(running, is_training, timeout=120, what="never started training")

            subprocess.run(
                ["redis-cli", "-p", str(port), "shutdown"], check=False, capture_output=True, timeout=30
            )
            server.process.wait(30)
            before = services.run(running)
            during = submit(services, long_run(steps=3))  # stored now, sent once the broker is back
            time.sleep(2)
            after = services.run(running)  # training goes on without the broker
            assert after["status"] == "running" and after["step"] > before["step"], (before, after)
            server = start_redis(port, redis_dir)
            back = services.run(running)
            services.wait_run(
                running,
                lambda r: r["step"] > back["step"] + 5,
                timeout=60,
                what="stopped training after Redis came back",
            )
            # The worker is still in charge of the run: a cancellation reaches it and finishes it.
            assert services.client.post(f"/api/v1/runs/{running}/cancel").status_code == 200
            run = services.wait_run(
                running,
                lambda r: r["status"] != "running",
                timeout=30,
                what="ignored the cancellation after the Redis restart",
            )
            assert run["status"] == "cancelled" and run["attempts"] == 1

            for run_id in (queued, during):
                run = services.wait_run(
                    run_id,
                    lambda r: r["status"] not in ("queued", "running"),
                    timeout=240,
                    what="did not finish after the Redis restart",
                )
                assert run["status"] == "completed", (run_id, run["error"])
                assert run["attempts"] == 1, run_id
    finally:
        server.stop()
