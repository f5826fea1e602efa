"""The reaper: no run stays "running" after its worker is gone, and no queued run misses the broker.

Every ``reaper_interval_s`` it (1) fails or requeues running runs without a heartbeat for
``heartbeat_timeout_s`` (``VELORA_REQUEUE_LOST_RUNS``), (2) settles waiting runs whose base runs have
finished (queued, or failed/cancelled naming the base: the worker does this too, at once), and (3)
sends runs that are queued in the database but never reached the broker (the broker was down at
submission, or the run was requeued), and (4) re-sends runs the broker lost: when a queue holds fewer
messages than the database has runs sent to it and unclaimed (a flushed, evicted or failed-over
Redis), the runs of that queue sent over ``VELORA_REDELIVER_AFTER_S`` ago go again. A duplicate
message is harmless: the worker's claim takes only a queued run.
It runs in the API process and in every worker's main process; each change is a conditional update,
so any number of reapers can run at once.
"""

from __future__ import annotations

import logging
import threading
from datetime import timedelta

from backend import store
from backend.broker import Dispatcher, lost_messages
from backend.db import Database
from backend.settings import Settings
from backend.tables import utcnow

log = logging.getLogger(__name__)


def reap_once(db: Database, dispatcher: Dispatcher, settings: Settings) -> store.AbandonOutcome:
    """One pass of the reaper; returns what it did to lost runs."""
    with db.write_session() as session:
        outcome = store.reap_lost_runs(
            session,
            heartbeat_timeout_s=settings.heartbeat_timeout_s,
            requeue=settings.requeue_lost_runs,
            max_attempts=settings.max_attempts,
        )
        ready = store.settle_waiting_runs(session)
    if ready:
        with db.write_session() as session:
            store.mark_dispatched(session, run_ids=dispatcher.dispatch(ready))
    if outcome.failed or outcome.requeued or outcome.cancelled:
        log.warning(
            "reaper: worker lost for runs failed=%s requeued=%s cancelled=%s",
            outcome.failed,
            outcome.requeued,
            outcome.cancelled,
        )
    dispatch_pending(db, dispatcher, settings)
    redeliver_lost(db, dispatcher, settings)
    return outcome


def dispatch_pending(db: Database, dispatcher: Dispatcher, settings: Settings) -> list[int]:
    """Send queued runs that are not in the broker yet; returns the ids sent."""
    created_before = utcnow() - timedelta(seconds=settings.redispatch_after_s)
    with db.session() as session:
        pending = store.runs_to_dispatch(session, created_before=created_before)
    if not pending:
        return []
    sent = dispatcher.dispatch(pending)
    with db.write_session() as session:
        store.mark_dispatched(session, run_ids=sent)
    return sent


def redeliver_lost(db: Database, dispatcher: Dispatcher, settings: Settings) -> list[int]:
    """Re-send the runs of every queue whose broker queue holds fewer messages than the database
    has sent-and-unclaimed runs (see the module docstring); returns the ids sent."""
    broker = dispatcher.check()
    if not broker["ok"]:
        return []
    with db.session() as session:
        lost = lost_messages(store.sent_queued_counts(session), broker["queued_messages"])
        if not lost:
            return []
        sent_before = utcnow() - timedelta(seconds=settings.redeliver_after_s)
        again = store.runs_to_redeliver(session, queues=list(lost), sent_before=sent_before)
    if not again:
        return []
    log.warning(
        "reaper: the broker lost %s message(s) %s; re-sending runs %s", sum(lost.values()), lost, again
    )
    sent = dispatcher.dispatch(again)
    with db.write_session() as session:
        store.mark_dispatched(session, run_ids=sent)
    return sent


class ReaperThread(threading.Thread):
    """Runs :func:`reap_once` every ``settings.reaper_interval_s`` until :meth:`stop`."""

    def __init__(self, db: Database, dispatcher: Dispatcher, settings: Settings) -> None:
        super().__init__(name="velora-reaper", daemon=True)
        self.db, self.dispatcher, self.settings = db, dispatcher, settings
        self._stop_event = threading.Event()

    def run(self) -> None:
        while not self._stop_event.wait(self.settings.reaper_interval_s):
            try:
                reap_once(self.db, self.dispatcher, self.settings)
            except Exception:  # a database hiccup must not kill the thread
                log.exception("reaper pass failed; retrying in %s s", self.settings.reaper_interval_s)

    def stop(self, timeout: float = 5.0) -> None:
        self._stop_event.set()
        if self.is_alive():
            self.join(timeout)
