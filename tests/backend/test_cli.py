"""``velora-bench token create`` and ``velora-bench up`` (real processes)."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.backend.harness import REPO_ROOT, free_port, service_env, wait_until


def cli() -> list[str]:
    """``velora-bench`` when the engine's CLI is installed, else this package's own entry."""
    exe = shutil.which("velora-bench", path=str(Path(sys.executable).parent))
    return [exe] if exe else [sys.executable, "-m", "backend.cli"]


def test_token_create_prints_a_working_token(tmp_path: Path) -> None:
    env = service_env()
    done = subprocess.run(
        [*cli(), "token", "create", "--name", "ci", "--data-dir", str(tmp_path)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO_ROOT,
    )
    assert done.returncode == 0, done.stderr
    token = done.stdout.strip()
    assert token.startswith("vb_") and "\n" not in token
    assert "shown only this once" in done.stderr

    listing = subprocess.run(
        [*cli(), "token", "list", "--data-dir", str(tmp_path)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO_ROOT,
    )
    assert "ci" in listing.stdout and token[:10] in listing.stdout and token not in listing.stdout

    from fastapi.testclient import TestClient

    from backend.api.main import create_app
    from backend.settings import Settings

    with TestClient(create_app(Settings(data_dir=tmp_path, reaper_enabled=False))) as client:
        assert client.get("/api/v1/runs", headers={"Authorization": f"Bearer {token}"}).status_code == 200
        assert client.get("/api/v1/runs").status_code == 401

    revoke = subprocess.run(
        [*cli(), "token", "revoke", "1", "--data-dir", str(tmp_path)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO_ROOT,
    )
    assert revoke.returncode == 0
    again = subprocess.run(
        [*cli(), "token", "revoke", "1", "--data-dir", str(tmp_path)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO_ROOT,
    )
    assert again.returncode == 2 and "no active token" in again.stderr


def test_up_refuses_a_busy_port(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        done = subprocess.run(
            [*cli(), "up", "--data-dir", str(tmp_path), "--api-port", str(port), "--no-dashboard"],
            env=service_env(),
            capture_output=True,
            text=True,
            timeout=120,
            cwd=REPO_ROOT,
        )
    assert done.returncode == 2
    assert f"port {port} on 127.0.0.1 is in use" in done.stderr and "--api-port" in done.stderr


@pytest.mark.slow
def test_up_starts_everything_and_stops_cleanly(tmp_path: Path) -> None:
    """API, worker and (when dashboard/app.py exists) the dashboard come up; Ctrl-C (SIGINT; SIGTERM
    takes the same path) stops them all, and the run in flight stops at its next step, recorded as
    cancelled (a worker that does not stop in --stop-timeout is killed and its run marked failed)."""
    from backend.cli import dashboard_app

    port, dashboard_port = free_port(), free_port()
    with_dashboard = dashboard_app() is not None
    log = tmp_path / "up.log"
    argv = [
        *cli(),
        "up",
        "--data-dir",
        str(tmp_path / "data"),
        "--api-port",
        str(port),
        "--dashboard-port",
        str(dashboard_port),
        "--stop-timeout",
        "3",
    ]
    with log.open("wb") as out:
        up = subprocess.Popen(
            argv,
            env=service_env(),
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=REPO_ROOT,
            start_new_session=True,
        )
    try:

        def healthy() -> dict | None:
            if up.poll() is not None:
                pytest.fail(f"up exited with {up.returncode}:\n{log.read_text()}")
            try:
                body = httpx.get(f"http://127.0.0.1:{port}/api/v1/health", timeout=2).json()
            except httpx.HTTPError:
                return None
            return body if body["status"] == "ok" and "Press Ctrl-C to stop." in log.read_text() else None

        body = wait_until(healthy, timeout=90, message=lambda: f"up never became healthy:\n{log.read_text()}")
        worker_pid = body["workers"]["list"][0]["pid"]  # localhost: trusted, so details are shown
        output = log.read_text()
        assert f"API:        http://127.0.0.1:{port}/api/v1" in output
        if with_dashboard:
            assert f"Dashboard:  http://127.0.0.1:{dashboard_port}" in output

            def dashboard_up() -> bool:
                try:
                    return (
                        httpx.get(f"http://127.0.0.1:{dashboard_port}/_stcore/health", timeout=2).text == "ok"
                    )
                except httpx.HTTPError:
                    return False

            wait_until(
                dashboard_up, timeout=90, message=lambda: f"the dashboard never answered:\n{log.read_text()}"
            )
        # Writes work from localhost without a token (the embedded default).
        created = httpx.post(
            f"http://127.0.0.1:{port}/api/v1/comparisons", json={"preset": "cpu-smoke"}, timeout=10
        )
        assert created.status_code == 201
        first_run = created.json()["run_ids"][0]
        wait_until(
            lambda: (
                httpx.get(f"http://127.0.0.1:{port}/api/v1/runs/{first_run}", timeout=5).json()["phase"]
                in ("train", "base-train")
            ),
            timeout=90,
            message=lambda: f"the worker never started training run {first_run}:\n{log.read_text()}",
        )

        started = time.monotonic()
        up.send_signal(signal.SIGINT)
        assert up.wait(60) == 0, log.read_text()
        assert time.monotonic() - started < 60
    finally:
        if up.poll() is None:
            os.killpg(up.pid, signal.SIGKILL)
            up.wait()
    assert "Stopped." in log.read_text()
    with pytest.raises(ProcessLookupError):
        os.kill(worker_pid, 0)
    for gone in (port, dashboard_port):
        with pytest.raises(httpx.ConnectError):
            httpx.get(f"http://127.0.0.1:{gone}/", timeout=2)

    from backend import store
    from backend.db import Database
    from backend.settings import Settings

    with Database(Settings(data_dir=tmp_path / "data").sqlalchemy_url).session() as session:
        run = store.get_run(session, run_id=first_run)
        # The worker stopped the run at its next step (a warm shutdown), rather than being killed.
        assert run.status == "cancelled", (run.status, run.error)
        assert run.error.startswith("cancelled: worker up") and run.error.endswith("shut down")
