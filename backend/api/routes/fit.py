"""``/fit``: "will it fit?" — each method's predicted memory (allocated, the caching allocator's reserved
bytes and the CUDA context, against the card) for a model and shape or a whole RunSpec / ComparisonSpec.

The prediction runs two training steps (the second, a steady one, tracked) under ``FakeTensorMode``
(``velora_core.bench.fit_estimate``), which needs torch; the API process never imports torch, so it runs ``python -m velora_core.bench.fit_estimate --json
--request -`` in a subprocess, the request on its standard input: one at a time (a second request while one runs gets a 503 at once, not a queue), killed
after ``VELORA_FIT_TIMEOUT_S`` (a 504), with a request bounded by ``FitRequest``'s fields. A
subprocess, not a worker task: the answer is wanted now, by the person at the form, and the GPU
workers' queue may be hours deep (docs/architecture.md, "Deliberate choices").
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import sys
import time

from fastapi import APIRouter, HTTPException
from pydantic import ValidationError

from backend.api.deps import SettingsDep, WriteAccess
from backend.api.docs import FIT_RULES, add_rules, error_responses
from backend.api.schemas import FitPublic
from backend.api.validation import JsonContent, invalid
from velora_core.contract.exit_codes import EXIT_BAD_INPUT, EXIT_OK
from velora_core.contract.fit_request import FitEstimate, FitRequest
from velora_core.contract.presets.model_shapes import MODEL_PRESETS
from velora_core.contract.spec import check_hub_id

router = APIRouter(prefix="/fit", tags=["fit"], responses=error_responses(401, 503, 504))

#: One prediction at a time per API process: each takes a CPU core for up to the time limit.
_running = asyncio.Lock()


def fit_command() -> list[str]:
    """The subprocess's command line (never a shell; ``--no-local``: no folder on this server is read;
    the request comes on standard input)."""
    return [sys.executable, "-m", "velora_core.bench.fit_estimate", "--json", "--no-local", "--request", "-"]


def fit_input(request: FitRequest) -> bytes:
    """What the subprocess reads on standard input: the request's JSON, the fields the client set
    (so a spec and the shape fields are never both present, and an unset autocast stays unset)."""
    return request.model_dump_json(exclude_unset=True).encode()


def _check_models(body: FitRequest) -> None:
    """Every model the request names is a preset or a hub id (a path on this server is refused)."""
    if body.model is not None and body.model not in MODEL_PRESETS:
        try:
            check_hub_id(body.model, "model")
        except ValueError as exc:
            raise invalid(("body", "model"), str(exc)) from None
    for run in body.runs() if body.spec is not None else []:
        model = (
            run.model.pretrain.model if run.model.source == "artifact" and run.model.pretrain else run.model
        )
        if model.source == "local":
            raise invalid(
                ("body", "spec", "model"),
                "a local folder is not offered by the service; name a preset or a hub id",
            )


@router.post("", response_model=FitPublic)
async def predict_fit(
    body: FitRequest, settings: SettingsDep, _: WriteAccess, _json: JsonContent
) -> FitPublic:
    """Predict each method's memory for a training step of ``model`` at the shape given (with
    ``method_configs``), or of every method of ``spec`` (a RunSpec or ComparisonSpec, as run would run
    it): the peak allocated bytes by component, the caching allocator's reserved bytes over the run
    and the CUDA context; with ``gpu_gib``, whether reserved + context fits and the largest micro-batch
    that does. ``model`` is a preset or a hub id (this server reads its ``config.json`` from the hub;
    local folders are not offered)."""
    _check_models(body)
    if importlib.util.find_spec("torch") is None:  # the API installed alone, with `.[service]`
        raise HTTPException(
            503,
            detail="This API server is installed without torch (the package's service extra), which the "
            "prediction needs: install the engine extra beside it, or run velora-bench fit where torch is",
        )
    if _running.locked():
        raise HTTPException(503, detail="Another fit is running on this server; try again shortly")
    async with _running:
        start = time.perf_counter()
        process = await asyncio.create_subprocess_exec(
            *fit_command(),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        try:
            out, err = await asyncio.wait_for(process.communicate(fit_input(body)), settings.fit_timeout_s)
        except TimeoutError:
            process.kill()
            await process.wait()
            raise HTTPException(
                504,
                detail=f"The prediction took longer than {settings.fit_timeout_s:g} s (VELORA_FIT_TIMEOUT_S); "
                "ask for fewer methods or a smaller model, or run velora-bench fit locally",
            ) from None
    message = err.decode(errors="replace").strip().splitlines()
    if process.returncode == EXIT_BAD_INPUT:
        line = message[-1] if message else "bad input"
        raise invalid(("body",), line.removeprefix("velora-bench fit: error: "))
    if process.returncode != EXIT_OK:
        raise HTTPException(
            503, detail=f"The prediction failed (exit code {process.returncode}): {(message or ['?'])[-1]}"
        )
    try:
        estimates = [FitEstimate.model_validate(row) for row in json.loads(out)]
    except (ValueError, ValidationError) as exc:
        raise HTTPException(503, detail=f"The prediction's output could not be read: {exc}") from None
    return FitPublic(request=body, estimates=estimates, seconds=round(time.perf_counter() - start, 2))


add_rules(router, predict_fit, FIT_RULES)
