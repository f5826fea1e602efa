"""The worker's Celery app, and what its main process does besides consuming.

``celery -A worker.app worker -Q gpu -n gpu0@%h`` (with ``CUDA_VISIBLE_DEVICES=0``) on a GPU host.
The main process applies migrations on start, records the worker's liveness in the database every
``VELORA_HEARTBEAT_INTERVAL_S`` (for ``/health``), and runs a reaper (see ``backend.reaper``).
Task code and torch are only loaded in the pool's child processes, one run at a time.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from typing import Any

from celery import signals

from backend import store
from backend.broker import Dispatcher, make_celery
from backend.db import Database
from backend.migrate import upgrade
from backend.reaper import ReaperThread
from backend.settings import get_settings

log = logging.getLogger(__name__)

settings = get_settings()
app = make_celery(settings, include=["worker.tasks"])


def worker_device() -> str:
    """What this worker runs on, as far as is known without importing torch."""
    if os.environ.get("VELORA_WORKER_DEVICE"):
        return os.environ["VELORA_WORKER_DEVICE"]
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return f"cuda (CUDA_VISIBLE_DEVICES={visible})" if visible.strip() else "cpu"
    return "auto"


class _WorkerPresence(threading.Thread):
    """Keeps the worker's row in ``workers`` fresh while the main process is alive."""

    def __init__(self, db: Database, name: str, interval_s: float) -> None:
        super().__init__(name="velora-worker-presence", daemon=True)
        self.db, self.name_, self.interval_s = db, name, interval_s
        self.stop_event = threading.Event()

    def run(self) -> None:
        while not self.stop_event.wait(self.interval_s):
            try:
                with self.db.write_session() as session:
                    store.touch_worker(session, name=self.name_)
            except Exception:
                log.exception("could not record worker liveness")


_state: dict[str, Any] = {}


@signals.worker_init.connect
def _on_worker_init(sender: Any = None, **_: Any) -> None:
    db = Database(settings.sqlalchemy_url)
    if settings.auto_migrate:
        upgrade(db)
    _state["db"] = db


@signals.worker_ready.connect
def _on_worker_ready(sender: Any = None, **_: Any) -> None:
    db: Database = _state.get("db") or Database(settings.sqlalchemy_url)
    name = sender.hostname
    queues = ",".join(sorted(q.name for q in sender.task_consumer.queues)) if sender.task_consumer else ""
    with db.write_session() as session:
        store.upsert_worker(
            session,
            name=name,
            host=socket.gethostname(),
            pid=os.getpid(),
            queues=queues,
            device=worker_device(),
        )
    presence = _WorkerPresence(db, name, settings.heartbeat_interval_s)
    presence.start()
    _state.update(name=name, presence=presence)
    if settings.reaper_enabled:
        reaper = ReaperThread(db, Dispatcher(settings, celery=app), settings)
        reaper.start()
        _state["reaper"] = reaper


@signals.worker_shutting_down.connect
def _on_worker_shutting_down(**_: Any) -> None:
    # A warm shutdown (SIGTERM) would wait for the run to finish, which may take hours: ask it to
    # stop at its next step instead, so that the worker exits promptly and the run is recorded
    # as cancelled, not left running until the reaper notices.
    if _state.get("db") is None or not _state.get("name"):
        return
    try:
        with _state["db"].write_session() as session:
            stopped = store.stop_worker_runs(
                session, worker_name=_state["name"], reason=f"cancelled: worker {_state['name']} shut down"
            )
        if stopped:
            log.warning("worker shutting down: asked runs %s to stop", stopped)
    except Exception:
        log.exception("could not ask the running runs to stop")


@signals.worker_shutdown.connect
def _on_worker_shutdown(**_: Any) -> None:
    for key in ("presence",):
        thread = _state.get(key)
        if thread is not None:
            thread.stop_event.set()
    if _state.get("reaper") is not None:
        _state["reaper"].stop()
    if _state.get("db") is not None and _state.get("name"):
        try:
            with _state["db"].write_session() as session:
                store.stop_worker(session, name=_state["name"])
        except Exception:
            log.exception("could not record worker shutdown")
