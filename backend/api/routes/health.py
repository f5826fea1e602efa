"""``/health``: database, broker and worker liveness, cheap for probes and detailed for callers with
read access.

The checks (a ``SELECT 1``, a broker round trip with queue depths, live workers, runs the broker
should hold) run at most once per ``VELORA_HEALTH_CACHE_S``, one at a time, in a worker thread:
any number of probes cost one check, and a broker that does not answer holds one thread, not one per
call. Callers without read access see the verdict and counts only (no URLs, no errors, no names).
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from fastapi import APIRouter, HTTPException, Request, Response
from sqlalchemy import text
from starlette.concurrency import run_in_threadpool

from backend import store
from backend.api.deps import ANONYMOUS, require_read
from backend.api.schemas import WorkerPublic
from backend.broker import Dispatcher, lost_messages
from backend.db import Database
from backend.settings import Settings

router = APIRouter(prefix="/health", tags=["health"])


def _database(db: Database) -> dict[str, Any]:
    try:
        with db.session() as session:
            session.execute(text("SELECT 1"))
        return {"ok": True, "backend": db.engine.dialect.name}
    except Exception as exc:
        return {"ok": False, "backend": db.engine.dialect.name, "error": f"{type(exc).__name__}: {exc}"}


def check(db: Database, dispatcher: Dispatcher, settings: Settings) -> dict[str, Any]:
    """Every check, with every detail (blocking)."""
    database = _database(db)
    broker = dispatcher.check()
    workers: list[dict[str, Any]] = []
    missing: dict[str, int] = {}
    if database["ok"]:
        with db.session() as session:
            live = store.live_workers(session, seen_within_s=settings.heartbeat_timeout_s)
            workers = [WorkerPublic.model_validate(w).model_dump(mode="json") for w in live]
            if broker["ok"]:
                missing = lost_messages(store.sent_queued_counts(session), broker["queued_messages"])
    return {"database": database, "broker": broker, "workers": workers, "stranded": missing}


async def _snapshot(request: Request) -> dict[str, Any]:
    state = request.app.state
    settings: Settings = state.settings
    lock: asyncio.Lock = state.health_lock
    async with lock:  # one check at a time; waiting callers hold no thread
        cached = state.health_cache
        if cached is None or time.monotonic() - cached[0] >= settings.health_cache_s:
            snapshot = await run_in_threadpool(check, state.db, state.dispatcher, settings)
            state.health_cache = cached = (time.monotonic(), snapshot)
    return cached[1]


async def _may_see_details(request: Request) -> bool:
    try:
        return await require_read(request) is not ANONYMOUS
    except HTTPException:
        return False


@router.get(
    "",
    responses={503: {"description": "The database or the broker does not answer (the same body says which)"}},
)
async def read_health(request: Request, response: Response) -> dict:
    """200 when the database and broker answer (``status`` is ``degraded`` with no live worker, or with
    runs the broker lost), else 503. With read access: backends, the broker's (password-less) URL and
    queue depths, errors, the live workers and ``stranded_runs`` (per queue, runs sent and unclaimed
    that the broker does not hold); without: the verdict and counts only."""
    snapshot = await _snapshot(request)
    database, broker, workers = snapshot["database"], snapshot["broker"], snapshot["workers"]
    ok = database["ok"] and broker["ok"]
    response.status_code = 200 if ok else 503
    status = "ok" if ok and workers and not snapshot["stranded"] else ("degraded" if ok else "unavailable")
    body: dict[str, Any] = {
        "status": status,
        "database": {"ok": database["ok"]},
        "broker": {"ok": broker["ok"]},
        "workers": {"alive": len(workers)},
    }
    if await _may_see_details(request):
        body.update(database=database, broker=broker, stranded_runs=snapshot["stranded"])
        body["workers"] = {"alive": len(workers), "list": workers}
    return body
