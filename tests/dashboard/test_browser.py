"""End to end in a real headless browser (Debian's chromium, driven by Selenium): launch ``cpu-smoke``
from the dashboard, wait for it on Compare, and check that what the page shows is what the API says.

The screenshot of the finished Compare page is saved under the test's output directory (and also in
``$VELORA_SCREENSHOT_DIR`` when that is set, which is how ``docs/compare.png`` is made).
"""

from __future__ import annotations

import os
import shutil
import statistics
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.backend.harness import unavailable, wait_until
from tests.dashboard.conftest import LiveService
from velora_core.contract.presets.comparisons import OFFLINE_METHODS

CHROMIUM = os.environ.get("VELORA_TEST_CHROMIUM", "/usr/bin/chromium")
CHROMEDRIVER = os.environ.get("VELORA_TEST_CHROMEDRIVER", "/usr/bin/chromedriver")
MIB = 1024**2


@pytest.fixture
def browser() -> Iterator[Any]:
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        unavailable("selenium (pip install -e '.[dev]')")
    if not (shutil.which(CHROMIUM) and shutil.which(CHROMEDRIVER)):
        unavailable(f"a browser ({CHROMIUM} and {CHROMEDRIVER}: apt-get install chromium chromium-driver)")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1440,2200"):
        options.add_argument(argument)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.implicitly_wait(0)
    try:
        yield driver
    finally:
        driver.quit()


def find(driver: Any, css: str, *, text: str | None = None, timeout: float = 30) -> Any:
    """The first element matching ``css`` (and containing ``text``), waiting for it to appear."""
    from selenium.webdriver.common.by import By

    def present() -> Any:
        for element in driver.find_elements(By.CSS_SELECTOR, css):
            if text is None or text in element.text:
                return element
        return None

    return wait_until(
        present, timeout=timeout, message=f"no {css!r} containing {text!r} on {driver.current_url}"
    )


def wait_idle(driver: Any, timeout: float = 30) -> None:
    """Until Streamlit has finished re-running the script after an input."""
    from selenium.webdriver.common.by import By

    time.sleep(0.3)
    wait_until(
        lambda: not driver.find_elements(By.CSS_SELECTOR, '[data-testid="stStatusWidget"]'),
        timeout=timeout,
        message="the dashboard kept running its script",
    )


def type_number(driver: Any, label: str, value: int) -> None:
    from selenium.webdriver.common.keys import Keys

    field = find(driver, f'input[aria-label="{label}"]')
    field.click()
    field.send_keys(Keys.CONTROL, "a")
    field.send_keys(str(value), Keys.ENTER)
    wait_idle(driver)
    assert find(driver, f'input[aria-label="{label}"]').get_attribute("value") == str(value)


def read_table(driver: Any, timeout: float = 30) -> list[dict[str, str]]:
    from selenium.webdriver.common.by import By

    table = find(driver, '[data-testid="stTable"] table', timeout=timeout)
    headers = [th.text for th in table.find_elements(By.CSS_SELECTOR, "thead th")]
    rows = []
    for tr in table.find_elements(By.CSS_SELECTOR, "tbody tr"):
        cells = [cell.text for cell in tr.find_elements(By.CSS_SELECTOR, "th, td")]
        rows.append(dict(zip(headers[-len(cells) :], cells, strict=True)))
    return rows


@pytest.mark.slow
def test_launch_cpu_smoke_in_a_browser_and_compare_shows_the_api_numbers(
    browser: Any, dashboard_url: str, live_service: LiveService, tmp_path: Path
) -> None:
    browser.get(dashboard_url)
    find(browser, "h1", text="Launch a comparison")
    assert find(browser, 'input[aria-label="Preset"]').get_attribute("value").startswith("cpu-smoke")
    # cpu-smoke as CI runs it: every method, a few steps each.
    for label, value in (("Steps", 4), ("Batch", 4), ("Sequence length", 64), ("Pre-training steps", 6)):
        type_number(browser, label, value)
    type_number(browser, "Eval examples", 8)
    find(browser, "button", text="Launch").click()

    wait_until(
        lambda: "comparison=" in browser.current_url, timeout=30, message="Launch did not open Compare"
    )
    comparison_id = int(browser.current_url.split("comparison=")[1].split("&")[0])
    spec = live_service.get(f"/comparisons/{comparison_id}")["spec"]
    assert spec["name"] == "cpu-smoke"
    assert (spec["base"]["steps"], spec["base"]["micro_batch"], spec["base"]["seq_len"]) == (4, 4, 64)
    assert spec["base"]["model"]["pretrain"]["steps"] == 6
    methods = spec["methods"]
    # Every method of the preset, as the API lists it (the preset defines the set; the page keeps it).
    assert methods == OFFLINE_METHODS

    # The page follows the runs live; wait until its table shows every method completed.
    def finished_table() -> list[dict[str, str]] | None:
        try:
            rows = read_table(browser, timeout=2)
        except BaseException:  # not drawn yet (pytest's Failed), or re-drawn while being read
            return None
        return rows if [r["Status"] for r in rows] == ["completed"] * len(methods) else None

    rows = wait_until(
        finished_table,
        timeout=600,
        interval=2,
        message=lambda: f"Compare never showed all runs completed:\n{live_service.logs()}",
    )
    time.sleep(2)  # let the final full redraw settle before reading it again
    wait_idle(browser)
    rows = read_table(browser)

    detail = live_service.get(f"/comparisons/{comparison_id}")
    assert [row["Method"] for row in rows] == methods
    # Memory is the tracker's measured peak on every device (the CPU included), and "vs full" divides by full's.
    full_peak = next(r["measured_peak_bytes"] for r in detail["summary"] if r["method"] == "full")
    for row in rows:
        api_row = next(r for r in detail["summary"] if r["method"] == row["Method"])
        assert row["Peak memory"] == f"{api_row['measured_peak_bytes'] / MIB:.2f} MiB"
        assert row["vs full"] == f"{api_row['measured_peak_bytes'] / full_peak:.2f}×"
        assert row["Accuracy"] == f"{100 * api_row['eval_value']:.1f} %"
        low, high = api_row["eval_ci95"]
        assert low <= api_row["eval_value"] <= high
        assert row["95 % interval"] == f"{100 * low:.1f}–{100 * high:.1f} %"
        assert row["Tokens/s"] == f"{api_row['tokens_per_s']:.0f}"
    full_accuracy = statistics.fmean(r["eval_value"] for r in detail["summary"] if r["method"] == "full")
    lora = next(r for r in rows if r["Method"] == "lora")
    lora_accuracy = next(r["eval_value"] for r in detail["summary"] if r["method"] == "lora")
    assert lora["Δ vs full"] == f"{100 * (lora_accuracy - full_accuracy):+.1f} pts"

    # The answer comes first: what was run, then the methods by measured peak.
    find(browser, '[data-testid="stMarkdown"]', text="tiny · ")
    find(browser, '[data-testid="stMarkdown"]', text="micro-batch 4 × 64 tokens")
    find(browser, '[data-testid="stAlertContentSuccess"]', text="cannot be told from the best")
    # Charts are drawn (memory, accuracy against memory, loss curves) and say what they are.
    find(browser, ".js-plotly-plot", text="Peak memory of a training step")
    find(browser, ".js-plotly-plot", text="Accuracy against memory")
    find(browser, ".js-plotly-plot", text="Loss curves")
    link = find(browser, '[data-testid="stPageLink"] a', text="Link to this view")
    assert link.get_attribute("href").endswith(f"/compare?comparison={comparison_id}")

    browser.execute_script("window.scrollTo(0, 0)")
    screenshot = tmp_path / "compare.png"
    assert browser.save_screenshot(str(screenshot))
    print(f"screenshot: {screenshot}")
    if os.environ.get("VELORA_SCREENSHOT_DIR"):
        target = Path(os.environ["VELORA_SCREENSHOT_DIR"])
        target.mkdir(parents=True, exist_ok=True)
        shutil.copy(screenshot, target / "compare.png")


def test_swagger_ui_authorizes_with_the_token_and_try_it_out_answers(
    browser: Any, live_service: LiveService
) -> None:
    """``/docs`` declares the bearer scheme: "Authorize" takes the token and "Try it out" then gets a
    200 (was: no Authorize button, and every call answered 401)."""
    from selenium.webdriver.common.by import By

    browser.get(f"{live_service.url}/docs")
    find(browser, "button.authorize").click()
    field = find(browser, ".auth-container input")
    field.send_keys(live_service.token)
    find(browser, ".auth-btn-wrapper button.authorize").click()
    find(browser, ".auth-btn-wrapper button.btn-done").click()
    operation = find(browser, '.opblock-get .opblock-summary-path[data-path="/api/v1/comparisons"]')
    operation.click()
    block = operation.find_element(By.XPATH, "./ancestor::div[contains(@class, 'opblock-get')]")
    wait_until(
        lambda: block.find_elements(By.CSS_SELECTOR, "button.try-out__btn"),
        timeout=15,
        message="no Try it out",
    )[0].click()
    wait_until(
        lambda: block.find_elements(By.CSS_SELECTOR, "button.execute"), timeout=15, message="no Execute"
    )[0].click()
    status = wait_until(
        lambda: block.find_elements(By.CSS_SELECTOR, ".live-responses-table tbody .response-col_status"),
        timeout=30,
        message="no response shown",
    )
    assert status[0].text.strip() == "200", status[0].text
    assert "Authorization: Bearer" in block.find_element(By.CSS_SELECTOR, ".curl-command").text
