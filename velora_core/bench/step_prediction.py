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

:class:`StepPredictor` keeps each traced model between micro-batches (``fit_prediction.StepTracer``):
the largest-micro-batch search asks for many sizes of one spec, and each costs one more tracked step,
or none where the allocation log is a line in the micro-batch (``velora_core.memory.batch_line``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

from velora_core.bench.fit_prediction import StepTracer
from velora_core.contract.spec import RunSpec
from velora_core.memory.allocator import AllocatorStats
from velora_core.memory.batch_line import MIN_MICRO_BATCH, BatchLine
from velora_core.memory.layer_log import live_peaks, repeat_layers
from velora_core.memory.reserved import replay_run
from velora_core.memory.tracker import AllocationLog, TrackedStep

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


def _prediction(
    step: TrackedStep, stats: AllocatorStats, layers: list[int], notes: list[str]
) -> StepPrediction:
    return StepPrediction(
        peak_bytes=step.peak_bytes,
        peak_phase=step.peak_phase,
        peak_components=dict(step.peak_components),
        phase_peaks=dict(step.phase_peaks),
        reserved_bytes=stats.peak_reserved,
        allocator_peak_allocated=stats.peak_allocated,
        traced_layers=layers,
        notes=list(notes),
    )


class StepPredictor:
    """Steps of one spec at any micro-batch: :meth:`at` predicts one exactly (two short traces and
    the line, or the whole model); :meth:`reserved_at` gives the caching allocator's reserved bytes for
    the largest-micro-batch search, from the deep model's log (the 3-layer log repeated, or the whole
    model's), read off the micro-batch line where the logs of two sizes give one
    (:class:`~velora_core.memory.batch_line.BatchLine`), traced otherwise. Traced models are built once
    and kept (:class:`~velora_core.bench.fit_prediction.StepTracer`).

    Raises:
        ValueError: the method cannot be built for this model (from the method code).
    """

    def __init__(
        self, spec: RunSpec, workspace_bytes: int = 0, expandable_segments: bool = False, whole: bool = False
    ):
        from velora_core.bench.engine import model_source

        self.spec, self.workspace_bytes, self.expandable_segments = spec, workspace_bytes, expandable_segments
        config = model_source(spec, torch.device("meta"), None).config
        #: The layer count to extrapolate to (None: the model is traced whole, or ``whole`` asks it).
        self.layers = None if config is None or whole else repeated_layers(spec, config)
        self.whole_because: str | None = None  # why a repeating model is traced whole after all
        self._tracers: dict[int | None, StepTracer] = {}
        self._steps: dict[tuple[int | None, int], TrackedStep] = {}  # (layers, micro-batch) -> traced
        self._reserved: dict[int, StepPrediction] = {}  # micro-batch -> the search's step
        self._line: BatchLine | None = None
        #: Micro-batches whose reserved bytes came off the line (not traced), and the logs read off it.
        self.from_line: set[int] = set()
        self._line_logs: dict[int, AllocationLog] = {}
        #: A size traced after the line was drawn logged exactly what the line gave.
        self.line_confirmed = False

    def _traced(self, layers: int | None, micro_batch: int) -> TrackedStep:
        if layers not in self._tracers:
            self._tracers[layers] = StepTracer(self.spec, layers, timeline_points=2)
        key = (layers, micro_batch)
        if key not in self._steps:
            self._steps[key] = self._tracers[layers].steady(micro_batch)
        return self._steps[key]

    def _replay(self, log: AllocationLog) -> AllocatorStats:
        return replay_run(log, self.workspace_bytes, self.expandable_segments)

    def _first_peak(self, layers: int | None) -> int | None:
        first = self._tracers[layers].first
        return None if first is None or not first.peak_phase else first.peak_bytes

    def _whole(self, micro_batch: int) -> StepPrediction:
        step = self._traced(None, micro_batch)
        stats = self._replay(step.log)
        prediction = _prediction(step, stats, [], self._tracers[None].notes)
        prediction.first_peak_bytes = self._first_peak(None)
        # The search's step at this size is this replay's (no second replay of the same log).
        self._reserved[micro_batch] = StepPrediction(
            step.peak_bytes,
            step.peak_phase,
            {},
            dict(step.phase_peaks),
            stats.peak_reserved,
            stats.peak_allocated,
        )
        self.from_line.discard(micro_batch)
        if self.whole_because is not None:
            prediction.notes.append(f"traced whole: {self.whole_because}")
        return prediction

    def at(self, micro_batch: int) -> StepPrediction:
        """The step at ``micro_batch``, predicted exactly as :func:`predict_step` does."""
        if self.layers is None or self.whole_because is not None:
            return self._whole(micro_batch)
        (a, b), layers = TRACED_LAYERS, self.layers
        steps = [self._traced(n, micro_batch) for n in TRACED_LAYERS]
        low, high = (
            _prediction(step, AllocatorStats(), [n], self._tracers[n].notes)
            for step, n in zip(steps, TRACED_LAYERS, strict=True)
        )
        low.first_peak_bytes, high.first_peak_bytes = self._first_peak(a), self._first_peak(b)
        deep = repeat_layers(steps[1].log, layers)
        line = extrapolate(low, high, layers, high)
        why = (
            f"the peak is in the {low.peak_phase} phase with {a} layers and in the "
            f"{high.peak_phase} phase with {b}"
            if low.peak_phase != high.peak_phase
            else "the layers' allocations do not line up"
            if deep is None
            else "the line and the repeated layers disagree on the live peak"
            if not _agree(live_peaks(deep), line.phase_peaks)
            else None
        )
        if why is not None:  # the line does not hold yet, or the log cannot be repeated: whole, from now on
            self.whole_because = why
            self._reserved.clear()
            self.from_line.clear()
            self._line_logs.clear()
            self._line = None
            return self._whole(micro_batch)
        reserved = self._search_step(steps[1].log, deep)
        assert reserved is not None  # deep is a log
        self._reserved[micro_batch] = reserved
        self.from_line.discard(micro_batch)
        return extrapolate(low, high, layers, reserved)

    def reserved_at(self, micro_batch: int, traced: bool = False) -> StepPrediction:
        """The search's step at ``micro_batch``: the deep model's reserved bytes and live phase peaks
        (``peak_bytes``: the live peak), from the micro-batch line where it holds, unless ``traced``.
        A traced size whose log is the line's, byte for byte, confirms the line
        (:attr:`line_confirmed`)."""
        cached = self._reserved.get(micro_batch)
        if cached is not None and not (traced and micro_batch in self.from_line):
            return cached
        layers = self._search_layers()
        if traced or (log := self._line_log(layers, micro_batch)) is None:
            log = self._traced(layers, micro_batch).log
            if cached is not None and log == self._line_logs.get(micro_batch):
                self.line_confirmed = True
                self.from_line.discard(micro_batch)
                return cached
            self.from_line.discard(micro_batch)
        else:
            self._line_logs[micro_batch] = log
            self.from_line.add(micro_batch)
        step = self._search_step(log)
        if step is None:  # cannot be repeated at this size: the exact prediction decides
            self.from_line.discard(micro_batch)
            step = self.at(micro_batch)
        self._reserved[micro_batch] = step
        return step

    def _search_layers(self) -> int | None:
        """The layer count the search traces (None: the whole model)."""
        return None if self.layers is None or self.whole_because is not None else TRACED_LAYERS[1]

    def _search_step(self, log: AllocationLog, deep: AllocationLog | None = None) -> StepPrediction | None:
        """The deep model's reserved bytes and live peaks from the searched model's ``log`` (repeated
        to the real depth unless ``deep`` is given or the model is traced whole)."""
        if deep is None:
            deep = log if self._search_layers() is None else repeat_layers(log, self.layers or 0)
        if deep is None:
            return None
        stats = self._replay(deep)
        peaks = live_peaks(deep)
        phase = max(peaks, key=peaks.__getitem__)
        return StepPrediction(peaks[phase], phase, {}, peaks, stats.peak_reserved, stats.peak_allocated)

    def _line_log(self, layers: int | None, micro_batch: int) -> AllocationLog | None:
        """The log at ``micro_batch``: traced at ``layers``, or read off the line through the first two
        sizes traced there (None where there is no line yet or it does not hold)."""
        if (layers, micro_batch) in self._steps:
            return self._steps[(layers, micro_batch)].log
        if self._line is None:
            sizes = sorted(m for (n, m) in self._steps if n == layers and m >= MIN_MICRO_BATCH)
            if len(sizes) < 2:
                return None
            m1, m2 = sizes[0], sizes[1]
            self._line = BatchLine(m1, self._steps[(layers, m1)].log, m2, self._steps[(layers, m2)].log)
        return self._line.log_at(micro_batch)


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
    return StepPredictor(spec, workspace_bytes, expandable_segments).at(spec.micro_batch)
