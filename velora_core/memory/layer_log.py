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
import itertools
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


def _aligned(runs: list[tuple[object, int, int]], log: AllocationLog) -> list[tuple[object, int, int]]:
    """``runs`` with the optimizer's runs of layers 1 and 2 cut where the other layer's are, when their
    events are the same (sign and bytes, in order) but split differently: the last parameter's
    temporary, freed when the loop ends, joins layer 2's last run but has a run of its own in layer 1
    (freed amid layer 2's)."""
    events, sizes = log.events, log.sizes

    def optimizer_runs(tag: int) -> list[tuple[object, int, int]]:
        return [r for r in runs if r[0] == tag and events[r[1]][2] == _OPTIMIZER]

    ones, twos = optimizer_runs(1), optimizer_runs(2)
    if [e - s for _, s, e in ones] == [e - s for _, s, e in twos]:
        return runs

    def signature(group: list[tuple[object, int, int]]) -> list[tuple[int, int]]:
        return [(events[i][1], sizes[events[i][0]]) for _, s, e in group for i in range(s, e)]

    if signature(ones) != signature(twos):
        return runs
    cuts: set[int] = set()
    for group in (ones, twos):
        total = 0
        for _, s, e in group:
            total += e - s
            cuts.add(total)
    pieces: dict[tuple[object, int, int], list[tuple[object, int, int]]] = {}
    for group in (ones, twos):
        total = 0
        for tag, s, e in group:
            inner = sorted(c - total for c in cuts if total < c < total + e - s)
            bounds = [s, *(s + c for c in inner), e]
            pieces[(tag, s, e)] = [(tag, a, b) for a, b in itertools.pairwise(bounds)]
            total += e - s
    return [piece for run in runs for piece in pieces.get(run, [run])]


def repeat_layers(log: AllocationLog, layers: int) -> AllocationLog | None:
    """``log`` (a 3-layer step, labelled by :func:`layer_tags`) as the step of ``layers`` identical
    layers would log it (see the module docstring); None where the layers' events do not line up."""
    if log.tags is None or layers < 3:
        return None
    tags, events = log.tags, log.events
    runs = _aligned(_runs(log), log)
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
    blocks, in_block, after_block = (
        _optimizer_blocks(runs, ones, twos, log) if not per_event else ({}, set(), set())
    )
    keys: dict[object, int] = {}
    sizes: list[int] = []
    categories: list[str] = []
    out: list[tuple[int, int, int]] = []
    live: set[int] = set()  # keys allocated and not yet freed
    entry_events = 0

    def key(alloc: int, copy: int | None) -> int:
        name = alloc if copy is None else (alloc, copy)
        if name not in keys:
            keys[name] = len(sizes)
            sizes.append(log.sizes[alloc])
            categories.append(log.categories[alloc])
        return keys[name]

    def emit(name: int, sign: int, phase: int) -> None:
        (live.add if sign > 0 else live.discard)(name)
        out.append((name, sign, phase))

    for number_of_run, (tag, start, end) in enumerate(runs):
        if number_of_run in blocks:  # the optimizer's stretch of a layer, its runs interleaved: copy by copy
            first, second = blocks[number_of_run]
            for copy in range(copies):
                for (_, s1, e1), (_, s2, _) in zip(first, second, strict=True):
                    for offset in range(e1 - s1):
                        alloc, sign, phase = events[s1 + offset]
                        if tags[alloc] == 1:
                            emit(key(alloc, copy), sign, phase)
                        elif copy == 0:  # layer 0's, freed in layer 1's stretch
                            emit(key(alloc, None), sign, phase)
                        else:  # the copy before's twin, freed at the same place of layer 2's stretch
                            emit(key(events[s2 + offset][0], copy - 1), sign, phase)
        elif number_of_run in in_block:
            pass  # emitted with its block
        elif tag != 1 or number_of_run in after_block:
            # A fixed stretch: frees of layer 1's allocations made by other layers pick a copy.
            for index in range(start, end):
                alloc, sign, phase = events[index]
                if tags[alloc] != 1:
                    emit(key(alloc, None), sign, phase)
                    continue
                if sign > 0:  # layer 1's allocation outside its stretches cannot be placed
                    return None
                chosen = {2: [copies - 1], 0: [0]}.get(tag, range(copies))  # freed by next / previous / all
                if (per_event and phase == _OPTIMIZER) or number_of_run in after_block:
                    chosen = range(copies)
                for c in chosen:  # the copies still live (others were freed in their stretches)
                    if key(alloc, c) in live:
                        emit(key(alloc, c), -1, phase)
        elif per_event and in_optimizer[(tag, start, end)]:
            for index in range(start, end):
                alloc, sign, phase = events[index]
                copies_of = range(copies) if tags[alloc] == 1 else [None]
                for c in copies_of:
                    emit(key(alloc, c), sign, phase)
        else:
            number = ones.index((tag, start, end))
            forward = twos[number][1] > start
            for copy in range(copies) if forward else range(copies - 1, -1, -1):
                for index in range(start, end):
                    alloc, sign, phase = events[index]
                    owner = tags[alloc]
                    if owner == 1:
                        emit(key(alloc, copy), sign, phase)
                    elif owner == 0 and sign < 0:  # the previous layer's: the copy before's twin
                        if copy == 0:
                            emit(key(alloc, None), -1, phase)
                        elif alloc in down:
                            emit(key(down[alloc], copy - 1), -1, phase)
                        else:
                            return None
                    elif owner == 2 and sign < 0:  # the next layer's: the copy after's twin
                        if copy == copies - 1:
                            emit(key(alloc, None), -1, phase)
                        elif alloc in up:
                            emit(key(up[alloc], copy + 1), -1, phase)
                        else:
                            return None
                    elif copy == 0:  # anything else happens once
                        emit(key(alloc, None), sign, phase)
        if end <= log.entry_events:
            entry_events = len(out)
    return AllocationLog(sizes, categories, out, entry_events)


def _optimizer_blocks(
    runs: list[tuple[object, int, int]], ones: list, twos: list, log: AllocationLog
) -> tuple[dict[int, tuple[list, list]], set[int], set[int]]:
    """The optimizer's per-layer stretches that span several runs: a loop over parameters frees one
    parameter's temporary when it makes the next one's, so layer 1's runs interleave with layer 0's
    frees (``1:A 0:C 1:B``) and then layer 2's with layer 1's (``2:A 1:C 2:B``). Such a stretch, from a
    run of layer 1 to its twin of layer 2, is repeated whole, copy by copy; where layer 2's stretch is
    the same with every tag one higher, it is returned as ``{first run: (stretch, layer 2's stretch)}``,
    with the runs inside the stretches (emitted with it) and layer 1's runs inside layer 2's stretch
    (frees of the last copy's allocations, emitted as a fixed stretch)."""
    events, tags = log.events, log.tags or []
    position = {run: index for index, run in enumerate(runs)}
    twin_of = dict(zip(ones, twos, strict=True))
    blocks: dict[int, tuple[list, list]] = {}
    in_block: set[int] = set()
    after_block: set[int] = set()
    for run in ones:
        p, q = position[run], position[twin_of[run]]
        skip = p in in_block or p in after_block
        if skip or events[run[1]][2] != _OPTIMIZER or q <= p + 1 or q + (q - p) > len(runs):
            continue
        first, second = runs[p:q], runs[q : q + (q - p)]
        if not all(_shifted(a, b, events, tags, twin_of) for a, b in zip(first, second, strict=True)):
            continue
        blocks[p] = (first, second)
        in_block.update(range(p + 1, q))
        after_block.update(q + j for j, run2 in enumerate(second) if run2[0] == 1)
    return blocks, in_block, after_block


def _shifted(
    first: tuple[object, int, int],
    second: tuple[object, int, int],
    events: list[tuple[int, int, int]],
    tags: list[object],
    twin_of: dict,
) -> bool:
    """``second`` is ``first`` one layer on: layer 1's run and its twin, or layer 0's frees and layer
    1's frees at the same places, event for event."""
    (tag1, s1, e1), (tag2, s2, e2) = first, second
    if e1 - s1 != e2 - s2 or events[s1][2] != _OPTIMIZER:
        return False
    if tag1 == 1:
        return twin_of.get(first) == second
    if (tag1, tag2) != (0, 1):
        return False
    return all(
        events[s1 + k][1] < 0
        and events[s2 + k][1] < 0
        and tags[events[s1 + k][0]] == 0
        and tags[events[s2 + k][0]] == 1
        for k in range(e1 - s1)
    )


def live_peaks(log: AllocationLog) -> dict[str, int]:
    """The largest live total of each phase when ``log`` is replayed (as the tracker counts)."""
    live, peaks = 0, {}
    for alloc, sign, phase in log.events:
        live += sign * log.sizes[alloc]
        name = PHASES[phase]
        peaks[name] = max(peaks.get(name, 0), live)
    return peaks
