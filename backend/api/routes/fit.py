"""``/fit``: "will it fit?" — each method's predicted memory (allocated, the caching allocator's reserved
bytes and the CUDA context, against the card) for a model and shape or a whole RunSpec / ComparisonSpec.

The prediction runs two training steps (the second, a steady one, tracked) under ``FakeTensorMode``
(``velora_core.bench.fit_estimate``), which needs torch; the API process never imports torch, so it runs
``python -m velora_core.bench.fit_estimate --json --request -`` in a subprocess, the request on its standard
input: one at a time, the others waiting in line (up to :data:`MAX_WAITING`; ``GET /fit/queue``
says how many are ahead), killed after ``VELORA_FIT_TIMEOUT_S`` (a 504), with a request bounded by
``FitRequest``'s fields. Answers are cached by request (:data:`CACHE_SIZE` of them), so a repeated
question is answered at once. A model may also be a pasted ``config.json`` (``config``). A
subprocess, not a worker task: the answer is wanted now, by the person at the form, and the GPU
workers' queue may be hours deep (docs/architecture.md, "Deliberate choices").

Importing torch, transformers, peft and bitsandbytes takes ~9 s on a 2-core CPU, longer than many
predictions. So, with ``VELORA_FIT_WARM_SPARE`` (the default), the line keeps one *spare*: a process
of the same command started ahead of its request, its libraries imported and warmed up
(``velora_core.cli.fit_warmup``), blocked reading its standard input (:meth:`FitLine.process`).
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import json
import logging
import sys
import tempfile
import time
from collections import OrderedDict
from pathlib import Path
from typing import Any

from fastapi import APIRouter, FastAPI, HTTPException, Request
from pydantic import BaseModel, Field, ValidationError

from backend.api.deps import SettingsDep, WriteAccess
from backend.api.docs import FIT_RULES, add_rules, error_responses
from backend.api.schemas import FitPublic
from backend.api.validation import JsonContent, invalid
from velora_core.contract.exit_codes import EXIT_BAD_INPUT, EXIT_OK
from velora_core.contract.fit_request import FitEstimate, FitRequest
from velora_core.contract.names import check_hub_id
from velora_core.contract.presets.model_shapes import MODEL_PRESETS

log = logging.getLogger(__name__)

router = APIRouter(prefix="/fit", tags=["fit"], responses=error_responses(401, 503, 504))

#: Requests waiting beyond which a new one gets a 503 (each would wait a whole fit).
MAX_WAITING = 8
#: Answers kept, by request: a repeat is answered from here.
CACHE_SIZE = 128


class FitLine:
    """An API process's predictions: one at a time (each takes a CPU core for up to the time limit;
    the lock is fair, so requests are answered in the order they came), the count waiting, the
    answers kept by request, and with ``warm_spare`` the spare process (:meth:`process`). Made by
    the first request to ``/fit`` (so an app that is never asked never starts a process)."""

    def __init__(self, warm_spare: bool) -> None:
        self.running = asyncio.Lock()
        self.waiting = 0
        self.cache: OrderedDict[str, FitPublic] = OrderedDict()
        self.warm_spare = warm_spare
        #: The standard command (:func:`fit_command`), started and waiting for its request.
        self.spare: asyncio.subprocess.Process | None = None

    @classmethod
    def of(cls, request: Request) -> FitLine:
        line = getattr(request.app.state, "fit_line", None)
        if line is None:
            line = request.app.state.fit_line = cls(request.app.state.settings.fit_warm_spare)
        return line

    async def process(self, config_dir: Path | None) -> asyncio.subprocess.Process:
        """The process that answers one request, its standard input not yet written. A pasted
        config.json (``config_dir``) gets a fresh process of the command that may read that folder,
        and so does every request without ``warm_spare``. The standard command takes the spare,
        unless there is none yet or it died (crashed, killed by the OS: its ``returncode`` is set),
        and then a fresh one. The next spare starts at once when a request is waiting for this one
        (it imports while this one predicts), else when this prediction is over (:meth:`refill`): its
        ~9 s import would take a core from this prediction's processes. A process still answers
        exactly one request: no request sees what another left in it."""
        if config_dir is not None or not self.warm_spare:
            return await _start(fit_command(config_dir))
        process, self.spare = self.spare, None
        if process is not None and process.returncode is not None:
            await _discard(process)
            process = None
        if process is None:
            process = await _start(fit_command())
        if self.waiting:
            await self.refill()
        return process

    async def refill(self) -> None:
        """Start the spare, if the line keeps one and has none."""
        if not self.warm_spare or self.spare is not None:
            return
        try:
            self.spare = await _start(fit_command())
        except OSError as exc:  # no fork now (memory, process limit): no request is harmed
            log.warning("the spare fit process could not start (the next request starts its own): %s", exc)

    async def close(self) -> None:
        """Kill the spare and wait for it (the app's shutdown)."""
        spare, self.spare = self.spare, None
        if spare is not None:
            with contextlib.suppress(ProcessLookupError):
                spare.kill()
            await spare.communicate()  # reaps it and closes its pipes


async def close_fit_line(app: FastAPI) -> None:
    """The app's shutdown: no spare process outlives it (:meth:`FitLine.close`)."""
    line = getattr(app.state, "fit_line", None)
    if line is not None:
        await line.close()


async def _start(command: list[str]) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        *command,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )


async def _discard(spare: asyncio.subprocess.Process) -> None:
    """A spare that exited before its request: read what it left (closing its pipes) and log why."""
    _, err = await spare.communicate()
    last = (err.decode(errors="replace").strip().splitlines() or ["no message"])[-1]
    log.warning("the spare fit process exited (code %s) before its request came: %s", spare.returncode, last)


#: The largest pasted config.json (its serialised characters).
MAX_CONFIG_CHARS = 100_000


class FitQuestion(FitRequest):
    """A :class:`FitRequest`, where ``model`` may instead be described by a pasted ``config.json``
    (``config``; ``model`` is then only its label)."""

    config: dict[str, Any] | None = Field(
        default=None, description="A model's config.json, pasted: predicted without the hub."
    )


class FitQueue(BaseModel):
    """The line of ``POST /fit`` requests on this API process."""

    running: bool = Field(description="A prediction is running now.")
    waiting: int = Field(description="Requests waiting behind it.")
    max_waiting: int = MAX_WAITING
    cached: int = Field(description="Answers kept for repeated requests.")


@router.get("/queue", response_model=FitQueue)
async def fit_queue(request: Request, _: WriteAccess) -> FitQueue:
    """How many fit requests are ahead of a new one (poll while yours waits)."""
    line = FitLine.of(request)
    return FitQueue(running=line.running.locked(), waiting=line.waiting, cached=len(line.cache))


def fit_command(config_dir: Path | None = None) -> list[str]:
    """The subprocess's command line (never a shell; the request comes on standard input;
    ``--no-local``: no folder on this server is read, unless ``config_dir`` is the folder this route
    wrote a pasted config.json to, which the request then names as its model)."""
    command = [sys.executable, "-m", "velora_core.bench.fit_estimate", "--json", "--request", "-"]
    return command if config_dir is not None else [*command, "--no-local"]


def fit_input(request: FitRequest) -> bytes:
    """What the subprocess reads on standard input: the request's JSON, the fields the client set
    (so a spec and the shape fields are never both present, and an unset autocast stays unset)."""
    return request.model_dump_json(exclude_unset=True).encode()


def _check_models(body: FitQuestion) -> None:
    """Every model the request names is a preset, a hub id or a pasted config.json (a path on this
    server is refused)."""
    if body.config is not None:
        if len(json.dumps(body.config)) > MAX_CONFIG_CHARS:
            raise invalid(("body", "config"), f"a config.json of at most {MAX_CONFIG_CHARS:,} characters")
        if body.spec is not None:
            raise invalid(("body", "config"), "give a pasted config.json with model and methods, not a spec")
    elif body.model is not None and body.model not in MODEL_PRESETS:
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
    body: FitQuestion, request: Request, settings: SettingsDep, _: WriteAccess, _json: JsonContent
) -> FitPublic:
    """Predict each method's memory for a training step of ``model`` at the shape given (with
    ``method_configs``), or of every method of ``spec`` (a RunSpec or ComparisonSpec, as run would run
    it): the peak allocated bytes by component, the caching allocator's reserved bytes over the run
    and the CUDA context; with ``gpu_gib``, whether reserved + context fits and the largest micro-batch
    that does. ``model`` is a preset or a hub id (this server reads its ``config.json`` from the hub;
    local folders are not offered), or ``config`` a pasted ``config.json``. A request waits in line
    behind the one running (``GET /fit/queue``); a repeated request is answered from the cache
    (``cached``)."""
    _check_models(body)
    if importlib.util.find_spec("torch") is None:  # the API installed alone, with `.[service]`
        raise HTTPException(
            503,
            detail="This API server is installed without torch (the package's service extra), which the "
            "prediction needs: install the engine extra beside it, or run velora-bench fit where torch is",
        )
    key, line = body.model_dump_json(), FitLine.of(request)
    if key in line.cache:
        line.cache.move_to_end(key)
        return line.cache[key].model_copy(update={"cached": True, "ahead_on_arrival": 0})
    if line.waiting >= MAX_WAITING:
        raise HTTPException(503, detail=f"{MAX_WAITING} fit requests are already waiting; try again shortly")
    ahead = line.waiting + line.running.locked()
    line.waiting += 1
    try:
        await line.running.acquire()
    finally:
        line.waiting -= 1
    try:
        if key in line.cache:  # answered while this one waited
            return line.cache[key].model_copy(update={"cached": True, "ahead_on_arrival": ahead})
        answer = await _predict(body, settings.fit_timeout_s, line)
    finally:
        if body.config is None:  # a pasted config.json's request leaves the spare alone
            await line.refill()
        line.running.release()
    answer.ahead_on_arrival = ahead
    line.cache[key] = answer
    while len(line.cache) > CACHE_SIZE:
        line.cache.popitem(last=False)
    return answer


async def _predict(body: FitQuestion, timeout_s: float, line: FitLine) -> FitPublic:
    """Run the prediction's subprocess (with a pasted config.json written to a folder of its own)."""
    request = FitRequest.model_validate(body.model_dump(exclude={"config"}, exclude_unset=True))
    with tempfile.TemporaryDirectory(prefix="velora-fit-") as folder:
        config_dir, sent = None, request
        if body.config is not None:
            config_dir = Path(folder)
            (config_dir / "config.json").write_text(json.dumps(body.config))
            sent = request.model_copy(update={"model": str(config_dir)})
        start = time.perf_counter()
        process = await line.process(config_dir)
        try:
            out, err = await asyncio.wait_for(process.communicate(fit_input(sent)), timeout_s)
        except TimeoutError:
            process.kill()
            await process.wait()
            raise HTTPException(
                504,
                detail=f"The prediction took longer than {timeout_s:g} s (VELORA_FIT_TIMEOUT_S); "
                "ask for fewer methods or a smaller model, or run velora-bench fit locally",
            ) from None
    message = err.decode(errors="replace").strip().splitlines()
    if process.returncode == EXIT_BAD_INPUT:
        last = message[-1] if message else "bad input"
        raise invalid(("body",), last.removeprefix("velora-bench fit: error: "))
    if process.returncode != EXIT_OK:
        raise HTTPException(
            503, detail=f"The prediction failed (exit code {process.returncode}): {(message or ['?'])[-1]}"
        )
    try:
        estimates = [FitEstimate.model_validate(row) for row in json.loads(out)]
    except (ValueError, ValidationError) as exc:
        raise HTTPException(503, detail=f"The prediction's output could not be read: {exc}") from None
    return FitPublic(request=request, estimates=estimates, seconds=round(time.perf_counter() - start, 2))


add_rules(router, predict_fit, FIT_RULES)
