"""The dashboard refuses foreign Host and Origin headers, over HTTP and on its websocket (issue 22.8):
it holds the API token, and accepted a websocket with ``Host``/``Origin: evil.com``, so a page on
another site could reach the API through it by DNS rebinding. Started as ``velora-bench up`` starts
it (``backend.launcher.dashboard_command``); the browser test resolves a foreign name to 127.0.0.1."""

from __future__ import annotations

import base64
import os
import shutil
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from backend.launcher import dashboard_command
from tests.backend.harness import ServiceProcess, free_port, service_env, unavailable, wait_until
from tests.dashboard.conftest import APP

CHROMIUM = os.environ.get("VELORA_TEST_CHROMIUM", "/usr/bin/chromium")
CHROMEDRIVER = os.environ.get("VELORA_TEST_CHROMEDRIVER", "/usr/bin/chromedriver")
FOREIGN = "evil.example"


@pytest.fixture(scope="module")
def dashboard_port(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    tmp = tmp_path_factory.mktemp("dashboard-guard")
    port = free_port()
    env = service_env(VELORA_API_URL=f"http://127.0.0.1:{free_port()}", VELORA_API_TOKEN="unused")
    ui = ServiceProcess("dashboard", dashboard_command(APP, host="127.0.0.1", port=port), env, tmp / "ui.log")

    def healthy() -> bool:
        assert ui.alive(), ui.log_tail()
        try:
            return httpx.get(f"http://127.0.0.1:{port}/_stcore/health", timeout=2).text == "ok"
        except httpx.HTTPError:
            return False

    try:
        wait_until(healthy, timeout=90, message=lambda: f"the dashboard did not start:\n{ui.log_tail()}")
        yield port
    finally:
        ui.stop()


def _websocket_status(port: int, host: str, origin: str | None) -> int:
    """The status line's code of a websocket handshake on the dashboard's stream."""
    key = base64.b64encode(os.urandom(16)).decode()
    lines = [
        "GET /_stcore/stream HTTP/1.1",
        f"Host: {host}",
        "Upgrade: websocket",
        "Connection: Upgrade",
        f"Sec-WebSocket-Key: {key}",
        "Sec-WebSocket-Version: 13",
    ]
    if origin is not None:
        lines.append(f"Origin: {origin}")
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        answer = sock.recv(4096).decode("latin-1")
    return int(answer.split()[1])


def test_http_requests_need_an_allowed_host_and_origin(dashboard_port: int) -> None:
    url = f"http://127.0.0.1:{dashboard_port}/"
    assert httpx.get(url, timeout=10).status_code == 200
    foreign = httpx.get(url, headers={"Host": f"{FOREIGN}:{dashboard_port}"}, timeout=10)
    assert foreign.status_code == 400 and "not one this dashboard answers to" in foreign.text
    cross = httpx.get(url, headers={"Origin": f"http://{FOREIGN}:{dashboard_port}"}, timeout=10)
    assert cross.status_code == 403


def test_the_websocket_needs_an_allowed_host_and_origin(dashboard_port: int) -> None:
    own = f"127.0.0.1:{dashboard_port}"
    assert _websocket_status(dashboard_port, own, f"http://{own}") == 101
    rebound = f"{FOREIGN}:{dashboard_port}"  # DNS rebinding: same-origin with the page, foreign Host
    assert _websocket_status(dashboard_port, rebound, f"http://{rebound}") == 400
    assert _websocket_status(dashboard_port, own, f"http://{FOREIGN}") == 403


@pytest.fixture
def rebinding_browser() -> Iterator[Any]:
    """Headless chromium resolving ``evil.example`` to 127.0.0.1, as DNS rebinding makes it."""
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        unavailable("selenium (pip install -e '.[dev]')")
    if not (shutil.which(CHROMIUM) and shutil.which(CHROMEDRIVER)):
        unavailable(f"a browser ({CHROMIUM} and {CHROMEDRIVER})")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage"):
        options.add_argument(argument)
    options.add_argument(f"--host-resolver-rules=MAP {FOREIGN} 127.0.0.1")
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    try:
        yield driver
    finally:
        driver.quit()


def test_a_page_under_a_rebound_name_gets_no_dashboard(
    dashboard_port: int, rebinding_browser: Any, tmp_path: Path
) -> None:
    from selenium.webdriver.common.by import By

    rebinding_browser.get(f"http://{FOREIGN}:{dashboard_port}/")
    body = rebinding_browser.find_element(By.TAG_NAME, "body").text
    assert "not one this dashboard answers to" in body, body[:500]
    rebinding_browser.get(f"http://127.0.0.1:{dashboard_port}/")
    wait_until(
        lambda: rebinding_browser.find_elements(By.CSS_SELECTOR, "[data-testid='stApp']"),
        timeout=60,
        message="the dashboard did not load under its own address",
    )
    rebinding_browser.save_screenshot(str(tmp_path / "dashboard.png"))
