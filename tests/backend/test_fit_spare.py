"""``POST /fit``'s spare prediction process (``VELORA_FIT_WARM_SPARE``): started by the first request
that predicts, answering the next one, never handed a request once dead, killed with the app, absent
with the setting off; and a spare whose API is gone exits, in one line."""

from __future__ import annotations

import importlib
import os
import signal
import subprocess
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient

from backend.api.main import create_app
from backend.api.routes.fit import FitLine, fit_command
from backend.settings import Settings
from tests.backend.harness import free_port, new_api_token, service_env, start_api, wait_until
from tests.backend.test_fit_api import TINY_CONFIG
from velora_core.contract.exit_codes import EXIT_BAD_INPUT

pytestmark = pytest.mark.parametrize("backend_kind", ["sqlite"])  # no database work here

#: One method of the smallest preset: the fake step takes about a second, the imports the rest.
TINY = {"model": "tiny", "methods": ["lora"], "micro_batch": 1, "seq_len": 16, "dtype": "fp32"}


@pytest.fixture
def settings(settings: Settings) -> Settings:
    """The API's settings as deployed: the spare on (tests/backend/conftest.py turns it off)."""
    return settings.model_copy(update={"fit_warm_spare": True})


def line_of(client: TestClient) -> FitLine:
    return client.app.state.fit_line  # type: ignore[attr-defined]


def gone(pid: int) -> bool:
    """The process has exited (no entry, or a zombie its new parent has not reaped)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return True
    return stat.rpartition(")")[2].split()[0] == "Z"


@pytest.mark.slow
def test_the_spare_answers_the_next_request_and_is_killed_with_the_app(settings, db, auth: dict) -> None:  # type: ignore[no-untyped-def]
    """The first prediction leaves a spare; a pasted config.json runs in a process of its own and
    leaves the spare alone; the next standard request is the spare's (it answers and exits); the
    spare left then is killed and reaped when the app shuts down."""
    app = create_app(settings)
    with TestClient(app) as client:
        assert client.get("/api/v1/fit/queue", headers=auth).status_code == 200
        assert line_of(client).spare is None  # nothing started before a prediction is asked for

        first = client.post("/api/v1/fit", json=TINY, headers=auth)
        assert first.status_code == 200, first.text
        spare = line_of(client).spare
        assert spare is not None and spare.returncode is None and not gone(spare.pid)

        pasted = client.post(
            "/api/v1/fit", json={**TINY, "model": "mine", "config": TINY_CONFIG}, headers=auth
        )
        assert pasted.status_code == 200, pasted.text
        assert pasted.json()["estimates"][0]["peak_bytes"] == first.json()["estimates"][0]["peak_bytes"]
        assert line_of(client).spare is spare and spare.returncode is None  # untouched

        second = client.post("/api/v1/fit", json={**TINY, "seq_len": 32}, headers=auth)  # not the cache
        assert second.status_code == 200, second.text
        assert second.json()["estimates"][0]["seq_len"] == 32
        assert spare.returncode == 0  # it answered, and exited as every prediction process does
        replacement = line_of(client).spare
        assert replacement is not None and replacement is not spare and replacement.returncode is None
    assert replacement.returncode == -signal.SIGKILL and gone(replacement.pid)


@pytest.mark.slow
def test_a_dead_spare_is_replaced_and_never_handed_a_request(client: TestClient, auth: dict) -> None:
    assert client.post("/api/v1/fit", json=TINY, headers=auth).status_code == 200
    dead = line_of(client).spare
    assert dead is not None
    os.kill(dead.pid, signal.SIGKILL)  # as the OS's out-of-memory killer would
    wait_until(lambda: dead.returncode is not None, timeout=10, message="the spare's death went unnoticed")

    response = client.post("/api/v1/fit", json={**TINY, "seq_len": 32}, headers=auth)
    assert response.status_code == 200, response.text  # handed to the dead spare, it was a 503
    assert dead.returncode == -signal.SIGKILL
    assert line_of(client).spare not in (None, dead)


def test_with_the_setting_off_no_spare_is_started(settings, db, auth: dict) -> None:  # type: ignore[no-untyped-def]
    """Each request starts its own process, as before the spare (a 0.2 s time limit: the process is
    started, and killed, without waiting for its imports)."""
    quick = settings.model_copy(update={"fit_warm_spare": False, "fit_timeout_s": 0.2})
    with TestClient(create_app(quick)) as client:
        assert client.post("/api/v1/fit", json=TINY, headers=auth).status_code == 504
        assert line_of(client).spare is None
    spare_on = settings.model_copy(update={"fit_timeout_s": 0.2})
    with TestClient(create_app(spare_on)) as client:  # the same request does leave one with it on
        assert client.post("/api/v1/fit", json=TINY, headers=auth).status_code == 504
        assert line_of(client).spare is not None


def test_every_module_the_warm_up_names_exists(backend_kind: str) -> None:
    """The warm-up skips what fails to import (the prediction says why, in its own words), so a
    misspelt name would warm nothing, silently."""
    from velora_core.cli.fit_warmup import FIRST_USE_MODULES

    for name in FIRST_USE_MODULES:
        importlib.import_module(name)


@pytest.mark.slow
def test_a_spare_whose_input_closes_empty_exits_with_one_line(backend_kind: str) -> None:
    done = subprocess.run(fit_command(), stdin=subprocess.DEVNULL, capture_output=True, timeout=120)
    assert done.returncode == EXIT_BAD_INPUT
    assert done.stdout == b""
    assert done.stderr.decode().strip().splitlines() == [
        "velora-bench fit: error: no request on standard input (closed empty, as when the API that "
        "started this process stops)"
    ]


@pytest.mark.slow
def test_a_spare_exits_when_its_api_dies(backend_kind: str, tmp_path: Path) -> None:
    """The API killed outright (no shutdown to kill its spare): the spare reads the end of its input
    and exits, instead of waiting for ever."""
    port, token = free_port(), new_api_token()
    api = start_api(
        service_env(VELORA_DATA_DIR=str(tmp_path / "data"), VELORA_API_TOKEN=token), port, tmp_path
    )
    try:
        response = httpx.post(
            f"http://127.0.0.1:{port}/api/v1/fit",
            json=TINY,
            headers={"Authorization": f"Bearer {token}"},
            timeout=120,
        )
        assert response.status_code == 200, response.text
        (spare,) = children(api.pid)  # the process that answered has exited
        assert b"velora_core.bench.fit_estimate" in Path(f"/proc/{spare}/cmdline").read_bytes()
        os.kill(api.pid, signal.SIGKILL)  # the API only: the spare shares its process group
        wait_until(lambda: gone(spare), timeout=60, message="the spare outlived its API")
    finally:
        api.stop()


def children(pid: int) -> list[int]:
    """The live child processes of ``pid`` (from /proc)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            state, parent = stat.rpartition(")")[2].split()[:2]
            if int(parent) == pid and state != "Z":
                found.append(int(entry.name))
    return found
