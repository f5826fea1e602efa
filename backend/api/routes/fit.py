"""``/fit``: "will it fit?" — each method's predicted peak memory for a model and shape, on this server.

The prediction runs two training steps (the second, a steady one, tracked) under ``FakeTensorMode`` (``velora_core.bench.fit_prediction``), which needs
torch; the API process never imports torch, so it runs ``python -m velora_core.bench.fit_prediction --json`` in a
subprocess: one at a time (a second request while one runs gets a 503 at once, not a queue), killed
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


def fit_command(request: FitRequest) -> list[str]:
    """The subprocess's command line (never a shell; ``--no-local``: no folder on this server is read)."""
    command = [
        sys.executable,
        "-m",
        "velora_core.bench.fit_prediction",
        "--json",
        "--no-local",
        "--model",
        request.model,
    ]
    command += ["--methods", *request.methods, "--micro-batch", str(request.micro_batch)]
    command += ["--seq-len", str(request.seq_len), "--dtype", request.dtype]
    if request.autocast is not None:
        command += ["--autocast", request.autocast]
    if request.gpu_gib is not None:
        command += ["--gpu-gib", repr(request.gpu_gib)]
    return command


@router.post("", response_model=FitPublic)
async def predict_fit(
    body: FitRequest, settings: SettingsDep, _: WriteAccess, _json: JsonContent
) -> FitPublic:
    """Predict each method's peak memory for a steady training step of ``model`` at the shape given, and
    with ``gpu_gib`` whether it fits and the largest micro-batch that does. ``model`` is a preset or a
    hub id (this server reads its ``config.json`` from the hub; local folders are not offered).
    Methods' own settings (``method_configs``) are not taken here: the defaults are predicted."""
    if body.model not in MODEL_PRESETS:
        try:
            check_hub_id(body.model, "model")
        except ValueError as exc:
            raise invalid(("body", "model"), str(exc)) from None
    if body.method_configs:
        raise invalid(("body", "method_configs"), "not offered by the service; use velora-bench fit")
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
            *fit_command(body), stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
        )
        try:
            out, err = await asyncio.wait_for(process.communicate(), settings.fit_timeout_s)
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
