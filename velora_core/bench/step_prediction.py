"""One training step's memory, predicted fast: trace a few layers, extrapolate where layers repeat.

Identical decoder layers contribute identical bytes: weights, gradients and optimizer state grow by
one layer's share per layer, and so do the activations saved for backward, so every number of a
step (each phase's peak, each component at the peak, the caching allocator's reserved bytes) is a
line in the layer count once the first layer (whose input needs no gradient) is past. A model whose
config repeats one layer ``num_hidden_layers`` times is therefore traced with 2 and 3 layers
(:data:`TRACED_LAYERS`) and each number extended along the line to the real count; a model whose
layers differ (``layer_types`` that are not all equal), a method whose settings name a layer index
(a digit in a ``target_modules`` pattern), and a model of at most 3 layers are traced whole, as is a
step whose peak moves to another phase between the two traces. The caching allocator's reserved
bytes are not a line (which cached block a request reuses depends on all before it): they come from
replaying the deep model's requests, made from the 3-layer trace's log by repeating its middle layer
(``velora_core.memory.layer_log``). tests/bench/test_step_prediction.py checks both against the
whole trace.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

from velora_core.contract.spec import RunSpec
from velora_core.memory.layer_log import live_peaks, repeat_layers
from velora_core.memory.reserved import replay_run
from velora_core.memory.tracker import AllocationLog

#: The layer counts traced when layers repeat (the line runs through them).
TRACED_LAYERS = (2, 3)


@dataclass
class StepPrediction:
    """A step's predicted memory (bytes).

    Attributes:
        peak_bytes: the step's peak allocated (live tensors), the sum of ``peak_components``.
        peak_phase: the phase it falls in.
        peak_components: bytes by category at the peak.
        phase_peaks: the peak allocated of each phase.
        reserved_bytes: the caching allocator's reserved bytes over a run of such steps.
        allocator_peak_allocated: the allocator's peak allocated, counted in whole blocks.
        traced_layers: the layer counts traced (empty: the whole model).
        notes: what was counted differently.
        first_peak_bytes: step 1's peak allocated (no optimizer state yet), a named extra.
    """

    peak_bytes: int
    peak_phase: str
    peak_components: dict[str, int]
    phase_peaks: dict[str, int]
    reserved_bytes: int
    allocator_peak_allocated: int
    traced_layers: list[int] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    first_peak_bytes: int | None = None


def config_with_layers(config: Any, layers: int) -> Any:
    """A copy of a transformers ``config`` with ``layers`` hidden layers (a per-layer list cut)."""
    data = config.to_dict()
    data["num_hidden_layers"] = layers
    if isinstance(data.get("layer_types"), list):
        data["layer_types"] = data["layer_types"][:layers]
    return type(config).from_dict(data)


def _names_a_layer(value: Any) -> bool:
    """Whether method settings pick layers by index (a ``target_modules`` pattern with a digit)."""
    if isinstance(value, Mapping):
        return any(
            (k == "target_modules" and any(any(c.isdigit() for c in str(p)) for p in v or []))
            or _names_a_layer(v)
            for k, v in value.items()
        )
    return False


def repeated_layers(spec: RunSpec, config: Any) -> int | None:
    """The layer count to extrapolate to, or None when the model must be traced whole."""
    layers = getattr(config, "num_hidden_layers", None)
    if not isinstance(layers, int) or layers <= max(TRACED_LAYERS):
        return None
    kinds = getattr(config, "layer_types", None)
    if kinds is not None and len(set(kinds)) > 1:
        return None
    return None if _names_a_layer(spec.method_config) else layers


def _traced(
    spec: RunSpec, layers: int | None, workspace_bytes: int, expandable_segments: bool
) -> tuple[StepPrediction, AllocationLog]:
    from velora_core.bench.fit_prediction import fake_steps

    steps = fake_steps(spec, timeline_points=2, layers=layers)
    step, notes = steps.steady, steps.notes
    stats = replay_run(step.log, workspace_bytes, expandable_segments)
    prediction = StepPrediction(
        peak_bytes=step.peak_bytes,
        peak_phase=step.peak_phase,
        peak_components=dict(step.peak_components),
        phase_peaks=dict(step.phase_peaks),
        reserved_bytes=stats.peak_reserved,
        allocator_peak_allocated=stats.peak_allocated,
        traced_layers=[] if layers is None else [layers],
        notes=notes,
        first_peak_bytes=None if steps.first is None else steps.first.peak_bytes,
    )
    return prediction, step.log


def extrapolate(
    low: StepPrediction, high: StepPrediction, layers: int, reserved: StepPrediction
) -> StepPrediction:
    """Each allocated number of ``low`` (traced at ``TRACED_LAYERS[0]`` layers) and ``high`` (at the
    next count) extended along their line to ``layers``; the allocator's numbers from ``reserved``
    (the replay of the deep model's log, :func:`~velora_core.memory.layer_log.repeat_layers`)."""
    (a, b) = (low.traced_layers[0], high.traced_layers[0])

    def line(x: int, y: int) -> int:
        return round(y + (layers - b) * (y - x) / (b - a))

    components = {k: line(low.peak_components[k], v) for k, v in high.peak_components.items()}
    return StepPrediction(
        peak_bytes=sum(components.values()),
        peak_phase=high.peak_phase,
        peak_components=components,
        phase_peaks={k: line(low.phase_peaks.get(k, v), v) for k, v in high.phase_peaks.items()},
        reserved_bytes=reserved.reserved_bytes,
        allocator_peak_allocated=reserved.allocator_peak_allocated,
        traced_layers=[a, b],
        first_peak_bytes=None
        if low.first_peak_bytes is None or high.first_peak_bytes is None
        else line(low.first_peak_bytes, high.first_peak_bytes),
        notes=[
            *high.notes,
            f"traced with {a} and {b} layers and extended along the line to {layers} (identical layers)",
        ],
    )


#: How far the repeated log's live peaks may sit from the line's (a stray temporary, not a layer's worth).
AGREEMENT = 0.001


def _agree(replayed: dict[str, int], line: dict[str, int]) -> bool:
    """The repeated log's peak is the line's: the same phase and the same bytes (within
    :data:`AGREEMENT`). Another phase may sit above its line: where the optimizer's stretches do not
    pair, all copies' temporaries are held at once there (an upper bound below the peak)."""
    if not replayed or replayed.keys() != line.keys():
        return False
    top = max(line, key=line.__getitem__)
    return (
        max(replayed, key=replayed.__getitem__) == top
        and abs(replayed[top] - line[top]) <= AGREEMENT * line[top]
    )


def predict_step(
    spec: RunSpec, workspace_bytes: int = 0, expandable_segments: bool = False
) -> StepPrediction:
    """Predict a step of ``spec``: from two short traces where its layers repeat, else traced whole.

    Args:
        workspace_bytes: one cuBLAS workspace, replayed per handle (``velora_core.contract.cards``).
        expandable_segments: replay through the allocator with expandable segments.
    Raises:
        ValueError: the method cannot be built for this model (from the method code).
    """
    from velora_core.bench.engine import model_source

    config = model_source(spec, torch.device("meta"), None).config
    layers = None if config is None else repeated_layers(spec, config)
    if layers is None:
        return _traced(spec, None, workspace_bytes, expandable_segments)[0]
    (low, _), (high, log) = (_traced(spec, n, workspace_bytes, expandable_segments) for n in TRACED_LAYERS)
    deep = repeat_layers(log, layers)
    line = extrapolate(low, high, layers, high)
    why = (
        f"the peak is in the {low.peak_phase} phase with {TRACED_LAYERS[0]} layers and in the "
        f"{high.peak_phase} phase with {TRACED_LAYERS[1]}"
        if low.peak_phase != high.peak_phase
        else "the layers' allocations do not line up"
        if deep is None
        else "the line and the repeated layers disagree on the live peak"
        if not _agree(live_peaks(deep), line.phase_peaks)
        else None
    )
    if why is not None:  # the line does not hold yet, or the log cannot be repeated
        whole = _traced(spec, None, workspace_bytes, expandable_segments)[0]
        whole.notes.append(f"traced whole: {why}")
        return whole
    stats = replay_run(deep, workspace_bytes, expandable_segments)
    reserved = StepPrediction(0, "", {}, {}, stats.peak_reserved, stats.peak_allocated)
    return extrapolate(low, high, layers, reserved)
