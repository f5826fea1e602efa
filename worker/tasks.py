"""The one Celery task: thin and idempotent (docs/architecture.md, step 3). The logic is in :mod:`worker.runner`."""

from __future__ import annotations

import functools
import socket
from collections.abc import Sequence

from celery import Task

from backend.broker import Dispatcher
from backend.settings import TASK_RUN_BENCHMARK
from worker.app import app, settings, worker_device
from worker.runner import execute_run


@functools.cache
def _dispatcher() -> Dispatcher:
    """This process's sender of runs that became ready (the runs that waited for the one just run)."""
    return Dispatcher(settings, celery=app)


def _dispatch(runs: Sequence[tuple[int, str]]) -> list[int]:
    return _dispatcher().dispatch(runs)


@app.task(name=TASK_RUN_BENCHMARK, bind=True, ignore_result=True)
def run_benchmark(self: Task, run_id: int) -> str:
    """Run benchmark run ``run_id``: claim it if queued, execute, store the result.

    A duplicate delivery (the run is running elsewhere or finished) does nothing.
    """
    return execute_run(
        run_id,
        worker_name=self.request.hostname or socket.gethostname(),
        device=worker_device(),
        dispatch=_dispatch,
    )
