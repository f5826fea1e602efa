"""A deep model's allocation log made from a shallow one's: the repeated decoder layer's events, repeated.

The caching allocator's reserved bytes are not a line in the layer count (which freed block a
request reuses depends on everything cached before it), so the layer extrapolation
(``velora_core.bench.step_prediction``) replays the whole model's requests instead, built from a
3-layer trace whose allocations are labelled by the layer that made them (:func:`layer_tags`):
layer 0 (its input needs no gradient), layer 1 (the template) and layer 2 (the last). Every run of
consecutive events of layer 1 is repeated ``layers - 2`` times, forwards in the forward pass and the
optimizer, backwards in backward. A layer's allocation freed by the next layer (its output, saved by
the next layer for backward) is freed by the next copy, at the place where the template frees layer 0's
counterpart; one freed by the previous layer (a gradient passed down in backward) likewise. The
counterparts are found by position: layer 1's and layer 2's runs must have the same events in the
same order, else :func:`repeat_layers` returns None and the model is traced whole. In the optimizer,
whose ops run over all layers' tensors, a free carries its own layer; where its runs do not pair (a
loop over parameters frees one layer's temporaries amid the next one's), each of layer 1's events is
repeated for every copy where it happens: the live bytes stay exact at the step's peak (checked by
``velora_core.bench.step_prediction``), the placement of the optimizer's blocks is approximate.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

from velora_core.contract.result import PHASES
from velora_core.memory.tensor_bytes import optimizer_state_tensors, quant_state_tensors
from velora_core.memory.tracker import AllocationLog, MemoryTracker

_OPTIMIZER = PHASES.index("optimizer")
_LAYER_INDEX = re.compile(r"\.(?:layers|layer|h|blocks)\.(\d+)\.")


def decoder_layers(model: nn.Module, count: int) -> nn.ModuleList | None:
    """The model's list of ``count`` repeated layers (the first ModuleList of that length)."""
    return next((m for m in model.modules() if isinstance(m, nn.ModuleList) and len(m) == count), None)


@contextlib.contextmanager
def layer_tags(
    model: nn.Module, tracker: MemoryTracker, optimizer: torch.optim.Optimizer | None, count: int
) -> Iterator[None]:
    """Label each allocation of the step with the index of the layer that made it (``tracker.tag``):
    forward through module hooks, backward through a hook on each layer's output (its gradient
    arrives when that layer's backward begins), parameters, gradients and optimizer state by the
    parameter's name; none of the hooks allocates."""
    layers = decoder_layers(model, count)
    if layers is None:
        yield
        return
    handles = []

    def enter(index: int):
        def hook(_module: nn.Module, _args: Any) -> None:
            tracker.tag = index

        return hook

    def leave(index: int):
        def hook(_module: nn.Module, _args: Any, output: Any) -> None:
            if tracker.phase != PHASES[0]:  # recomputed in backward (checkpointing): still this layer
                return
            tracker.tag = None
            hidden = output[0] if isinstance(output, (tuple, list)) else output
            if isinstance(hidden, torch.Tensor) and hidden.requires_grad:
                hidden.register_hook(lambda _grad: setattr(tracker, "tag", index))

        return hook

    def first_input(_module: nn.Module, args: Any) -> None:
        hidden = args[0] if args else None
        if tracker.phase == PHASES[0] and isinstance(hidden, torch.Tensor) and hidden.requires_grad:
            hidden.register_hook(lambda _grad: setattr(tracker, "tag", None))

    for index, layer in enumerate(layers):
        handles.append(layer.register_forward_pre_hook(enter(index)))
        handles.append(layer.register_forward_hook(leave(index)))
    handles.append(layers[0].register_forward_pre_hook(first_input, prepend=True))
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()
        tracker.tag = None
        for name, param in model.named_parameters():
            found = _LAYER_INDEX.search(f".{name}")
            if found is None:
                continue
            state = optimizer.state.get(param, {}) if optimizer is not None else {}
            tensors = [param, param.grad, *quant_state_tensors(param)]
            tensors += [t for v in state.values() for t in optimizer_state_tensors(v)]
            tracker.tag_tensors(tensors, int(found.group(1)))
        for name, buffer in model.named_buffers():
            found = _LAYER_INDEX.search(f".{name}")
            if found is not None:
                tracker.tag_tensors([buffer], int(found.group(1)))


def _runs(log: AllocationLog) -> list[tuple[object, int, int]]:
    """Maximal stretches of events made under one tag, (tag, first event, end), split where the step
    begins (what existed before it is one part, the step another)."""
    out: list[tuple[object, int, int]] = []
    tags = log.tags or []
    for index, (alloc, sign, phase) in enumerate(log.events):
        # An allocation carries its own tag. In forward and backward a free belongs to the layer
        # running when it happens (it joins the stretch around it: a layer frees what the one before
        # made); in the optimizer, whose ops run over every layer's tensors at once, its allocation's.
        joins = sign < 0 and phase != _OPTIMIZER and out
        tag = out[-1][0] if joins else tags[alloc]
        same_part = index != log.entry_events and phase == log.events[index - 1][2]
        if out and out[-1][0] == tag and same_part:
            out[-1] = (tag, out[-1][1], index + 1)
        else:
            out.append((tag, index, index + 1))
    return out


def repeat_layers(log: AllocationLog, layers: int) -> AllocationLog | None:
    """``log`` (a 3-layer step, labelled by :func:`layer_tags`) as the step of ``layers`` identical
    layers would log it (see the module docstring); None where the layers' events do not line up."""
    if log.tags is None or layers < 3:
        return None
    tags, events = log.tags, log.events
    runs = _runs(log)
    in_optimizer = {r: events[r[1]][2] == _OPTIMIZER for r in runs}

    def paired(optimizer: bool) -> tuple[list, list] | None:
        ones = [r for r in runs if r[0] == 1 and in_optimizer[r] == optimizer]
        twos = [r for r in runs if r[0] == 2 and in_optimizer[r] == optimizer]
        if len(ones) != len(twos) or any(a[2] - a[1] != b[2] - b[1] for a, b in zip(ones, twos, strict=True)):
            return None
        return ones, twos

    layer_runs, optimizer_runs = paired(False), paired(True)
    if layer_runs is None:
        return None
    # The optimizer's ops run over every layer's tensors: where its stretches do not pair (a loop over
    # parameters frees one layer's temporaries amid the next one's), each event of layer 1 is repeated
    # for every copy where it happens (all copies' temporaries at once: an upper bound).
    per_event = optimizer_runs is None
    ones, twos = (
        layer_runs[0] + (optimizer_runs or ([], []))[0],
        layer_runs[1] + (optimizer_runs or ([], []))[1],
    )
    position = {}  # event index -> (run number among its tag's runs, offset)
    for group in (ones, twos):
        for number, (_, start, end) in enumerate(group):
            for offset in range(end - start):
                position[start + offset] = (number, offset)
    made_at, freed_at = {}, {}
    for index, (alloc, sign, _) in enumerate(events):
        (made_at if sign > 0 else freed_at)[alloc] = index
    # Counterparts in layer 1 of layer 2's allocations (made at the same place of the matching run)
    # and of layer 0's allocations that layer 1 frees (layer 1's own, freed at that place by layer 2).
    up = {}
    for alloc, index in made_at.items():
        if tags[alloc] == 2 and index in position:
            number, offset = position[index]
            twin = events[ones[number][1] + offset][0]
            if tags[twin] == 1:
                up[alloc] = twin
    down = {}
    for alloc, index in freed_at.items():
        if tags[alloc] == 0 and index in position and tags[events[index][0]] == 0:
            number, offset = position[index]
            if index >= ones[number][1] and index < ones[number][2]:
                twin = events[twos[number][1] + offset][0]
                if tags[twin] == 1 and events[twos[number][1] + offset][1] < 0:
                    down[alloc] = twin
    copies = layers - 2
    keys: dict[object, int] = {}
    sizes: list[int] = []
    categories: list[str] = []
    out: list[tuple[int, int, int]] = []
    entry_events = 0

    def key(alloc: int, copy: int | None) -> int:
        name = alloc if copy is None else (alloc, copy)
        if name not in keys:
            keys[name] = len(sizes)
            sizes.append(log.sizes[alloc])
            categories.append(log.categories[alloc])
        return keys[name]

    for tag, start, end in runs:
        if tag != 1:  # a fixed stretch: frees of layer 1's allocations made by other layers pick a copy
            for index in range(start, end):
                alloc, sign, phase = events[index]
                if tags[alloc] != 1:
                    out.append((key(alloc, None), sign, phase))
                    continue
                if sign > 0:  # layer 1's allocation outside its stretches cannot be placed
                    return None
                chosen = {2: [copies - 1], 0: [0]}.get(tag, range(copies))  # freed by next / previous / all
                if per_event and phase == _OPTIMIZER:
                    chosen = range(copies)
                out.extend((key(alloc, c), -1, phase) for c in chosen)
        elif per_event and in_optimizer[(tag, start, end)]:
            for index in range(start, end):
                alloc, sign, phase = events[index]
                copies_of = range(copies) if tags[alloc] == 1 else [None]
                out.extend((key(alloc, c), sign, phase) for c in copies_of)
        else:
            number = ones.index((tag, start, end))
            forward = twos[number][1] > start
            for copy in range(copies) if forward else range(copies - 1, -1, -1):
                for index in range(start, end):
                    alloc, sign, phase = events[index]
                    owner = tags[alloc]
                    if owner == 1:
                        out.append((key(alloc, copy), sign, phase))
                    elif owner == 0 and sign < 0:  # the previous layer's: the copy before's twin
                        if copy == 0:
                            out.append((key(alloc, None), -1, phase))
                        elif alloc in down:
                            out.append((key(down[alloc], copy - 1), -1, phase))
                        else:
                            return None
                    elif owner == 2 and sign < 0:  # the next layer's: the copy after's twin
                        if copy == copies - 1:
                            out.append((key(alloc, None), -1, phase))
                        elif alloc in up:
                            out.append((key(up[alloc], copy + 1), -1, phase))
                        else:
                            return None
                    elif copy == 0:  # anything else happens once
                        out.append((key(alloc, None), sign, phase))
        if end <= log.entry_events:
            entry_events = len(out)
    return AllocationLog(sizes, categories, out, entry_events)


def live_peaks(log: AllocationLog) -> dict[str, int]:
    """The largest live total of each phase when ``log`` is replayed (as the tracker counts)."""
    live, peaks = 0, {}
    for alloc, sign, phase in log.events:
        live += sign * log.sizes[alloc]
        name = PHASES[phase]
        peaks[name] = max(peaks.get(name, 0), live)
    return peaks
