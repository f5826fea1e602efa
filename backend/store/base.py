"""What every store module shares: the finished statuses and the status-move guard of the run
state machine (``velora_core.contract.result.RUN_TRANSITIONS``), the store's error and plain-row reads."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, cast

from sqlalchemy import ColumnElement, CursorResult, Result, Select
from sqlalchemy.orm import Session

from backend.tables import Run
from velora_core.contract.result import FINISHED_RUN_STATUSES, RunStatus, allowed_sources

FINISHED_STATUSES = tuple(sorted(FINISHED_RUN_STATUSES))  # a sequence, for SQL IN


def status_moves(target: RunStatus, *, sources: Iterable[RunStatus] | None = None) -> ColumnElement[bool]:
    """The WHERE clause of an UPDATE that moves a run to ``target``: its status is one of those the
    state machine allows to move there (or of ``sources``, each checked against it).

    Raises:
        ValueError: a source the state machine does not allow (a bug in the caller, at once).
    """
    return Run.status.in_(allowed_sources(target, sources))


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
