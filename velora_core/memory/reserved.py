"""The caching allocator's reserved bytes over a training run, from one tracked step's allocation log.

The tracked step's log (:class:`~velora_core.memory.tracker.AllocationLog`) is replayed through
:class:`~velora_core.memory.allocator.CachingAllocator` as a run would make the requests:

1. what existed when tracking began, in the tracker's order: weights and trainable parameters first
   (loading the model); gradients that existed are made at the start of the first backward, optimizer
   state at the start of the first optimizer phase (torch's optimizers build their state lazily, in
   the first ``step()``, after the first backward has filled the cache);
2. step 1: the step's own allocations and frees in order, with the cuBLAS workspaces (one per handle:
   the forward's thread at the start, autograd's thread at the start of backward, kept for the run);
3. between steps everything the step made is freed (``zero_grad(set_to_none=True)``, the loss, any
   leftover) except optimizer state;
4. step 2: the step's allocations and frees again, without the optimizer state (it exists).

The cache is never emptied, so the reserved bytes at the end are the run's peak
(``max_memory_reserved``). Later steps repeat step 2's requests on the same cache.
"""

from __future__ import annotations

from collections.abc import Iterator

from velora_core.contract.result import PEAK_COMPONENTS, PHASES
from velora_core.memory.allocator import AllocatorStats, replay
from velora_core.memory.tracker import AllocationLog

_GRADIENTS, _OPTIMIZER = PEAK_COMPONENTS[2], PEAK_COMPONENTS[3]
_BACKWARD, _OPTIMIZER_PHASE = PHASES.index("backward"), PHASES.index("optimizer")


def run_requests(
    log: AllocationLog, workspace_bytes: int = 0, workspaces: int = 2
) -> Iterator[tuple[object, int]]:
    """The ``(key, +bytes)`` / ``(key, -bytes)`` requests of the run the step's ``log`` repeats
    (two steps; see the module docstring).

    Args:
        workspace_bytes: one cuBLAS workspace (0: none).
        workspaces: how many (the first at the start of the forward, the others at backward's).
    """
    size, category = log.sizes, log.categories
    entry = [alloc for alloc, sign, _ in log.events[: log.entry_events] if sign > 0]
    deferred = {
        _BACKWARD: [a for a in entry if category[a] == _GRADIENTS],
        _OPTIMIZER_PHASE: [a for a in entry if category[a] == _OPTIMIZER],
    }
    for alloc in entry:
        if category[alloc] not in (_GRADIENTS, _OPTIMIZER):
            yield alloc, size[alloc]
    step = log.events[log.entry_events :]
    live: set[object] = set()
    # Step 1.
    if workspace_bytes:
        yield ("workspace", 0), workspace_bytes
    made = set()
    for alloc, sign, phase in step:
        for due in [p for p in deferred if p <= phase]:
            for a in deferred.pop(due):
                made.add(a)
                yield a, size[a]
            if due == _BACKWARD and workspace_bytes:
                for index in range(1, workspaces):
                    yield ("workspace", index), workspace_bytes
        if sign > 0:
            live.add(alloc)
        else:
            live.discard(alloc)
        yield alloc, sign * size[alloc]
    # Between steps: the step's own allocations go, the optimizer's state stays.
    for alloc in sorted(a for a in live | made if category[a] != _OPTIMIZER):
        yield alloc, -size[alloc]
    # Step 2 (its state exists: not asked for again).
    for alloc, sign, _ in step:
        if category[alloc] != _OPTIMIZER:
            yield ("step 2", alloc), sign * size[alloc]


def replay_run(
    log: AllocationLog, workspace_bytes: int = 0, expandable_segments: bool = False
) -> AllocatorStats:
    """The allocator's stats at the end of the two-step run (see :func:`run_requests`)."""
    return replay(run_requests(log, workspace_bytes), expandable_segments)
