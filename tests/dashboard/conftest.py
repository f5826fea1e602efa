"""A live service for the dashboard tests: the API under uvicorn and a Celery worker (SQLite database,
embedded broker), a finished comparison with real results, and the dashboard under ``streamlit run``.

Everything is a real process, started once per session and always stopped; nothing is mocked.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
import streamlit as st
from streamlit.testing.v1 import AppTest

from backend.launcher import dashboard_command
from tests.backend.harness import (
    REPO_ROOT,
    ServiceProcess,
    cpu_smoke_overrides,
    free_port,
    new_api_token,
    service_env,
    start_api,
    start_worker,
    wait_for_worker,
    wait_until,
)

APP = REPO_ROOT / "dashboard" / "app.py"
FINISHED = {"completed", "failed", "out_of_memory", "cancelled"}


@dataclass
class LiveService:
    """The running API and worker, an HTTP client on them (with the API's token) and their logs."""

    url: str
    token: str
    client: httpx.Client
    processes: list[ServiceProcess] = field(default_factory=list)

    def logs(self) -> str:
        return "\n".join(f"--- {p.name} ---\n{p.log_tail(3000)}" for p in self.processes)

    def get(self, path: str, **params: Any) -> Any:
        response = self.client.get(f"/api/v1{path}", params=params)
        assert response.status_code == 200, response.text
        return response.json()

    def post(self, path: str, body: dict[str, Any] | None = None) -> Any:
        response = self.client.post(f"/api/v1{path}", json=body)
        assert response.status_code in (200, 201), response.text
        return response.json()

    def wait_comparison(self, comparison_id: int, *, timeout: float) -> dict[str, Any]:
        """The comparison once every run has finished; fails with the logs after ``timeout`` s."""

        def finished() -> dict[str, Any] | None:
            detail = self.get(f"/comparisons/{comparison_id}")
            return detail if all(run["status"] in FINISHED for run in detail["runs"]) else None

        return wait_until(
            finished,
            timeout=timeout,
            interval=1.0,
            message=lambda: (
                f"comparison {comparison_id} did not finish: "
                f"{self.get(f'/comparisons/{comparison_id}')['status_counts']}\n{self.logs()}"
            ),
        )


@pytest.fixture(scope="session")
def live_service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveService]:
    tmp = tmp_path_factory.mktemp("dashboard-service")
    token = new_api_token()
    env = service_env(
        VELORA_DATA_DIR=str(tmp / "data"),
        VELORA_API_TOKEN=token,
        # One worker process for every run: the tests run dozens of tiny runs, and a fresh process
        # per run would spend most of its time importing torch.
        VELORA_WORKER_MAX_TASKS_PER_CHILD="0",
        VELORA_HEARTBEAT_INTERVAL_S="1",
        VELORA_METRICS_FLUSH_S="0.2",
    )
    port = free_port()
    api = start_api(env, port, tmp)
    url = f"http://127.0.0.1:{port}"
    headers = {"Authorization": f"Bearer {token}"}
    service = LiveService(
        url=url, token=token, client=httpx.Client(base_url=url, headers=headers, timeout=30)
    )
    service.processes.append(api)
    try:
        name = f"dash{port}@test"
        worker = start_worker(env, name, tmp)
        service.processes.append(worker)
        wait_for_worker(service.client, name, worker, timeout=90)
        yield service
    finally:
        service.client.close()
        for process in reversed(service.processes):
            process.stop()


@pytest.fixture(scope="session")
def smoke_comparison(live_service: LiveService) -> dict[str, Any]:
    """``cpu-smoke`` shrunk to a few steps, with two seeds (so Compare shows mean ± spread), finished."""
    created = live_service.post(
        "/comparisons", {"preset": "cpu-smoke", "overrides": cpu_smoke_overrides(seeds=[0, 1])}
    )
    detail = live_service.wait_comparison(created["id"], timeout=600)  # ~21 runs on a loaded 2-core machine
    assert detail["status_counts"] == {"completed": len(detail["runs"])}, detail["status_counts"]
    return detail


@pytest.fixture
def open_page(live_service: LiveService, monkeypatch: pytest.MonkeyPatch) -> Callable[..., AppTest]:
    """``open_page("views/compare.py", comparison=3)``: the dashboard on that page with those query
    parameters, run once against the live API (with fresh caches)."""
    monkeypatch.setenv("VELORA_API_URL", live_service.url)
    monkeypatch.setenv("VELORA_API_TOKEN", live_service.token)  # as `velora-bench up` hands it over

    def open_(page: str | None = None, **query: Any) -> AppTest:
        st.cache_data.clear()
        at = AppTest.from_file(str(APP), default_timeout=60)
        for key, value in query.items():
            at.query_params[key] = str(value)
        if page is not None:
            at.switch_page(page)
        at.run()
        assert not at.exception, [e.value for e in at.exception]
        return at

    return open_


@pytest.fixture(scope="session")
def dashboard_url(live_service: LiveService, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The dashboard under ``streamlit run``, talking to the live API."""
    tmp = tmp_path_factory.mktemp("dashboard-ui")
    port = free_port()
    env = service_env(VELORA_API_URL=live_service.url, VELORA_API_TOKEN=live_service.token)
    argv = dashboard_command(APP, host="127.0.0.1", port=port, toolbar_mode=None)
    ui = ServiceProcess("dashboard", argv, env, tmp / "dashboard.log")
    live_service.processes.append(ui)
    url = f"http://127.0.0.1:{port}"

    def healthy() -> bool:
        if not ui.alive():
            pytest.fail(f"the dashboard exited:\n{ui.log_tail()}")
        try:
            return httpx.get(f"{url}/_stcore/health", timeout=2).text == "ok"
        except httpx.HTTPError:
            return False

    try:
        wait_until(healthy, timeout=60, message=lambda: f"the dashboard did not start:\n{ui.log_tail()}")
        yield url
    finally:
        ui.stop()
