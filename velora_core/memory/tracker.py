"""A memory tracker for one training step: every allocation, attributed to what it is, on any device.

:class:`MemoryTracker` is a ``TorchDispatchMode``: it sees every ATen operator's outputs, counts each
output's storage once (``untyped_storage().nbytes()``, de-duplicated by storage identity) and takes
it off again when the storage is freed (a ``weakref`` callback on the storage object, which PyTorch
keeps alive exactly as long as the storage). It works the same on CPU, CUDA and under
``FakeTensorMode``, where no byte is allocated (docs/architecture.md, "Memory accounting").

What a storage *is* is decided by identity, as the step goes:

- ``weights`` / ``trainable``: the model's parameters (frozen / trainable), its buffers, and a
  bitsandbytes 4-bit weight's quantisation state, known when tracking starts;
- ``gradients``: a trainable parameter's ``.grad``, seen by ``register_post_accumulate_grad_hook``
  (registered on trainable parameters only: frozen ones cannot take it);
- ``optimizer``: the optimizer's state tensors (GaLore's projection matrices too), read after the
  step (and at the start);
- ``activations``: tensors autograd saves for backward (``torch.autograd.graph.saved_tensors_hooks``);
- ``autocast_copies``: a weight cast to another dtype (``aten._to_copy`` of a ``weights`` or
  ``trainable`` storage: what ``torch.autocast`` makes of each weight a lower-precision op uses),
  kept as such when backward saves it;
- ``temporary``: everything else.

Allocations and frees are logged in order with an allocation id; a storage's category is only known
later (a gradient is allocated as a temporary), so the log is replayed at the end with each
allocation's final category. That gives the exact breakdown at the peak and a timeline with the
right colours at the cost of one pass over the log.

Not :class:`torch.distributed._tools.mem_tracker.MemTracker`: it is private, and it registers a
gradient hook on every parameter, which raises on frozen ones (LoRA's base weights).
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from velora_core.contract.result import PEAK_COMPONENTS, PHASES
from velora_core.memory.tensor_bytes import optimizer_state_tensors, quant_state_tensors

WEIGHTS, TRAINABLE, GRADIENTS, OPTIMIZER, ACTIVATIONS, AUTOCAST_COPIES, TEMPORARY = PEAK_COMPONENTS
#: Categories a later classification may replace; the others are fixed once known.
_REPLACEABLE = {TEMPORARY, ACTIVATIONS}
#: The operator a dtype cast runs as (autocast's casts of the weights among them).
_TO_COPY = torch.ops.aten._to_copy.default


@dataclass
class TrackedStep:
    """What :class:`MemoryTracker` measured.

    Attributes:
        peak_bytes: the largest live total.
        peak_phase: ``forward``, ``backward`` or ``optimizer``.
        peak_components: bytes by category at the peak (they add up to ``peak_bytes``).
        timeline: bytes by category over the step, subsampled; each point also has ``phase`` and
            ``event`` (its position in the allocation log).
        phase_peaks: the largest live total in each phase that ran.
        formula_bytes: bytes counted by formula, not seen as storages (tensor subclasses whose storage
            cannot be read), by category; included in everything above.
        events: allocations plus frees logged.
        log: the allocations and frees themselves (for the caching-allocator replay,
            ``velora_core.memory.reserved``).
    """

    peak_bytes: int
    peak_phase: str
    peak_components: dict[str, int]
    timeline: list[dict[str, int | str]] = field(default_factory=list)
    phase_peaks: dict[str, int] = field(default_factory=dict)
    formula_bytes: dict[str, int] = field(default_factory=dict)
    events: int = 0
    log: AllocationLog | None = None


@dataclass(frozen=True)
class AllocationLog:
    """The tracker's log: ``events`` are ``(allocation id, +1 allocated / -1 freed, phase index)`` in
    order; the first ``entry_events`` are what existed when tracking began (weights, gradients,
    optimizer state); ``sizes`` and ``categories`` are by allocation id (categories final)."""

    sizes: list[int]
    categories: list[str]
    events: list[tuple[int, int, int]]
    entry_events: int
    tags: list[object] | None = None  # by allocation id: the layer that made it (see MemoryTracker.tag)


def storage_of(t: torch.Tensor) -> torch.UntypedStorage | None:
    """The tensor's storage, or None for tensors without one (sparse, nested, some subclasses)."""
    try:
        return t.untyped_storage()
    except (RuntimeError, NotImplementedError, TypeError):
        return None


class MemoryTracker(TorchDispatchMode):
    """Tracks live bytes over one training step, by category and phase.

    Usage::

        tracker = MemoryTracker(model, optimizer)
        with tracker:                      # forward
            loss = model(**batch).loss
            tracker.set_phase("backward")
            loss.backward()
            tracker.set_phase("optimizer")
            optimizer.step()
        step = tracker.result()

    Args:
        model: its parameters and buffers are live at the start (``weights`` / ``trainable``).
        optimizer: its state is ``optimizer`` (state that exists at the start is counted too).
        timeline_points: the timeline's length, at most (the peak and phase changes always kept).
        extra_bytes: bytes by category counted by formula (see :attr:`TrackedStep.formula_bytes`),
            live for the whole step.
        device: the device whose memory is tracked (default: the model's first parameter's); storages
            elsewhere (a copy offloaded to the host) are not counted.
    """

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer | None = None,
        timeline_points: int = 240,
        extra_bytes: dict[str, int] | None = None,
        device: torch.device | None = None,
    ):
        super().__init__()
        if device is None:
            device = next((p.device for p in model.parameters()), torch.device("cpu"))
        self.device = device
        self.model = model
        self.optimizer = optimizer
        self.timeline_points = timeline_points
        self.extra_bytes = {k: v for k, v in (extra_bytes or {}).items() if v}
        self.phase = PHASES[0]
        self._live: dict[int, int] = {}  # storage identity -> allocation id
        self._refs: dict[int, weakref.ref] = {}  # allocation id -> weakref keeping the callback alive
        self._size: list[int] = []  # allocation id -> bytes
        self._category: list[str] = []  # allocation id -> category, final after the step
        self._log: list[tuple[int, int, int]] = []  # (allocation id, +1 alloc / -1 free, phase index)
        self._hooks: list = []
        self._saved_hooks = None
        self._closed = False  # frees after the step do not matter and are not logged
        self._entry_events = 0  # log entries made by __enter__: what existed before the step
        #: A label for what runs now (a decoder layer's index), stored with each allocation; set by
        #: the caller's hooks (``velora_core.bench.fit_prediction``) for the layer extrapolation.
        self.tag: object = None
        self._tags: list[object] = []  # allocation id -> tag when allocated (or by tag_tensors)
        self._sources: list[list[int] | None] = []  # allocation id -> inputs it was made from (optimizer)
        self._inner = None  # (pack, unpack) of hooks that run through this tracker's (see saving_through)

    # --- counting storages -------------------------------------------------------------
    def _storage(self, t: torch.Tensor) -> torch.UntypedStorage | None:
        """``t``'s storage if it lives on the tracked device (the tensor's device: a fake tensor's
        storage is on ``meta``), else None."""
        return storage_of(t) if t.device == self.device else None

    def _allocation_of(self, storage: torch.UntypedStorage, category: str) -> int:
        key = storage._cdata
        alloc = self._live.get(key)
        if alloc is not None:
            return alloc
        alloc = len(self._size)
        self._size.append(int(storage.nbytes()))
        self._category.append(category)
        self._tags.append(self.tag)
        self._sources.append(None)
        self._live[key] = alloc
        self._log.append((alloc, 1, PHASES.index(self.phase)))
        self._refs[alloc] = weakref.ref(storage, lambda _ref, a=alloc, k=key: self._freed(a, k))
        return alloc

    def _freed(self, alloc: int, key: int) -> None:
        if self._live.get(key) == alloc:
            del self._live[key]
        self._refs.pop(alloc, None)
        if not self._closed:
            self._log.append((alloc, -1, PHASES.index(self.phase)))

    def classify(self, tensors: Iterable[torch.Tensor | None], category: str) -> None:
        """Count ``tensors``' storages as ``category`` (a temporary or activation becomes it; weights,
        trainable parameters, gradients and optimizer state keep what they are)."""
        for t in tensors:
            if not isinstance(t, torch.Tensor):
                continue
            storage = self._storage(t)
            if storage is None:
                continue
            alloc = self._allocation_of(storage, category)
            if self._category[alloc] in _REPLACEABLE and category != TEMPORARY:
                self._category[alloc] = category

    def tag_tensors(self, tensors: Iterable[torch.Tensor | None], tag: object) -> None:
        """Label the allocations of ``tensors`` (live ones, already counted) with ``tag``."""
        for t in tensors:
            storage = self._storage(t) if isinstance(t, torch.Tensor) else None
            alloc = None if storage is None else self._live.get(storage._cdata)
            if alloc is not None:
                self._tags[alloc] = tag

    def _resolved_tags(self) -> list[object]:
        """Each allocation's tag; an untagged one made in the optimizer phase takes the first tag among
        the tensors it was made from (see ``_link_sources``)."""
        tags = list(self._tags)
        for alloc, sources in enumerate(self._sources):
            if tags[alloc] is None and sources:
                tags[alloc] = next((tags[s] for s in sources if tags[s] is not None), None)
        return tags

    def set_phase(self, phase: str) -> None:
        """Enter ``phase`` (one of :data:`~velora_core.contract.result.PHASES`)."""
        if phase not in PHASES:
            raise ValueError(f"unknown phase {phase!r}; one of {PHASES}")
        if phase == PHASES[2]:  # the gradients are all there: count any a hook did not see
            self.classify((p.grad for p in self.model.parameters()), GRADIENTS)
            self.tag = None  # the optimizer's allocations take their inputs' tags (_link_sources)
        self.phase = phase

    def _optimizer_tensors(self) -> Iterator[torch.Tensor]:

        if self.optimizer is None:
            return
        for state in self.optimizer.state.values():
            for value in state.values():
                yield from optimizer_state_tensors(value)

    def _is_weight(self, t: Any) -> bool:
        storage = self._storage(t) if isinstance(t, torch.Tensor) else None
        alloc = None if storage is None else self._live.get(storage._cdata)
        return alloc is not None and self._category[alloc] in (WEIGHTS, TRAINABLE)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        category = AUTOCAST_COPIES if func is _TO_COPY and args and self._is_weight(args[0]) else TEMPORARY
        before = len(self._size)
        made = [
            (index, self._allocation_of(storage, category))
            for index, t in enumerate(tree_leaves(out))
            if isinstance(t, torch.Tensor) and (storage := self._storage(t)) is not None
        ]
        made = [(index, alloc) for index, alloc in made if alloc >= before]  # new ones only
        if self.phase == PHASES[2] and self.tag is None and made:
            self._link_sources(args, made)
        return out

    def _link_sources(self, args: tuple, made: list[tuple[int, int]]) -> None:
        """Remember what each new allocation of an optimizer op was made from (its tag follows): a
        foreach op's i-th output, its list arguments' i-th tensors; any other, its tensor inputs."""
        lists = [a for a in args if isinstance(a, (list, tuple))]
        flat = [t for t in tree_leaves(args) if isinstance(t, torch.Tensor)]
        for index, alloc in made:
            inputs = [a[index] for a in lists if index < len(a)] if lists else flat
            parents = []
            for t in inputs:
                storage = self._storage(t) if isinstance(t, torch.Tensor) else None
                parent = None if storage is None else self._live.get(storage._cdata)
                if parent is not None and parent != alloc:
                    parents.append(parent)
            self._sources[alloc] = parents or None

    # --- the step's boundaries ---------------------------------------------------------
    def __enter__(self):

        for param in self.model.parameters():
            self.classify([param], TRAINABLE if param.requires_grad else WEIGHTS)
            self.classify(quant_state_tensors(param), WEIGHTS)
            if param.requires_grad and param.is_leaf:
                self._hooks.append(
                    param.register_post_accumulate_grad_hook(lambda p: self.classify([p.grad], GRADIENTS))
                )
        self.classify(self.model.buffers(), WEIGHTS)
        self.classify((p.grad for p in self.model.parameters()), GRADIENTS)
        self.classify(self._optimizer_tensors(), OPTIMIZER)
        self._entry_events = len(self._log)
        self._saved_hooks = torch.autograd.graph.saved_tensors_hooks(self._pack, self._unpack)
        self._saved_hooks.__enter__()
        return super().__enter__()

    def _pack(self, t: torch.Tensor):
        self.classify([t], ACTIVATIONS)
        if self._inner is None:
            return t
        pack, unpack = self._inner
        return _Packed(pack(t), unpack)

    @staticmethod
    def _unpack(packed):
        return packed.unpack(packed.value) if isinstance(packed, _Packed) else packed

    @contextmanager
    def saving_through(self, pack, unpack) -> Iterator[None]:
        """Pass every tensor saved for backward on to ``pack`` (and back through ``unpack``) while
        inside: only the innermost saved-tensor hooks run, so other hooks (a meter, offloading to the
        host) must run through the tracker's rather than hide them.

        Args:
            pack, unpack: a ``saved_tensors_hooks`` pair (``hooks.pack_hook, hooks.unpack_hook``).
        """
        outer, self._inner = self._inner, (pack, unpack)
        try:
            yield
        finally:
            self._inner = outer

    def __exit__(self, *exc):
        result = super().__exit__(*exc)
        self._saved_hooks.__exit__(*exc)
        for hook in self._hooks:
            hook.remove()
        self._hooks.clear()
        self.classify(self._optimizer_tensors(), OPTIMIZER)
        self.classify((p.grad for p in self.model.parameters()), GRADIENTS)
        self._closed = True
        self._refs.clear()
        return result

    # --- the replay ----------------------------------------------------------------------
    def result(self) -> TrackedStep:
        """Replay the log with each allocation's final category: the peak, its phase and breakdown,
        and the subsampled timeline. Call after the ``with`` block."""
        live = {c: 0 for c in PEAK_COMPONENTS}
        for category, size in self.extra_bytes.items():
            live[category] += size
        total = sum(live.values())
        peak, peak_at, peak_phase, peak_live = total, 0, PHASES[0], dict(live)
        stride = max(1, len(self._log) // max(1, self.timeline_points - 2))
        timeline: list[dict[str, int | str]] = []
        phase_peaks: dict[str, int] = {}
        last_phase = -1

        def point(event: int, phase: int) -> dict[str, int | str]:
            return {"event": event, "phase": PHASES[phase], **live}

        for event, (alloc, sign, phase) in enumerate(self._log):
            if phase != last_phase and timeline:
                timeline.append(point(event, phase))  # a phase change is always on the timeline
            last_phase = phase
            size = sign * self._size[alloc]
            live[self._category[alloc]] += size
            total += size
            phase_peaks[PHASES[phase]] = max(phase_peaks.get(PHASES[phase], 0), total)
            if total > peak:
                peak, peak_at, peak_phase, peak_live = total, event, PHASES[phase], dict(live)
            if event % stride == 0:
                timeline.append(point(event, phase))
        if self._log:
            timeline.append(point(len(self._log), self._log[-1][2]))
        peak_point = {"event": peak_at, "phase": peak_phase, **peak_live}
        timeline = sorted([p for p in timeline if p["event"] != peak_at] + [peak_point], key=_event)
        return TrackedStep(
            peak_bytes=peak,
            peak_phase=peak_phase,
            peak_components=peak_live,
            timeline=timeline,
            phase_peaks=phase_peaks,
            formula_bytes=dict(self.extra_bytes),
            events=len(self._log),
            log=AllocationLog(
                list(self._size),
                list(self._category),
                list(self._log),
                self._entry_events,
                self._resolved_tags(),
            ),
        )


@dataclass(frozen=True)
class _Packed:
    """What another pack hook made of a saved tensor, with the unpack hook that reads it back."""

    value: Any
    unpack: Callable[[Any], torch.Tensor]


def _event(point: dict) -> int:
    return int(point["event"])


@contextmanager
def tracking(
    model: nn.Module, optimizer: torch.optim.Optimizer | None = None, **kwargs
) -> Iterator[MemoryTracker]:
    """``with tracking(model, optimizer) as tracker:`` — :class:`MemoryTracker` as a context."""
    tracker = MemoryTracker(model, optimizer, **kwargs)
    with tracker:
        yield tracker
