"""Turning bad input into 422 answers a person can act on (the shape of FastAPI's own errors)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Annotated, Any, TypeVar

from fastapi import Depends, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ValidationError

from backend.local_paths import local_path_problems, nested_runs
from backend.settings import Settings
from velora_core.contract.spec import RunSpec

Loc = tuple[str | int, ...]
M = TypeVar("M", bound=BaseModel)


def invalid(loc: Loc, msg: str, type_: str = "value_error") -> RequestValidationError:
    return RequestValidationError([{"loc": list(loc), "msg": msg, "type": type_}])


def error_entries(errors: Sequence[Any], prefix: Loc = ()) -> list[dict[str, Any]]:
    """The API's error format: each error's location (under ``prefix``), message and type. Inputs
    are never echoed back (they may be large, secret, or not JSON at all: a NaN cannot be written)."""
    return [{"loc": [*prefix, *e["loc"]], "msg": e["msg"], "type": e["type"]} for e in errors]


def parse_strict(model: type[M], body: Any, prefix: Loc = ("body",)) -> M:
    """``body`` (parsed JSON) as ``model``, validated as JSON in pydantic's strict mode: ``true`` is no
    integer, ``1.0`` no step count and ``"5"`` no number (lax mode took ``"steps": true`` as 1).

    Raises:
        RequestValidationError: each field's error, located under ``prefix``.
    """
    try:
        return model.model_validate_json(json.dumps(body), strict=True)
    except ValidationError as exc:
        raise from_pydantic(exc, prefix) from None
    except (ValueError, TypeError) as exc:  # NaN or infinity, which JSON cannot carry
        raise invalid(prefix, f"not valid JSON: {exc}") from None


def from_pydantic(exc: ValidationError, prefix: Loc) -> RequestValidationError:
    """The errors of ``exc`` with ``prefix`` on their locations."""
    return RequestValidationError(error_entries(exc.errors(include_url=False, include_input=False), prefix))


async def validation_error_response(_: Request, exc: Exception) -> JSONResponse:
    """The 422 answer, in :func:`error_entries`' format."""
    assert isinstance(exc, RequestValidationError)
    return JSONResponse(status_code=422, content={"detail": error_entries(exc.errors())})


def require_json(request: Request) -> None:
    """A request body must be sent as JSON: anything else is a 415 that says so (not a 422 saying
    the body "should be a valid dictionary"). No Content-Type at all is read as JSON, as FastAPI does.

    Raises:
        HTTPException: 415.
    """
    content_type = request.headers.get("content-type")
    if content_type is None:
        return
    media_type = content_type.split(";", 1)[0].strip().lower()
    if media_type == "application/json" or (
        media_type.startswith("application/") and media_type.endswith("+json")
    ):
        return
    raise HTTPException(
        status_code=415,
        detail=f"Unsupported Content-Type {media_type[:100]!r}: send the body as JSON "
        "(Content-Type: application/json)",
    )


#: A route parameter that makes the route answer 415 to a body that is not JSON.
JsonContent = Annotated[None, Depends(require_json)]


def check_limits(runs: Sequence[RunSpec], settings: Settings, prefix: Loc) -> None:
    """Enforce this server's bounds (``VELORA_MAX_*``), which may be tighter than the spec's, and its
    local-path rules (``VELORA_LOCAL_ROOTS``), on every run and on the pre-training run it depends on.

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
    checked: set[str] = set()  # the runs of a comparison share everything these checks read
    for run in runs:
        for spec, loc in nested_runs(run, prefix):
            key = f"{loc}:{spec.model_dump_json(exclude={'method', 'method_config', 'seed'})}"
            if key in checked:
                continue
            checked.add(key)
            for name, limit, env in bounds:
                value = getattr(spec, name)
                if value is not None and value > limit:
                    errors.append(
                        {
                            "loc": [*loc, name],
                            "msg": f"{name}={value} exceeds this server's limit of {limit} ({env})",
                            "type": "less_than_equal",
                        }
                    )
            for field, message in local_path_problems(spec, settings):
                errors.append({"loc": [*loc, *field], "msg": message, "type": "value_error"})
    if errors:
        raise RequestValidationError(errors)
