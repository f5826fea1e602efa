""" "Will it fit?": a steady training step of each method under ``FakeTensorMode``, with no weights allocated.

The model is built by the same method code as a real run (``velora_core.methods.registry.prepare_model``) on
the ``meta`` device; each parameter and buffer is then given a fake tensor of its shape and dtype,
the optimizer and the step come from the trainer's own step code (``velora_core.bench.step.TrainingStep``),
and two steps (forward under the run's autocast, backward, gradient clipping, optimizer step) run, the
second under :class:`~velora_core.memory.tracker.MemoryTracker`, as every real run tracks its steady
step: its forward and backward hold the optimizer state the first step created. Nothing is computed and no byte is allocated,
so a LLaMA-7B step is predicted on a laptop CPU (docs/architecture.md, "Memory accounting").

4-bit weights: bitsandbytes' ``Params4bit`` cannot wrap a fake tensor, so each 4-bit weight becomes
a plain fake ``uint8`` tensor of the packed shape bitsandbytes' own ``quantize_4bit`` gives (its
fake kernel), carrying the quantisation state that call returns; the bytes are bitsandbytes', and the
forward is still bitsandbytes' ``Linear4bit`` and peft's LoRA layer on it.

``velora_core.bench.step_prediction`` runs these steps on a few layers and extrapolates;
``velora_core.bench.fit_estimate`` answers a request with it (``velora-bench fit``).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, fields, replace
from typing import Any

import torch
from torch import nn
from torch._subclasses.fake_tensor import FakeTensorMode

from velora_core.bench.step import TrainingStep
from velora_core.contract.spec import RunSpec
from velora_core.memory.layer_log import layer_tags
from velora_core.memory.tracker import MemoryTracker, TrackedStep
from velora_core.models.preset_configs import config_with_layers

FOUR_BIT_NOTE = (
    "4-bit weights: bitsandbytes' Params4bit cannot hold a fake tensor, so each is a plain fake uint8 "
    "tensor of the packed shape bitsandbytes' quantize_4bit returns, with its quantisation state "
    "(bytes as bitsandbytes stores them; the forward is still bitsandbytes' Linear4bit)"
)
DEVICE_NOTE = "predicted with the CPU's kernels; a GPU's attention kernels may save less for backward"
SCALER_NOTE = (
    "fp16 autocast: the GradScaler is not run on fake tensors (it reads its inf check back); its "
    "scale and inf flags are a few bytes"
)


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


@functools.cache
def _warm_bitsandbytes() -> None:
    """bitsandbytes builds its quantisation code table from Python numbers on first use (a
    data-dependent read that fake tensors refuse), so build it once for real (once per process, and
    inherited by the processes forked from it)."""
    import bitsandbytes as bnb

    bnb.functional.quantize_4bit(torch.zeros(64, 64), compress_statistics=True, quant_type="nf4")


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


# --- the fake steps -------------------------------------------------------------------------------


@dataclass
class PredictedSteps:
    """What :class:`MemoryTracker` saw of the fake steps: the steady step (step 2, the prediction),
    step 1 when it was tracked too (None otherwise), and notes on anything counted differently."""

    steady: TrackedStep
    first: TrackedStep | None
    notes: list[str]


class StepTracer:
    """A spec's model built once (on fake weights, at ``layers`` hidden layers or its own count) with its
    optimizer, and its training steps, each under :class:`MemoryTracker`.

    The first call runs the first step (no optimizer state yet, tracked); every call then runs a steady
    step at the micro-batch asked for. The model, its optimizer state and the fake-tensor cache are kept
    between calls: a step at one micro-batch leaves the state exactly as a step at another would (its
    shapes do not depend on the micro-batch; gradients are cleared after each step), so a steady step
    at ``m`` here logs what a fresh model's second step at ``m`` logs (tests/bench/test_step_prediction.py
    checks it for every method), for the cost of one step instead of a build and two.

    Raises:
        ValueError: the method cannot be built for this model (from the method code).
    """

    def __init__(self, spec: RunSpec, layers: int | None = None, timeline_points: int = 240):
        from velora_core.bench.engine import model_source
        from velora_core.methods.registry import prepare_model

        source = model_source(spec, torch.device("meta"), None)  # a preset, a hub config or a local folder
        if layers is not None:
            source = replace(source, config=config_with_layers(source.config, layers))
        prepared = prepare_model(spec.method, source, spec.method_config)
        self.mode = FakeTensorMode(allow_non_fake_inputs=True)  # constants bitsandbytes keeps on the host
        new, notes = materialise(prepared.model, self.mode, source.dtype)
        # Every parameter list the prepared model names (the trainable ones, GaLore's projected ones):
        # the optimizer is built from them, so a stale meta parameter would change what it does.
        prepared = replace(
            prepared, **{f.name: _remap(getattr(prepared, f.name), new) for f in fields(prepared)}
        )
        self.model = prepared.model
        self.model.train()
        self.vocab = self.model.get_input_embeddings().num_embeddings
        self.layers = getattr(source.config, "num_hidden_layers", 0)
        self.spec, self.timeline_points = spec, timeline_points
        if spec.autocast == "fp16":
            notes.append(SCALER_NOTE)
        self.notes = [*notes, DEVICE_NOTE]
        # Built outside the fake mode: bitsandbytes' 8-bit optimizers build their quantisation maps from
        # Python numbers (real tensors, as on a real run, and counted the same).
        self.step = TrainingStep(spec, prepared, torch.device("cpu"), scale_loss=False)
        self.first: TrackedStep | None = None  # the first step, once run

    def _batches(self, micro_batch: int):
        shape = (micro_batch, self.spec.seq_len)
        while True:
            ids = torch.randint(3, self.vocab, shape)
            yield {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids.clone()}

    def steady(self, micro_batch: int, track_first: bool = True) -> TrackedStep:
        """A steady step at ``micro_batch`` (after the first step, run here at that size on the first
        call, tracked when ``track_first``), its allocations labelled by the layer that makes them."""
        with self.mode:
            batches = self._batches(micro_batch)
            if self.first is None:
                tracker = (
                    MemoryTracker(self.model, self.step.optimizer, self.timeline_points)
                    if track_first
                    else None
                )
                self.step.run(batches, tracker)
                self.first = tracker.result() if tracker is not None else TrackedStep(0, "", {})
            steady = MemoryTracker(self.model, self.step.optimizer, self.timeline_points)
            with layer_tags(self.model, steady, self.step.optimizer, self.layers):
                self.step.run(batches, steady)
        return steady.result()


def fake_steps(
    spec: RunSpec, timeline_points: int = 240, track_first: bool = True, layers: int | None = None
) -> PredictedSteps:
    """Predict a steady training step of ``spec`` (its method, model, shape, dtype, autocast and
    ``grad_accum``) with no weights: two fake steps through the trainer's own step code
    (:class:`~velora_core.bench.step.TrainingStep`), the second tracked, so that the optimizer state the
    first step creates is held through its forward and backward, as in every step of a long run
    (docs/architecture.md, "The steady step"). ``layers``: the model's config with that many hidden
    layers (``velora_core.bench.step_prediction``); the steady step's allocations are labelled by the
    layer that makes them (``velora_core.memory.layer_log``).

    Raises:
        ValueError: the method cannot be built for this model (from the method code).
    """
    tracer = StepTracer(spec, layers, timeline_points)
    steady = tracer.steady(spec.micro_batch, track_first)
    return PredictedSteps(steady, tracer.first if track_first else None, tracer.notes)
