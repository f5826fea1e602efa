"""``velora-bench token create`` and ``velora-bench up`` (real processes)."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.backend.harness import REPO_ROOT, free_port, service_env, wait_until
from tests.worker.conftest import long_run

FINISHED = ("completed", "failed", "out_of_memory", "cancelled")


def cli() -> list[str]:
    """``velora-bench`` when the engine's CLI is installed, else this package's own entry."""
    exe = shutil.which("velora-bench", path=str(Path(sys.executable).parent))
    return [exe] if exe else [sys.executable, "-m", "backend.cli"]


def run_cli(*argv: str, timeout: float = 120, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*cli(), *argv],
        env=service_env(**env),
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=REPO_ROOT,
    )


def test_token_create_prints_a_working_token(tmp_path: Path) -> None:
    done = run_cli("token", "create", "--name", "ci", "--data-dir", str(tmp_path))
    assert done.returncode == 0, done.stderr
    token = done.stdout.strip()
    assert token.startswith("vb_") and "\n" not in token
    assert "shown only this once" in done.stderr

    listing = run_cli("token", "list", "--data-dir", str(tmp_path))
    assert "ci" in listing.stdout and token[:10] in listing.stdout and token not in listing.stdout

    from fastapi.testclient import TestClient

    from backend.api.main import create_app
    from backend.settings import Settings

    settings = Settings(data_dir=tmp_path, reaper_enabled=False, allowed_hosts=["testserver"])
    with TestClient(create_app(settings)) as client:
        assert client.get("/api/v1/runs", headers={"Authorization": f"Bearer {token}"}).status_code == 200
        assert client.get("/api/v1/runs").status_code == 401

    revoke = run_cli("token", "revoke", "1", "--data-dir", str(tmp_path))
    assert revoke.returncode == 0
    again = run_cli("token", "revoke", "1", "--data-dir", str(tmp_path))
    assert again.returncode == 2 and "no active token" in again.stderr

    show = run_cli("token", "show", "--data-dir", str(tmp_path))
    assert show.returncode == 2 and "velora-bench up` creates it" in show.stderr  # only `up` writes the file


def test_token_file_is_written_with_mode_0600(tmp_path: Path) -> None:
    from backend.token_file import TokenFile

    token_file = TokenFile(tmp_path / "new")
    assert token_file.read() is None
    path = token_file.write("vb_first")
    path.chmod(0o644)  # a file someone widened is narrowed again when it is replaced
    token_file.write("vb_second")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600 and token_file.read() == "vb_second"
    assert [p.name for p in path.parent.iterdir()] == ["api-token"]  # no partial file left behind


def test_up_refuses_a_busy_port(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        done = run_cli("up", "--data-dir", str(tmp_path), "--api-port", str(port), "--no-dashboard")
    assert done.returncode == 2
    assert f"port {port} on 127.0.0.1 is in use" in done.stderr and "--api-port" in done.stderr


class Up:
    """A real ``velora-bench up`` process in its own session, its log, and its API."""

    def __init__(self, tmp_path: Path, *args: str, **env: str) -> None:
        self.port, self.data_dir, self.log_path = free_port(), tmp_path / "data", tmp_path / "up.log"
        argv = [*cli(), "up", "--data-dir", str(self.data_dir), "--api-port", str(self.port), *args]
        with self.log_path.open("wb") as out:
            self.process = subprocess.Popen(
                argv,
                env=service_env(**env),
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=REPO_ROOT,
                start_new_session=True,
            )
        self.url = f"http://127.0.0.1:{self.port}/api/v1"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def token(self) -> str:
        from backend.token_file import TokenFile

        token = TokenFile(self.data_dir).read()
        assert token is not None, self.log()
        return token

    def get(self, path: str) -> httpx.Response:
        return httpx.get(f"{self.url}{path}", headers={"Authorization": f"Bearer {self.token()}"}, timeout=10)

    def wait_healthy(self) -> dict:
        """The /health body once the API, the worker and ``up``'s banner are all there."""

        def healthy() -> dict | None:
            if self.process.poll() is not None:
                pytest.fail(f"up exited with {self.process.returncode}:\n{self.log()}")
            if "Press Ctrl-C to stop." not in self.log():
                return None
            try:
                body = self.get("/health").json()
            except httpx.HTTPError:
                return None
            return body if body["status"] == "ok" else None

        return wait_until(
            healthy, timeout=90, interval=1.0, message=lambda: f"up never became healthy:\n{self.log()}"
        )

    def close(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()


def child_environ(parent: int, command_part: str) -> dict[str, str]:
    """The environment of the child process of ``parent`` whose command line contains ``command_part``."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            if ppid == parent and command_part in cmdline:
                pairs = (entry / "environ").read_bytes().split(b"\0")
                return dict(p.decode().split("=", 1) for p in pairs if b"=" in p)
        except (OSError, IndexError, ValueError):
            continue
    raise AssertionError(f"no child of {parent} runs {command_part!r}")


@pytest.mark.slow
def test_up_starts_everything_and_stops_cleanly(tmp_path: Path) -> None:
    """API, worker and (when dashboard/app.py exists) the dashboard come up, with a token in the data
    dir (mode 0600) that every client presents: the dashboard gets it, ``submit`` finds it, and a
    loopback write without it is refused. Ctrl-C (SIGINT; SIGTERM takes the same path) stops them all,
    and the run in flight stops at its next step, recorded as cancelled (a worker that does not stop
    in --stop-timeout is killed and its run marked failed)."""
    from backend.launcher import dashboard_app
    from backend.token_file import TokenFile

    dashboard_port = free_port()
    with_dashboard = dashboard_app() is not None
    up = Up(tmp_path, "--dashboard-port", str(dashboard_port), "--stop-timeout", "3")
    port = up.port
    try:
        body = up.wait_healthy()
        worker_pid = body["workers"]["list"][0]["pid"]
        token, token_path = up.token(), TokenFile(up.data_dir).path
        assert stat.S_IMODE(token_path.stat().st_mode) == 0o600
        output = up.log()
        assert f"API:        http://127.0.0.1:{port}/api/v1" in output
        assert (
            f'curl -H "Authorization: Bearer $(cat {token_path})" http://127.0.0.1:{port}/api/v1/runs'
            in output
        )
        assert token not in output  # the log shows where the token is, not the token
        if with_dashboard:
            assert f"Dashboard:  http://127.0.0.1:{dashboard_port}" in output
            assert child_environ(up.process.pid, "streamlit")["VELORA_API_TOKEN"] == token

            def dashboard_up() -> bool:
                try:
                    return (
                        httpx.get(f"http://127.0.0.1:{dashboard_port}/_stcore/health", timeout=2).text == "ok"
                    )
                except httpx.HTTPError:
                    return False

            wait_until(dashboard_up, timeout=90, message=lambda: f"the dashboard never answered:\n{up.log()}")
        # Every client presents the token, on this machine too.
        refused = httpx.post(f"{up.url}/comparisons", json={"preset": "cpu-smoke"}, timeout=10)
        assert refused.status_code == 401, refused.text
        show = run_cli("token", "show", "--data-dir", str(up.data_dir))
        assert show.returncode == 0 and show.stdout.strip() == token
        # `submit` finds the token in the data dir (no --token, no VELORA_API_TOKEN).
        submitted = run_cli(
            "submit",
            "--preset",
            "cpu-smoke",
            "--api",
            f"http://127.0.0.1:{port}",
            "--data-dir",
            str(up.data_dir),
        )
        assert submitted.returncode == 0, submitted.stderr
        assert "Comparison 1 (cpu-smoke) queued" in submitted.stdout
        first_run = up.get("/comparisons/1").json()["run_ids"][0]
        wait_until(
            lambda: up.get(f"/runs/{first_run}").json()["phase"] == "train",
            timeout=90,
            message=lambda: f"the worker never started training run {first_run}:\n{up.log()}",
        )

        started = time.monotonic()
        up.process.send_signal(signal.SIGINT)
        assert up.process.wait(60) == 0, up.log()
        assert time.monotonic() - started < 60
    finally:
        up.close()
    assert "Stopped." in up.log()
    with pytest.raises(ProcessLookupError):
        os.kill(worker_pid, 0)
    for gone in (port, dashboard_port):
        with pytest.raises(httpx.ConnectError):
            httpx.get(f"http://127.0.0.1:{gone}/", timeout=2)

    from backend import store
    from backend.db import Database
    from backend.settings import Settings

    with Database(Settings(data_dir=up.data_dir).sqlalchemy_url).session() as session:
        run = store.get_run(session, run_id=first_run)
        # The worker stopped the run at its next step (a warm shutdown), rather than being killed.
        assert run.status == "cancelled", (run.status, run.error)
        assert run.error.startswith("cancelled: worker up") and run.error.endswith("shut down")


@pytest.mark.slow
def test_up_restarts_a_killed_worker_and_gives_up_after_too_many(tmp_path: Path) -> None:
    """SIGKILL of the worker's main process: the API keeps serving, ``up`` starts a new worker (a new
    name in /health) that runs what is submitted next. With VELORA_WORKER_MAX_RESTARTS=1, a second
    death within the window makes ``up`` stop everything and say why."""
    up = Up(tmp_path, "--no-dashboard", VELORA_WORKER_MAX_RESTARTS="1", VELORA_HEARTBEAT_INTERVAL_S="1")
    try:
        first = up.wait_healthy()["workers"]["list"]
        assert len(first) == 1
        os.kill(first[0]["pid"], signal.SIGKILL)

        def restarted() -> bool:
            runs = up.get("/runs")  # the API answers throughout
            assert runs.status_code == 200, runs.text
            return "worker restarted as" in up.log()

        wait_until(restarted, timeout=60, interval=1.0, message=lambda: f"no restart:\n{up.log()}")

        def new_worker() -> dict | None:
            workers = up.get("/health").json()["workers"].get("list", [])
            names = [w["name"] for w in workers]
            return workers[0] if names and first[0]["name"] not in names else None

        second = wait_until(
            new_worker, timeout=120, interval=1.0, message=lambda: f"no new worker:\n{up.log()}"
        )
        assert second["pid"] != first[0]["pid"] and up.process.poll() is None
        assert f"worker {first[0]['name']} exited with code -9" in up.log()
        assert "restarting it in 1 s (restart 1 of at most 1 within 600 s)" in up.log()

        headers = {"Authorization": f"Bearer {up.token()}"}
        created = httpx.post(f"{up.url}/runs", json=long_run(steps=3), headers=headers, timeout=10)
        assert created.status_code == 201, created.text
        run_id = created.json()["id"]
        done = wait_until(
            lambda: (body := up.get(f"/runs/{run_id}").json())["status"] in FINISHED and body,
            timeout=120,
            interval=1.0,
            message=lambda: f"run {run_id} did not finish:\n{up.log()}",
        )
        assert done["status"] == "completed" and done["worker_host"] == second["name"], done

        os.kill(second["pid"], signal.SIGKILL)
        assert up.process.wait(60) == 1, up.log()
        log = up.log()
        assert "the worker died 2 times within 600 s" in log and "giving up after 1 restart(s)" in log
        assert "VELORA_WORKER_MAX_RESTARTS" in log and "Stopped." in log
    finally:
        up.close()
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{up.url}/health", timeout=2)
