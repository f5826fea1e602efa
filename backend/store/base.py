"""What every store module shares: the run status values, the store's error, canonical JSON and
plain-row reads."""

from __future__ import annotations

from typing import Any, cast

from sqlalchemy import CursorResult, Result, Select
from sqlalchemy.orm import Session

from velora_core.contract.result import FINISHED_RUN_STATUSES, RunStatus

WAITING, QUEUED, RUNNING = RunStatus.WAITING.value, RunStatus.QUEUED.value, RunStatus.RUNNING.value
FINISHED_STATUSES = tuple(sorted(FINISHED_RUN_STATUSES))  # a sequence, for SQL IN


class StoreError(Exception):
    """A request the store refuses (the message says why, for a person)."""


def changed_rows(result: Result[Any]) -> int:
    """The rows an UPDATE or DELETE changed: ``Session.execute`` is typed as returning a plain
    ``Result``, but for these statements it is a ``CursorResult``, which counts them."""
    return cast(CursorResult[Any], result).rowcount


def _plain_rows(session: Session, statement: Select, params: dict[str, Any]) -> list[dict[str, Any]]:
    """The rows of a column ``statement`` as dicts, through the session's connection: a Core result
    skips the ORM's row processing, and dicts are what pydantic validates fastest."""
    result = session.connection().execute(statement, params)
    keys = tuple(result.keys())
    return [dict(zip(keys, row, strict=True)) for row in result]
