"""Worker processes: register, keep alive, stop and list the live ones."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import timedelta

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from backend.tables import Worker, utcnow


def upsert_worker(
    session: Session, *, name: str, host: str, pid: int, queues: str, device: str | None
) -> None:
    worker = session.get(Worker, name)
    now = utcnow()
    if worker is None:
        session.add(
            Worker(
                name=name, host=host, pid=pid, queues=queues, device=device, started_at=now, last_seen_at=now
            )
        )
    else:
        worker.host, worker.pid, worker.queues, worker.device = host, pid, queues, device
        worker.started_at, worker.last_seen_at, worker.stopped_at = now, now, None
    session.flush()


def touch_worker(session: Session, *, name: str) -> None:
    session.execute(update(Worker).where(Worker.name == name).values(last_seen_at=utcnow(), stopped_at=None))


def stop_worker(session: Session, *, name: str) -> None:
    session.execute(update(Worker).where(Worker.name == name).values(stopped_at=utcnow()))


def live_workers(session: Session, *, seen_within_s: float) -> Sequence[Worker]:
    seen_after = utcnow() - timedelta(seconds=seen_within_s)
    return session.scalars(
        select(Worker)
        .where(Worker.last_seen_at >= seen_after, Worker.stopped_at.is_(None))
        .order_by(Worker.name)
    ).all()
