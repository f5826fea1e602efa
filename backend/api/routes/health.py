"""``/health``: database, broker and worker liveness (open to probes; worker details need read access)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request, Response
from sqlalchemy import text

from backend import store
from backend.api.deps import DispatcherDep, SettingsDep, authenticate
from backend.api.schemas import WorkerPublic
from backend.db import Database

router = APIRouter(prefix="/health", tags=["health"])


def _database(db: Database) -> dict[str, Any]:
    try:
        with db.session() as session:
            session.execute(text("SELECT 1"))
        return {"ok": True, "backend": db.engine.dialect.name}
    except Exception as exc:
        return {"ok": False, "backend": db.engine.dialect.name, "error": f"{type(exc).__name__}: {exc}"}


@router.get(
    "",
    responses={503: {"description": "The database or the broker does not answer (the same body says which)"}},
)
def read_health(
    request: Request, response: Response, settings: SettingsDep, dispatcher: DispatcherDep
) -> dict:
    """200 when the database and broker answer (``status`` is ``degraded`` with no live worker), else 503."""
    db: Database = request.app.state.db
    database = _database(db)
    broker = dispatcher.check()
    workers: dict[str, Any] = {"alive": 0}
    if database["ok"]:
        with db.session() as session:
            live = store.live_workers(session, seen_within_s=settings.heartbeat_timeout_s)
            workers["alive"] = len(live)
            try:
                authenticate(request, write=False)
                workers["list"] = [WorkerPublic.model_validate(w).model_dump(mode="json") for w in live]
            except Exception:
                pass  # probes see counts only
    ok = database["ok"] and broker["ok"]
    response.status_code = 200 if ok else 503
    status = "ok" if ok and workers["alive"] else ("degraded" if ok else "unavailable")
    return {"status": status, "database": database, "broker": broker, "workers": workers}
