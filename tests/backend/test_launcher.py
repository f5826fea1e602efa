"""backend.launcher: the service command lines start real processes with their callers' options."""

from __future__ import annotations

from pathlib import Path

import httpx

from backend.launcher import api_command, dashboard_app, dashboard_command
from tests.backend.harness import ServiceProcess, free_port, service_env, wait_until


def test_api_command_serves_with_workers_and_no_access_log(tmp_path: Path) -> None:
    """The options benchmarks/api_load.py passes: several uvicorn processes, no line per request."""
    port = free_port()
    argv = api_command(host="127.0.0.1", port=port, log_level="info", access_log=False, workers=2)
    assert argv[-3:] == ["--no-access-log", "--workers", "2"]
    env = service_env(VELORA_DATA_DIR=str(tmp_path / "data"), VELORA_REAPER_ENABLED="false")
    api = ServiceProcess("api", argv, env, tmp_path / "api.log")

    def health() -> int | None:
        assert api.alive(), api.log_tail()
        try:
            return httpx.get(f"http://127.0.0.1:{port}/api/v1/health", timeout=2).status_code
        except httpx.HTTPError:
            return None

    try:
        assert wait_until(health, timeout=60, message=lambda: api.log_tail()) in (200, 503)
        log = api.log_tail(20_000)
        assert "Started parent process" in log  # uvicorn's supervisor of --workers processes
        assert "GET /api/v1/health" not in log
    finally:
        api.stop()


def test_dashboard_command_defaults_to_viewer_toolbar() -> None:
    app = dashboard_app()
    assert app is not None and app.name == "app.py"
    argv = dashboard_command(app, host="127.0.0.1", port=8501)
    assert argv[-2:] == ["--client.toolbarMode", "viewer"]
    assert "--client.toolbarMode" not in dashboard_command(app, host="127.0.0.1", port=1, toolbar_mode=None)
