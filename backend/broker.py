"""The Celery configuration shared by the API (which only sends) and the worker (which consumes).

The API enqueues by task *name* with the run id only, so it never imports the worker or torch.
The broker is Redis when ``REDIS_URL`` is set, else kombu's SQLAlchemy transport on an SQLite file.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Sequence
from typing import Any

from celery import Celery
from kombu import Exchange, Queue

from backend.settings import TASK_RUN_BENCHMARK, Settings

log = logging.getLogger(__name__)

#: Device classes; a worker consumes one or more (``-Q gpu`` on GPU hosts).
QUEUES = ("gpu", "cpu")


def celery_config(settings: Settings) -> dict[str, Any]:
    """Celery settings: acks late, prefetch 1, time limits, status in the DB (docs/architecture.md, step 3)."""
    if settings.redis_url:
        transport_options: dict[str, Any] = {
            # Longer than any run may last, so a running task's message is never redelivered early.
            "visibility_timeout": int(settings.run_time_limit_s + 3600),
            "socket_connect_timeout": 5,
            "socket_timeout": 30,
            "retry_on_timeout": True,
        }
        if settings.redis_key_prefix:
            transport_options["global_keyprefix"] = settings.redis_key_prefix
    else:
        settings.resolved_data_dir.mkdir(parents=True, exist_ok=True)
        transport_options = {"connect_args": {"timeout": 30}}
    return {
        "broker_url": settings.broker_url,
        "broker_transport_options": transport_options,
        "broker_connection_retry_on_startup": True,
        "broker_connection_max_retries": None,  # a worker waits out a broker restart
        "broker_connection_timeout": 5,
        # The Dispatcher borrows from this pool. On the SQLAlchemy transport each pooled connection
        # keeps one database connection, so this stays under that engine's 5 + 10 connections.
        "broker_pool_limit": 10,
        "task_serializer": "json",
        "accept_content": ["json"],
        "task_ignore_result": True,  # status and results live in the database
        "result_backend": None,
        "task_queues": [Queue(name, Exchange(name, type="direct"), routing_key=name) for name in QUEUES],
        "task_default_queue": settings.default_queue,
        "task_acks_late": True,
        "task_reject_on_worker_lost": False,  # the reaper decides about lost runs, not redelivery
        "worker_prefetch_multiplier": 1,
        "worker_concurrency": 1,
        "worker_max_tasks_per_child": settings.worker_max_tasks_per_child or None,
        "worker_cancel_long_running_tasks_on_connection_loss": False,
        # Backstops only: the task stops itself cooperatively at run_time_limit_s.
        "task_soft_time_limit": settings.run_time_limit_s + 60,
        "task_time_limit": settings.run_time_limit_s + 300,
        "task_publish_retry_policy": {
            "max_retries": 3,
            "interval_start": 0,
            "interval_step": 0.5,
            "interval_max": 1,
        },
        "worker_send_task_events": False,
    }


def make_celery(settings: Settings, *, include: Sequence[str] = ()) -> Celery:
    app = Celery("velora_bench", set_as_current=False, include=list(include))
    app.conf.update(celery_config(settings))
    return app


class Dispatcher:
    """Sends ``run_benchmark(run_id)`` messages; never raises (an unsent run is re-sent by the reaper).

    Every broker call borrows a connection from the Celery app's pool (``broker_pool_limit`` of them)
    and gives it back: a connection per call was never closed by kombu's SQLAlchemy transport (its
    channel's session kept a database connection checked out), so after 15 ``/health`` calls the
    broker's SQLAlchemy pool was exhausted and every later call waited 30 s for it.
    """

    def __init__(self, settings: Settings, celery: Celery | None = None) -> None:
        self.settings = settings
        self.celery = celery or make_celery(settings)

    def dispatch(self, runs: Sequence[tuple[int, str]]) -> list[int]:
        """Send one message per (run id, queue); returns the ids that reached the broker."""
        sent: list[int] = []
        if not runs:
            return sent
        try:
            with self.celery.producer_or_acquire() as producer:
                for run_id, queue in runs:
                    self.celery.send_task(
                        TASK_RUN_BENCHMARK,
                        args=[run_id],
                        queue=queue,
                        task_id=f"run-{run_id}-{uuid.uuid4().hex[:12]}",
                        producer=producer,
                    )
                    sent.append(run_id)
        except Exception as exc:  # broker down: the reaper re-sends once it is back
            log.warning("could not enqueue runs %s (%s); they will be re-sent", [r for r, _ in runs], exc)
        return sent

    def check(self, timeout_s: float = 3.0) -> dict[str, Any]:
        """Whether the broker answers, and how many messages wait in each queue."""
        url = _redact(self.settings.broker_url)
        try:
            with self.celery.pool.acquire(block=True, timeout=timeout_s) as conn:
                try:
                    conn.ensure_connection(max_retries=1, timeout=timeout_s)
                    depth = {name: _queue_depth(conn.default_channel, name) for name in QUEUES}
                except Exception:
                    conn.close()  # a failed channel (socket, SQL session) is not handed out again
                    raise
            return {"ok": True, "url": url, "queued_messages": depth}
        except Exception as exc:
            return {"ok": False, "url": url, "error": f"{type(exc).__name__}: {exc}"}

    def close(self) -> None:
        self.celery.close()


def lost_messages(sent: dict[str, int], depth: dict[str, int]) -> dict[str, int]:
    """Per queue, how many more runs the database says were sent and are unclaimed (``sent``) than
    the broker holds messages (``depth``): messages a flushed, evicted or failed-over broker lost."""
    return {queue: n - depth.get(queue, 0) for queue, n in sent.items() if n > depth.get(queue, 0)}


def _queue_depth(channel: Any, queue: str) -> int:
    """Messages waiting in ``queue``.

    Not a passive declare: kombu's Redis transport answers NOT_FOUND for an empty queue, and for every
    queue under a ``global_keyprefix`` (its ``EXISTS`` is not prefixed). Declaring one of the app's own
    durable queues is idempotent (a no-op on Redis, the queue's row on the SQLAlchemy transport).
    """
    return channel.queue_declare(queue=queue, durable=True, auto_delete=False).message_count


def _redact(url: str) -> str:
    """A URL without its password."""
    from sqlalchemy.engine import make_url

    try:
        if url.startswith("sqla+"):
            return "sqla+" + make_url(url.removeprefix("sqla+")).render_as_string(hide_password=True)
        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        return url.split("@")[-1]
