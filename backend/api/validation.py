"""Turning bad input into 422 answers a person can act on (the shape of FastAPI's own errors)."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Annotated, Any, Literal

from fastapi import Depends, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import ValidationError

from backend.settings import Settings
from velora_core.contract.spec import DatasetSpec, RunSpec

Loc = tuple[str | int, ...]

#: The most files a local model or dataset folder may hold (also stops a walk in a symlink loop).
MAX_LOCAL_FOLDER_FILES = 10_000


def invalid(loc: Loc, msg: str, type_: str = "value_error") -> RequestValidationError:
    return RequestValidationError([{"loc": list(loc), "msg": msg, "type": type_}])


def error_entries(errors: Sequence[Any], prefix: Loc = ()) -> list[dict[str, Any]]:
    """The API's error format: each error's location (under ``prefix``), message and type. Inputs
    are never echoed back (they may be large, secret, or not JSON at all: a NaN cannot be written)."""
    return [{"loc": [*prefix, *e["loc"]], "msg": e["msg"], "type": e["type"]} for e in errors]


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


def nested_runs(spec: RunSpec, loc: Loc) -> Iterator[tuple[RunSpec, Loc]]:
    """``spec`` and the pre-training run its model is made by (if any), with their locations."""
    yield spec, loc
    if spec.model.pretrain is not None:
        yield from nested_runs(spec.model.pretrain, (*loc, "model", "pretrain"))


def _local_paths(spec: RunSpec) -> Iterator[tuple[tuple[str, ...], str, Literal["model", "dataset"]]]:
    """Every local path a run reads: its model folder, its dataset (and evaluation) files."""
    if spec.model.source == "local" and spec.model.name is not None:
        yield ("model", "name"), spec.model.name, "model"
    datasets: list[tuple[tuple[str, ...], DatasetSpec | None]] = [
        (("dataset",), spec.dataset),
        (("eval", "dataset"), spec.eval.dataset),
    ]
    for loc, dataset in datasets:
        if dataset is None or dataset.source != "local":
            continue
        yield (*loc, "name"), dataset.name, "dataset"
        if dataset.eval_split is not None and not Path(dataset.name).is_dir():
            yield (*loc, "eval_split"), dataset.eval_split, "dataset"


def _folder_files(folder: Path) -> Iterator[Path]:
    count = 0
    for parent, _, files in os.walk(folder, followlinks=True):
        for name in files:
            count += 1
            if count > MAX_LOCAL_FOLDER_FILES:
                raise ValueError(f"holds more than {MAX_LOCAL_FOLDER_FILES} files")
            yield Path(parent, name)


def _path_problem(text: str, kind: Literal["model", "dataset"], settings: Settings) -> str | None:
    """Why this server will not read ``text`` for a submitted spec, or None.

    A path must be absolute and, with symlinks followed, lie under ``VELORA_LOCAL_ROOTS``; it is a
    folder (a model; a dataset laid out like a hub repository) or a regular file (a dataset), never
    a device or a FIFO; a dataset is at most ``VELORA_MAX_DATASET_BYTES``. A folder's files are held
    to the same rules, so a symlink inside cannot lead elsewhere.
    """
    roots = settings.resolved_local_roots
    where = f"VELORA_LOCAL_ROOTS: {os.pathsep.join(str(r) for r in roots)}"
    path = Path(text)
    if not path.is_absolute():
        return f"must be an absolute path under one of the folders this server reads ({where})"
    try:
        resolved = path.resolve(strict=True)
        mode = resolved.stat().st_mode
    except (OSError, RuntimeError):
        return f"does not exist on this server ({where})"

    def outside(p: Path) -> bool:
        return not any(p.is_relative_to(root) for root in roots)

    if outside(resolved):
        return f"lies outside the folders this server reads local files from ({where})"
    if stat.S_ISREG(mode):
        if kind == "model":
            return "must be a folder written by save_pretrained, not a file"
        size = resolved.stat().st_size
    elif stat.S_ISDIR(mode):
        size = 0
        try:
            for file in _folder_files(resolved):
                target = file.resolve(strict=True)
                if outside(target) or not stat.S_ISREG(target.stat().st_mode):
                    return f"holds {file.name!r}, which is not a regular file under the allowed folders ({where})"
                size += target.stat().st_size
        except ValueError as exc:
            return str(exc)
        except (OSError, RuntimeError):
            return f"holds a file that cannot be read ({where})"
    else:
        return "is neither a regular file nor a folder (devices, FIFOs and sockets are refused)"
    if kind == "dataset" and size > settings.max_dataset_bytes:
        return f"is {size} bytes, over this server's limit of {settings.max_dataset_bytes} (VELORA_MAX_DATASET_BYTES)"
    return None


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
            for field, text, kind in _local_paths(spec):
                problem = _path_problem(text, kind, settings)
                if problem is not None:
                    errors.append(
                        {
                            "loc": [*loc, *field],
                            "msg": f"{'.'.join(field)} {text[:300]!r} {problem}",
                            "type": "value_error",
                        }
                    )
    if errors:
        raise RequestValidationError(errors)
