"""A step's allocation log at any micro-batch, made from the logs of two.

At a fixed sequence length, every tensor of a training step is either independent of the micro-batch
(weights, gradients, optimizer state, the loss) or holds one slice per sequence (activations,
temporaries): its bytes are ``a + b * micro_batch``, and the step makes the same allocations and frees
in the same order at every micro-batch. Two logs of the same step code at micro-batches ``m1 < m2``
then give every allocation's line, and the log at any other micro-batch is those lines read off.
:func:`log_at` refuses (None) whenever the two logs say otherwise: a different sequence of events,
categories or layer tags (a kernel chosen by size, say), or an allocation whose growth is not a whole
number of bytes per sequence. A micro-batch of one is a case of its own: a tensor with a dimension of
1 is contiguous in more layouts, so some copies are never made (measured: every method's log at 1
differs from its line), and the line is neither drawn through it nor read at it. The search for the
largest micro-batch
(``velora_core.bench.step_prediction``) uses it to propose sizes and traces the answer it settles on.
"""

from __future__ import annotations

from dataclasses import replace

from velora_core.memory.tracker import AllocationLog

#: The smallest micro-batch on the line (see the module docstring).
MIN_MICRO_BATCH = 2


class BatchLine:
    """The lines through two logs of one step at micro-batches ``m1 < m2`` (see the module docstring)."""

    def __init__(self, m1: int, log1: AllocationLog, m2: int, log2: AllocationLog):
        if not MIN_MICRO_BATCH <= m1 < m2:
            raise ValueError(f"two micro-batches from {MIN_MICRO_BATCH} up, in order, not {m1} and {m2}")
        self.m1, self.log1 = m1, log1
        self.slopes: list[int] | None = None
        same = (
            log1.events == log2.events
            and log1.categories == log2.categories
            and log1.tags == log2.tags
            and log1.entry_events == log2.entry_events
            and len(log1.sizes) == len(log2.sizes)
        )
        if not same:
            return
        slopes = []
        for low, high in zip(log1.sizes, log2.sizes, strict=True):
            growth, rest = divmod(high - low, m2 - m1)
            if rest or growth < 0:
                return
            slopes.append(growth)
        self.slopes = slopes

    @property
    def holds(self) -> bool:
        """The two logs are the same step with every allocation on a line."""
        return self.slopes is not None

    def log_at(self, micro_batch: int) -> AllocationLog | None:
        """The log at ``micro_batch``, or None below :data:`MIN_MICRO_BATCH` or where the two logs are
        not on lines."""
        if self.slopes is None or micro_batch < MIN_MICRO_BATCH:
            return None
        shift = micro_batch - self.m1
        sizes = [size + shift * slope for size, slope in zip(self.log1.sizes, self.slopes, strict=True)]
        if any(size < 0 for size in sizes):
            return None
        return replace(self.log1, sizes=sizes)
