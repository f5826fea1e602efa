"""Idempotency keys: remember a POST's answer so that its retry gets the same one."""

from __future__ import annotations

import hashlib
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from backend.tables import IdempotencyKey
from velora_core.contract.hashing import canonical_json


def request_hash(payload: Any) -> str:
    # The full digest (not the 16-digit content hash): it guards a retry against a different body.
    return hashlib.sha256(canonical_json(payload).encode()).hexdigest()


def find_idempotency_key(session: Session, *, scope: str, key: str) -> IdempotencyKey | None:
    return session.scalar(
        select(IdempotencyKey).where(IdempotencyKey.scope == scope, IdempotencyKey.key == key)
    )


def add_idempotency_key(
    session: Session, *, scope: str, key: str, payload_hash: str, resource_id: int
) -> None:
    """Remember a POST's answer. Flushes, so a concurrent twin fails here with IntegrityError."""
    session.add(IdempotencyKey(scope=scope, key=key, request_hash=payload_hash, resource_id=resource_id))
    session.flush()
