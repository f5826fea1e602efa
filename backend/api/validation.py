"""Turning bad input into 422 answers a person can act on (the shape of FastAPI's own errors)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError

from backend.settings import Settings
from velora_core.spec import RunSpec

Loc = tuple[str | int, ...]


def invalid(loc: Loc, msg: str, type_: str = "value_error") -> RequestValidationError:
    return RequestValidationError([{"loc": list(loc), "msg": msg, "type": type_}])


def from_pydantic(exc: ValidationError, prefix: Loc) -> RequestValidationError:
    """The errors of ``exc`` with ``prefix`` on their locations; inputs are not echoed back."""
    errors = [
        {"loc": [*prefix, *err["loc"]], "msg": err["msg"], "type": err["type"]}
        for err in exc.errors(include_url=False, include_input=False, include_context=False)
    ]
    return RequestValidationError(errors)


def check_limits(runs: Sequence[RunSpec], settings: Settings, prefix: Loc) -> None:
    """Enforce this server's bounds (``VELORA_MAX_*``), which may be tighter than the spec's.

    Raises:
        RequestValidationError: one error per violated bound.
    """
    errors: list[dict[str, Any]] = []
    if len(runs) > settings.max_runs_per_comparison:
        errors.append(
            {
                "loc": [*prefix, "methods"],
                "msg": f"{len(runs)} runs (methods × seeds) exceed this server's limit of "
                f"{settings.max_runs_per_comparison} (VELORA_MAX_RUNS_PER_COMPARISON)",
                "type": "value_error",
            }
        )
    bounds = (
        ("steps", settings.max_steps, "VELORA_MAX_STEPS"),
        ("micro_batch", settings.max_micro_batch, "VELORA_MAX_MICRO_BATCH"),
        ("seq_len", settings.max_seq_len, "VELORA_MAX_SEQ_LEN"),
    )
    spec = runs[0] if runs else None
    if spec is not None:
        for name, limit, env in bounds:
            value = getattr(spec, name)
            if value is not None and value > limit:
                errors.append(
                    {
                        "loc": [*prefix, name],
                        "msg": f"{name}={value} exceeds this server's limit of {limit} ({env})",
                        "type": "less_than_equal",
                    }
                )
    if errors:
        raise RequestValidationError(errors)
