""""Will it fit?": one training step of each method under ``FakeTensorMode``, with no weights allocated.

The model is built by the same method code as a real run (``velora_core.methods.registry.prepare_model``) on
the ``meta`` device; each parameter and buffer is then given a fake tensor of its shape and dtype,
the optimizer comes from the trainer (``velora_core.bench.trainer.Trainer``), and one step (forward,
backward, gradient clipping, optimizer step) runs under :class:`~velora_core.memory.tracker.MemoryTracker`,
the tracker every real run uses on its first step. Nothing is computed and no byte is allocated,
so a LLaMA-7B step is predicted on a laptop CPU (docs/architecture.md, "Memory accounting").

4-bit weights: bitsandbytes' ``Params4bit`` cannot wrap a fake tensor, so each 4-bit weight becomes
a plain fake ``uint8`` tensor of the packed shape bitsandbytes' own ``quantize_4bit`` gives (its
fake kernel), carrying the quantisation state that call returns; the bytes are bitsandbytes', and the
forward is still bitsandbytes' ``Linear4bit`` and peft's LoRA layer on it.

The largest micro-batch: activation memory grows linearly in the micro-batch at a fixed sequence
length, so each phase's peak is a line through two fake steps (``N`` and ``2N``); the smallest
solution over the phases is confirmed by a third fake step (and stepped down if that overshoots).

    python -m velora_core.bench.fit_prediction --model llama-7b --methods full lora qlora --micro-batch 8 \\
        --seq-len 512 --dtype bf16 [--gpu-gib 80] [--json]

is the same as ``velora-bench fit …`` (the service runs this module in a subprocess).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import fields, replace
from pathlib import Path
from typing import Any

import torch
from pydantic import ValidationError
from torch import nn
from torch._subclasses.fake_tensor import FakeTensorMode, unset_fake_temporarily

from velora_core.cli.fit_command import add_fit_arguments, request_from_args
from velora_core.contract.errors import validation_message
from velora_core.contract.exit_codes import EXIT_BAD_INPUT, EXIT_FAILED, EXIT_OK
from velora_core.contract.fit_request import MAX_SEARCHED_MICRO_BATCH, FitEstimate, FitRequest
from velora_core.contract.presets.model_shapes import MODEL_PRESETS
from velora_core.contract.result import PHASES
from velora_core.contract.spec import RunSpec
from velora_core.memory.tracker import MemoryTracker, TrackedStep

FOUR_BIT_NOTE = (
    "4-bit weights: bitsandbytes' Params4bit cannot hold a fake tensor, so each is a plain fake uint8 "
    "tensor of the packed shape bitsandbytes' quantize_4bit returns, with its quantisation state "
    "(bytes as bitsandbytes stores them; the forward is still bitsandbytes' Linear4bit)"
)
DEVICE_NOTE = "predicted with the CPU's kernels; a GPU's attention kernels may save less for backward"


def model_spec(name: str, allow_local: bool = True) -> dict[str, Any]:
    """A preset name, a local directory with a ``config.json`` (when ``allow_local``) or a hub id,
    as a RunSpec's ``model`` (``memory_only``: random weights of that shape, config only)."""
    if name in MODEL_PRESETS:
        return {"source": "preset", "name": name, "memory_only": True}
    if allow_local and (Path(name) / "config.json").is_file():
        return {"source": "local", "name": name, "memory_only": True}
    return {"source": "hub", "name": name, "memory_only": True}


def fit_spec(request: FitRequest, method: str, micro_batch: int, allow_local: bool = True) -> RunSpec:
    """The one-step memory-only RunSpec that ``method`` of ``request`` at ``micro_batch`` would run.

    Raises:
        ValueError: the spec does not validate (the message names the field).
    """
    data = {
        "workload": "finetune",
        "model": model_spec(request.model, allow_local),
        "dataset": {"name": "stdlib-corpus"},
        "method": method,
        "method_config": request.method_configs.get(method, {}),
        "seq_len": request.seq_len,
        "micro_batch": micro_batch,
        "steps": 1,
        "dtype": request.dtype,
        "device": "cpu",
        "eval": {"metric": "none"},
        "save_artifact": False,
    }
    try:
        return RunSpec.model_validate(data)
    except ValidationError as exc:
        raise ValueError(f"method {method!r}: {validation_message(exc, whole=None)}") from None


# --- fake weights ---------------------------------------------------------------------------------


def _fake_4bit(module: nn.Module, param: torch.Tensor, dtype: torch.dtype) -> nn.Parameter:
    """A 4-bit weight as bitsandbytes would store it, on fake tensors (see the module docstring)."""
    import bitsandbytes as bnb

    weight = torch.empty(param.shape, dtype=dtype)  # (out, in), fake
    packed, state = bnb.functional.quantize_4bit(
        weight,
        blocksize=param.blocksize,
        compress_statistics=param.compress_statistics,
        quant_type=param.quant_type,
        quant_storage=param.quant_storage,
    )
    fake = nn.Parameter(packed, requires_grad=False)
    for name in ("blocksize", "compress_statistics", "quant_type", "quant_storage"):
        setattr(fake, name, getattr(param, name))
    fake.quant_state, fake.bnb_quantized = state, True
    module.quant_state = state
    return fake


def _warm_bitsandbytes() -> None:
    """bitsandbytes builds its quantisation code table from Python numbers on first use (a
    data-dependent read that fake tensors refuse), so build it once for real."""
    import bitsandbytes as bnb

    bnb.functional.quantize_4bit(torch.zeros(64, 64), compress_statistics=True, quant_type="nf4")


@contextlib.contextmanager
def _real_quantisation_maps() -> Iterator[None]:
    """bitsandbytes' 8-bit optimizers build their quantisation maps (``create_dynamic_map``) from
    tensor values when constructed, which fake tensors refuse (``DataDependentOutputException``: the
    503 of ``POST /fit`` for ``full+8bit``). The maps are constants: build each once for real and hand
    the real table to every optimizer built under fake tensors (a few hundred bytes, not counted)."""
    import bitsandbytes as bnb

    functional = bnb.functional
    real = functional.create_dynamic_map
    tables: dict[tuple[Any, ...], torch.Tensor] = {}

    def cached(signed: bool = True, max_exponent_bits: int = 7, total_bits: int = 8) -> torch.Tensor:
        key = (signed, max_exponent_bits, total_bits)
        if key not in tables:
            with unset_fake_temporarily():
                tables[key] = real(signed=signed, max_exponent_bits=max_exponent_bits, total_bits=total_bits)
        return tables[key]

    functional.create_dynamic_map = cached
    try:
        yield
    finally:
        functional.create_dynamic_map = real


def materialise(
    model: nn.Module, mode: FakeTensorMode, dtype: torch.dtype
) -> tuple[dict[int, Any], list[str]]:
    """Give every parameter and buffer of a meta-device ``model`` a fake tensor of its shape and dtype
    (shared ones stay shared), in place. Returns the map from each old parameter's ``id`` to its new
    one, and notes on what was not a plain fake tensor."""
    notes: list[str] = []
    new: dict[int, Any] = {}
    buffers: dict[int, torch.Tensor] = {}  # not returned: a buffer the model replaces must be freed
    four_bit = False
    for module in model.modules():
        for name, param in list(module._parameters.items()):
            if param is None:
                continue
            if id(param) not in new:
                if getattr(param, "quant_type", None) is not None and hasattr(param, "compress_statistics"):
                    if not four_bit:
                        _warm_bitsandbytes()
                        four_bit = True
                    with mode:
                        new[id(param)] = _fake_4bit(module, param, dtype)
                else:
                    with mode:
                        fake = torch.empty(param.shape, dtype=param.dtype)
                    new[id(param)] = nn.Parameter(fake, requires_grad=param.requires_grad)
            module._parameters[name] = new[id(param)]
        for name, buffer in list(module._buffers.items()):
            if buffer is None:
                continue
            if id(buffer) not in buffers:
                with mode:
                    buffers[id(buffer)] = torch.zeros(buffer.shape, dtype=buffer.dtype)
            module._buffers[name] = buffers[id(buffer)]
    if four_bit:
        notes.append(FOUR_BIT_NOTE)
    return new, notes


def _remap(params: Any, new: dict[int, Any]) -> Any:
    """A trainer's parameter list (or list of param groups) with each parameter replaced by its fake."""
    if isinstance(params, torch.Tensor):
        return new.get(id(params), params)
    if isinstance(params, dict):
        return {k: _remap(v, new) if k == "params" else v for k, v in params.items()}
    if isinstance(params, (list, tuple)):
        return type(params)(_remap(p, new) for p in params)
    return params


# --- one fake step --------------------------------------------------------------------------------


def _forward_hooks(prepared: Any, tracker: MemoryTracker) -> contextlib.AbstractContextManager[None]:
    """The saved-tensor hooks a method runs its training forward in (offloading to the host, where a
    method sets ``PreparedModel.saved_tensors_hooks``), through the tracker's; else nothing."""
    make = getattr(prepared, "saved_tensors_hooks", None)
    if make is None:
        return contextlib.nullcontext()
    hooks = make()
    return tracker.saving_through(hooks.pack_hook, hooks.unpack_hook)


def fake_step(spec: RunSpec, timeline_points: int = 240) -> tuple[TrackedStep, list[str]]:
    """Predict one training step of ``spec`` (its method, model, shape and dtype) with no weights.

    Returns:
        What :class:`MemoryTracker` saw, and notes on anything counted differently.
    Raises:
        ValueError: the method cannot be built for this model (from the method code).
    """
    from velora_core.bench.engine import model_source
    from velora_core.bench.trainer import Trainer
    from velora_core.methods.registry import prepare_model

    meta = torch.device("meta")
    source = model_source(spec, meta, None)  # a preset, a hub config or a local folder: no base run
    prepared = prepare_model(spec.method, source, spec.method_config)
    mode = FakeTensorMode(allow_non_fake_inputs=True)  # constants bitsandbytes keeps on the host
    new, notes = materialise(prepared.model, mode, source.dtype)
    # Every parameter list the prepared model names (the trainable ones, GaLore's projected ones):
    # the optimizer is built from them, so a stale meta parameter would change what it does.
    prepared = replace(prepared, **{f.name: _remap(getattr(prepared, f.name), new) for f in fields(prepared)})
    model = prepared.model
    model.train()
    vocab = model.get_input_embeddings().num_embeddings
    shape = (spec.micro_batch, spec.seq_len)
    with mode, _real_quantisation_maps():
        trainer = Trainer(spec, prepared, torch.device("cpu"), None)
        tracker = MemoryTracker(model, trainer.optimizer, timeline_points)
        with tracker:  # the steps of Trainer.train's first (measured) step
            ids = torch.randint(3, vocab, shape)
            batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids.clone()}
            with _forward_hooks(prepared, tracker):
                loss = model(**batch).loss
            tracker.set_phase("backward")
            (loss / spec.grad_accum).backward()
            tracker.set_phase("optimizer")
            if spec.optimizer.max_grad_norm is not None:
                torch.nn.utils.clip_grad_norm_(trainer.params, spec.optimizer.max_grad_norm)
            trainer.optimizer.step()
    return tracker.result(), [*notes, DEVICE_NOTE]


def largest_micro_batch(
    step_at: Callable[[int], TrackedStep], first: TrackedStep, micro_batch: int, gpu_bytes: int
) -> tuple[int | None, list[str]]:
    """The largest micro-batch whose step fits in ``gpu_bytes``: each phase's peak as a line through
    ``first`` (at ``micro_batch``) and a step at twice that, solved for the card, then confirmed by
    one more step (stepped down while it overshoots, three times at most). None if 1 does not fit."""
    second_batch = 2 * micro_batch
    second = step_at(second_batch)
    limits, slopes = [], []
    for phase in PHASES:
        low, high = first.phase_peaks.get(phase), second.phase_peaks.get(phase)
        if low is None or high is None:
            continue
        slope = (high - low) / (second_batch - micro_batch)
        if slope <= 0:
            if high > gpu_bytes:
                return None, [f"the {phase} phase needs {high:,} bytes whatever the micro-batch"]
            continue
        slopes.append(slope)
        limits.append(math.floor((gpu_bytes - (low - slope * micro_batch)) / slope))
    estimate = min(min(limits, default=MAX_SEARCHED_MICRO_BATCH), MAX_SEARCHED_MICRO_BATCH)
    notes = (
        []
        if estimate < MAX_SEARCHED_MICRO_BATCH
        else [f"capped at {MAX_SEARCHED_MICRO_BATCH} (a run's limit)"]
    )
    for _ in range(3):
        if estimate < 1:
            return None, notes
        confirm = (
            first if estimate == micro_batch else second if estimate == second_batch else step_at(estimate)
        )
        if confirm.peak_bytes <= gpu_bytes:
            return estimate, notes
        estimate -= max(1, math.ceil((confirm.peak_bytes - gpu_bytes) / max(slopes, default=1)))
    return None, [*notes, "the step's peak is not linear in the micro-batch here; no size confirmed"]


def estimate(request: FitRequest, allow_local: bool = True) -> list[FitEstimate]:
    """One :class:`FitEstimate` per method of ``request``, in its order.

    Raises:
        ValueError: a method's spec or model cannot be built (named).
    """
    out = []
    for method in request.methods:
        start = time.perf_counter()

        def step_at(micro_batch: int, method: str = method) -> TrackedStep:
            return fake_step(fit_spec(request, method, micro_batch, allow_local), timeline_points=2)[0]

        tracked, notes = fake_step(fit_spec(request, method, request.micro_batch, allow_local), 2)
        row = FitEstimate(
            method=method,
            micro_batch=request.micro_batch,
            seq_len=request.seq_len,
            dtype=request.dtype,
            peak_bytes=tracked.peak_bytes,
            peak_phase=tracked.peak_phase,
            **tracked.peak_components,
            notes=notes,
        )
        gpu = request.gpu_bytes
        if gpu is not None:
            largest, search_notes = largest_micro_batch(step_at, tracked, request.micro_batch, gpu)
            row = row.model_copy(
                update={
                    "gpu_bytes": gpu,
                    "fits": tracked.peak_bytes <= gpu,
                    "max_micro_batch": largest,
                    "notes": row.notes + search_notes,
                }
            )
        out.append(row.model_copy(update={"seconds": round(time.perf_counter() - start, 2)}))
    return out


# --- command line -------------------------------------------------------------------------------


def print_estimates(rows: Sequence[FitEstimate], as_json: bool) -> None:
    """A table (GiB, or MiB for small models) with the notes under it, or the JSON list."""
    if as_json:
        print(json.dumps([r.model_dump(mode="json") for r in rows], indent=2))
        return
    unit, scale = ("GiB", 1024**3) if max(r.peak_bytes for r in rows) >= 1024**3 else ("MiB", 1024**2)
    header = ["method", f"peak {unit}", "phase", "weights", "trainable", "gradients", "optimizer"]
    header += ["activations", "temporary", "seconds"]
    searched = any(r.gpu_bytes is not None for r in rows)
    if searched:
        header += ["fits", "max batch"]
    print("  ".join(f"{h:>12}" for h in header))
    for r in rows:
        cells = [r.method, f"{r.peak_bytes / scale:.2f}", r.peak_phase]
        cells += [f"{v / scale:.2f}" for v in r.components().values()] + [f"{r.seconds:.1f}"]
        if searched:
            cells += ["yes" if r.fits else "no", str(r.max_micro_batch or "none")]
        print("  ".join(f"{c:>12}" for c in cells))
    for note in dict.fromkeys(n for r in rows for n in r.notes):
        print(f"note: {note}")


def run(args: argparse.Namespace) -> int:
    """The command: print the estimates; a bad input is one line on stderr and exit code 2."""
    try:
        rows = estimate(request_from_args(args), allow_local=not args.no_local)
    except (ValueError, OSError) as exc:
        print(f"velora-bench fit: error: {' '.join(str(exc).split())}", file=sys.stderr)  # one line
        return EXIT_BAD_INPUT
    except Exception as exc:  # a method the fake step cannot run: say which error, in one line
        words = " ".join(str(exc).split())[:500]
        print(f"velora-bench fit: the fake step failed: {type(exc).__name__}: {words}", file=sys.stderr)
        return EXIT_FAILED
    print_estimates(rows, args.json)
    return EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="velora-bench fit", description=__doc__.splitlines()[0])
    add_fit_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
