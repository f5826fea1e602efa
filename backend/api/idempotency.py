"""``Idempotency-Key`` on POSTs: a retried submission returns what the first one created."""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Protocol, TypeVar

from fastapi import Header, Response
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from backend import store
from backend.api.validation import invalid

IdempotencyKeyHeader = Annotated[
    str | None,
    Header(
        alias="Idempotency-Key",
        min_length=1,
        max_length=255,
        description="Any unique string; a retry with the same key and body is not queued twice.",
    ),
]


class Stored(Protocol):
    """A stored row: what ``create_once`` needs of the resource it creates."""

    @property
    def id(self) -> int: ...


T = TypeVar("T", bound=Stored)


def replay_or_conflict(session: Session, *, scope: str, key: str, payload_hash: str) -> int | None:
    """The resource id a previous request with this key created, or None if the key is new.

    Raises:
        RequestValidationError: the key was used before with a different body.
    """
    existing = store.find_idempotency_key(session, scope=scope, key=key)
    if existing is None:
        return None
    if existing.request_hash != payload_hash:
        raise invalid(
            ("header", "Idempotency-Key"),
            "this Idempotency-Key was already used with a different request body; use a new key for a new request",
        )
    return existing.resource_id


def create_once(
    session: Session,
    response: Response,
    *,
    scope: str,
    key: str | None,
    payload_hash: str,
    create: Callable[[], T],
) -> tuple[int, T | None]:
    """Create the resource (``create`` returns a stored row with an ``id``) and commit, unless
    ``key`` was used before.

    Returns:
        ``(id, created)``: the new resource, or ``(id of the earlier one, None)`` on a replay, when
        the ``Idempotent-Replayed`` header is set. A concurrent twin that commits first wins the
        race on the key's unique index; this request then answers with the twin's resource.
    Raises:
        RequestValidationError: the key was used before with a different body.
    """
    if key:
        existing = replay_or_conflict(session, scope=scope, key=key, payload_hash=payload_hash)
        if existing is not None:
            response.headers["Idempotent-Replayed"] = "true"
            return existing, None
    created = create()
    try:
        if key:
            store.add_idempotency_key(
                session, scope=scope, key=key, payload_hash=payload_hash, resource_id=created.id
            )
        session.commit()
    except IntegrityError:
        session.rollback()
        existing = replay_or_conflict(session, scope=scope, key=key or "", payload_hash=payload_hash)
        if existing is None:
            raise
        response.headers["Idempotent-Replayed"] = "true"
        return existing, None
    return created.id, created
