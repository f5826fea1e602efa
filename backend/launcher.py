"""The command lines of the service processes (the API under uvicorn, ``backend.api.serve``, a Celery worker, the dashboard
under streamlit), written once for ``velora-bench up``, the test harness and the benchmarks.

Each takes its caller's options as parameters; the interpreter is this one (``sys.executable``), so
a child runs in the same virtual environment. docker-compose.yml writes its own (its image has the
console scripts on ``PATH``); tests/dashboard/test_compose.py runs those as they are.
"""

from __future__ import annotations

import sys
from pathlib import Path


def api_command(
    *,
    host: str,
    port: int,
    log_level: str = "warning",
    access_log: bool = True,
    workers: int | None = None,
) -> list[str]:
    """The command line of the API: ``backend.api.serve`` (uvicorn serving ``backend.api.main:create_app``
    with bounded request heads, head and body deadlines and a connection cap; see that module).

    Args:
        host: the interface to listen on.
        port: the port to listen on.
        log_level: uvicorn's log level.
        access_log: False adds ``--no-access-log`` (one line per request costs time under load).
        workers: uvicorn's worker processes; None leaves uvicorn's default (one, in-process).
    """
    argv = [sys.executable, "-m", "backend.api.serve", "--host", host, "--port", str(port)]
    argv += ["--log-level", log_level]
    if not access_log:
        argv.append("--no-access-log")
    if workers is not None:
        argv += ["--workers", str(workers)]
    return argv


def worker_command(name: str, queues: str) -> list[str]:
    """The command line of one Celery worker process (one run at a time) named ``name``."""
    celery = [sys.executable, "-m", "celery", "-A", "worker.app", "worker"]
    return [*celery, "-Q", queues, "-c", "1", "-n", name, "--loglevel", "INFO"]


def dashboard_command(app: Path, *, host: str, port: int, toolbar_mode: str | None = "viewer") -> list[str]:
    """The command line of the dashboard: ``streamlit run`` of ``app`` (see :func:`dashboard_app`) behind
    ``dashboard.guard``, which listens on ``host``:``port`` and refuses foreign Host and Origin headers.

    Args:
        app: the dashboard's ``app.py``.
        host: the interface to listen on.
        port: the port to listen on.
        toolbar_mode: streamlit's ``--client.toolbarMode``; ``"viewer"`` (as docker-compose.yml) hides
            the "Deploy" button, None leaves streamlit's default.
    """
    guard = [sys.executable, "-m", "dashboard.guard", "--host", host, "--port", str(port), "--"]
    argv = [*guard, sys.executable, "-m", "streamlit", "run", str(app), "--server.headless", "true"]
    argv += ["--browser.gatherUsageStats", "false"]
    if toolbar_mode is not None:
        argv += ["--client.toolbarMode", toolbar_mode]
    return argv


def dashboard_app() -> Path | None:
    """``dashboard/app.py`` of the installed package (or the working tree), if it exists."""
    import importlib.util

    candidates = []
    spec = importlib.util.find_spec("dashboard")
    if spec is not None and spec.submodule_search_locations:
        candidates += [Path(p) / "app.py" for p in spec.submodule_search_locations]
    candidates.append(Path.cwd() / "dashboard" / "app.py")
    return next((p for p in candidates if p.is_file()), None)
