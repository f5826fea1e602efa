"""Per-caller quotas on submissions: runs waiting to start, and submissions per minute (429).

A caller is a token (``Principal.scope``: ``token:<id>``), or ``localhost`` for a trusted local
client. Both checks run after a request is validated, so only submissions that would queue runs
count:

- ``VELORA_MAX_QUEUED_RUNS_PER_TOKEN``: the caller's runs that are queued or waiting, plus the runs
  this submission adds, may not exceed it (the database counts, so every API process agrees);
- ``VELORA_MAX_SUBMISSIONS_PER_MINUTE``: accepted submissions in the last 60 s, counted by this API
  process (a sliding window in memory; behind N API processes a caller gets up to N times it).

A refusal is 429 with ``Retry-After`` (seconds) and a detail naming the setting.
"""

from __future__ import annotations

import math
import threading
import time
from collections import deque

from fastapi import HTTPException, Request
from sqlalchemy.orm import Session

from backend import store
from backend.api.deps import Principal
from backend.settings import Settings

WINDOW_S = 60.0
#: When a queue quota frees up is unknown (runs finish when they finish): ask again in a minute.
QUEUE_RETRY_AFTER_S = 60


class SubmissionWindow:
    """Accepted submissions per caller over the last :data:`WINDOW_S` seconds (thread-safe)."""

    def __init__(self) -> None:
        self._times: dict[str, deque[float]] = {}
        self._lock = threading.Lock()

    def take(self, scope: str, limit: int) -> float | None:
        """Count one submission of ``scope``; None if within ``limit``, else seconds until one frees."""
        now = time.monotonic()
        with self._lock:
            times = self._times.setdefault(scope, deque())
            while times and now - times[0] >= WINDOW_S:
                times.popleft()
            if len(times) >= limit:
                return WINDOW_S - (now - times[0])
            times.append(now)
            if len(self._times) > 100_000:  # callers that went quiet
                self._times = {k: v for k, v in self._times.items() if v and now - v[-1] < WINDOW_S}
            return None


def _too_many(detail: str, retry_after_s: float) -> HTTPException:
    return HTTPException(
        status_code=429, detail=detail, headers={"Retry-After": str(max(1, math.ceil(retry_after_s)))}
    )


def enforce_quotas(request: Request, session: Session, principal: Principal, new_runs: int) -> None:
    """Refuse (429) a submission of ``new_runs`` runs by ``principal`` past either quota.

    Raises:
        HTTPException: 429 with ``Retry-After``.
    """
    settings: Settings = request.app.state.settings
    waiting = store.count_unstarted_runs(session, submitted_by=principal.scope)
    if waiting + new_runs > settings.max_queued_runs_per_token:
        raise _too_many(
            f"Too many runs waiting: {waiting} of yours are queued or waiting and this request adds "
            f"{new_runs}, over this server's limit of {settings.max_queued_runs_per_token} per token "
            "(VELORA_MAX_QUEUED_RUNS_PER_TOKEN); retry once some have started, or cancel some",
            QUEUE_RETRY_AFTER_S,
        )
    window: SubmissionWindow = request.app.state.submissions
    wait = window.take(principal.scope, settings.max_submissions_per_minute)
    if wait is not None:
        raise _too_many(
            f"Too many submissions: this server takes {settings.max_submissions_per_minute} per token "
            "per minute (VELORA_MAX_SUBMISSIONS_PER_MINUTE)",
            wait,
        )
