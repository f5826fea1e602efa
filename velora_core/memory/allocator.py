"""A model of PyTorch's CUDA caching allocator: what a step's allocations and frees *reserve* on a card.

What runs out on a GPU is the caching allocator's reserved memory (its ``cudaMalloc``'d segments),
not the sum of live tensors: freed blocks stay cached, a block may be larger than the request it
serves, and a segment is only given back by ``empty_cache``. :class:`CachingAllocator` replays a
sequence of allocations and frees through the rules of ``c10/cuda/CUDACachingAllocator.cpp``
(PyTorch 2.x; constants from ``c10/core/AllocatorConfig.h``):

- a request is rounded up to a multiple of ``kMinBlockSize`` (512 B) (``round_size``);
- requests of at most ``kSmallSize`` (1 MiB) use the small pool, larger ones the large pool
  (``get_pool``);
- a cached block is chosen best-fit: the smallest free block of the pool that is large enough, the
  lower address on a tie (``get_free_block``, a set ordered by size then address);
- with none, a new segment is allocated: ``kSmallBuffer`` (2 MiB) for a small request,
  ``kLargeBuffer`` (20 MiB) for a request under ``kMinLargeAlloc`` (10 MiB), else the request rounded
  up to ``kRoundLarge`` (2 MiB) (``get_allocation_size``);
- the block is split when what remains is at least ``kMinBlockSize`` (small pool) or more than
  ``kSmallSize`` (large pool) (``should_split``); otherwise the whole block is handed out;
- a freed block merges with free neighbours of its segment and stays cached (``free_block``);
- ``expandable_segments``: one growing segment per pool, mapped in pages of 2 MiB (small pool) or
  20 MiB (large pool); a request that no free block serves maps pages at the end, joined to a free
  block there; every split leaves at least 512 B (``should_split`` under expandable segments).

Simplified (said wherever the numbers are shown): one device and one stream (no ``record_stream``,
no CUDA events, no graph pools); the card never runs out, so the allocator never frees its cache and
retries (``release_cached_blocks``): the replay is the reserved memory of a run whose card is large
enough, an upper bound on one that is just large enough; ``max_split_size_mb``,
``roundup_power2_divisions`` and ``garbage_collection_threshold`` keep their defaults (off);
expandable segments pick the best-fitting mapped block without the rule that prefers growing the
last one; addresses are assigned in order (a tie between equal free blocks can go the other way on a
card).
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable
from dataclasses import dataclass, field

MIB = 1024**2
#: The allocator's constants (c10/core/AllocatorConfig.h and CUDACachingAllocator.cpp).
K_MIN_BLOCK_SIZE = 512
K_SMALL_SIZE = 1 * MIB
K_SMALL_BUFFER = 2 * MIB
K_LARGE_BUFFER = 20 * MIB
K_MIN_LARGE_ALLOC = 10 * MIB
K_ROUND_LARGE = 2 * MIB


def round_size(size: int) -> int:
    """Bytes the allocator sets aside for a request of ``size`` bytes (``round_size``)."""
    if size < K_MIN_BLOCK_SIZE:
        return K_MIN_BLOCK_SIZE
    return K_MIN_BLOCK_SIZE * -(-size // K_MIN_BLOCK_SIZE)


def segment_size(size: int) -> int:
    """Bytes of the new segment a rounded request of ``size`` opens (``get_allocation_size``)."""
    if size <= K_SMALL_SIZE:
        return K_SMALL_BUFFER
    if size < K_MIN_LARGE_ALLOC:
        return K_LARGE_BUFFER
    return K_ROUND_LARGE * -(-size // K_ROUND_LARGE)


@dataclass(eq=False)
class _Block:
    address: int
    size: int
    small: bool  # its pool
    free: bool = True
    prev: _Block | None = None
    next: _Block | None = None


@dataclass
class _Pool:
    small: bool
    free: list[tuple[int, int]] = field(default_factory=list)  # (size, address), sorted: best fit
    by_address: dict[int, _Block] = field(default_factory=dict)  # free blocks
    base: int = 0  # expandable segments: the one segment's first address
    tail: _Block | None = None  # expandable segments: its last block

    def add(self, block: _Block) -> None:
        block.free = True
        bisect.insort(self.free, (block.size, block.address))
        self.by_address[block.address] = block

    def remove(self, block: _Block) -> None:
        index = bisect.bisect_left(self.free, (block.size, block.address))
        del self.free[index]
        del self.by_address[block.address]
        block.free = False

    def best_fit(self, size: int) -> _Block | None:
        index = bisect.bisect_left(self.free, (size, -1))
        return self.by_address[self.free[index][1]] if index < len(self.free) else None


@dataclass
class AllocatorStats:
    """What a replay ends with (bytes).

    Attributes:
        reserved: segments held at the end (with no ``empty_cache``, also the peak).
        peak_reserved: the most held at once (``torch.cuda.max_memory_reserved``).
        peak_allocated: the most handed out at once, in whole blocks (``max_memory_allocated``).
        segments: segments opened (``cudaMalloc`` calls; mappings under expandable segments).
    """

    reserved: int = 0
    peak_reserved: int = 0
    allocated: int = 0
    peak_allocated: int = 0
    segments: int = 0


class CachingAllocator:
    """The caching allocator's bookkeeping, with no memory behind it (see the module docstring).

    Usage::

        allocator = CachingAllocator()
        allocator.malloc("a", 3 * 1024**2)
        allocator.free("a")
        allocator.stats.peak_reserved   # 20 MiB: one kLargeBuffer segment

    Args:
        expandable_segments: model ``PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True``.
    """

    def __init__(self, expandable_segments: bool = False):
        self.expandable = expandable_segments
        self.stats = AllocatorStats()
        # Expandable segments: each pool's one segment far from the other's, so blocks never meet.
        self._pools = {True: _Pool(small=True, base=0), False: _Pool(small=False, base=1 << 56)}
        self._live: dict[object, _Block] = {}
        self._next_address = 0  # fixed segments, in the order they are opened

    # --- the public operations ---------------------------------------------------------
    def malloc(self, key: object, size: int) -> int:
        """Serve a request of ``size`` bytes under ``key`` (a later :meth:`free` names it); 0 bytes
        are never asked of the allocator. Returns the bytes handed out (a whole block)."""
        if key in self._live:
            raise ValueError(f"allocation {key!r} is already live")
        if size <= 0:
            return 0
        size = round_size(size)
        pool = self._pools[size <= K_SMALL_SIZE]
        block = pool.best_fit(size)
        if block is not None:
            pool.remove(block)
        else:
            block = self._grow(pool, size)
        if self._should_split(pool, block.size - size):
            rest = _Block(block.address + size, block.size - size, pool.small, prev=block, next=block.next)
            if block.next is not None:
                block.next.prev = rest
            block.next, block.size = rest, size
            if pool.tail is block:
                pool.tail = rest
            pool.add(rest)
        block.free = False
        self._live[key] = block
        self.stats.allocated += block.size
        self.stats.peak_allocated = max(self.stats.peak_allocated, self.stats.allocated)
        return block.size

    def free(self, key: object) -> None:
        """Give back the block of ``key``: cached, merged with free neighbours of its segment."""
        block = self._live.pop(key, None)
        if block is None:
            return  # a 0-byte allocation, or one made before the replay began
        self.stats.allocated -= block.size
        pool = self._pools[block.small]
        for neighbour in (block.prev, block.next):
            if neighbour is not None and neighbour.free:
                pool.remove(neighbour)
                block = self._merge(pool, block, neighbour)
        pool.add(block)

    # --- the rules ---------------------------------------------------------------------
    def _should_split(self, pool: _Pool, remaining: int) -> bool:
        if pool.small or self.expandable:
            return remaining >= K_MIN_BLOCK_SIZE
        return remaining > K_SMALL_SIZE

    def _reserve(self, nbytes: int) -> None:
        self.stats.reserved += nbytes
        self.stats.peak_reserved = max(self.stats.peak_reserved, self.stats.reserved)
        self.stats.segments += 1

    def _grow(self, pool: _Pool, size: int) -> _Block:
        """A block of at least ``size`` bytes from new memory (not in the pool's free list)."""
        if self.expandable:
            return self._grow_expandable(pool, size)
        nbytes = segment_size(size)
        block = _Block(self._next_address, nbytes, pool.small)  # a segment: no neighbours
        self._next_address += nbytes
        self._reserve(nbytes)
        return block

    def _grow_expandable(self, pool: _Pool, size: int) -> _Block:
        """Map whole pages at the end of the pool's one segment, joined to a free block there
        (``try_allocate_expandable_block``)."""
        page = K_SMALL_BUFFER if pool.small else K_LARGE_BUFFER
        tail = pool.tail
        if tail is not None and tail.free:
            pool.remove(tail)
            nbytes = page * -(-(size - tail.size) // page)
            tail.size += nbytes
            self._reserve(nbytes)
            return tail
        nbytes = page * -(-size // page)
        end = pool.base if tail is None else tail.address + tail.size
        block = _Block(end, nbytes, pool.small, prev=tail)
        if tail is not None:
            tail.next = block
        pool.tail = block
        self._reserve(nbytes)
        return block

    def _merge(self, pool: _Pool, block: _Block, neighbour: _Block) -> _Block:
        first, second = (neighbour, block) if neighbour.next is block else (block, neighbour)
        first.size += second.size
        first.next = second.next
        if second.next is not None:
            second.next.prev = first
        if pool.tail is second:
            pool.tail = first
        return first


def replay(events: Iterable[tuple[object, int]], expandable_segments: bool = False) -> AllocatorStats:
    """Replay ``(key, +bytes)`` allocations and ``(key, -bytes)`` frees, in order.

    Returns:
        The allocator's stats at the end (peaks over the whole replay).
    """
    allocator = CachingAllocator(expandable_segments)
    for key, size in events:
        if size > 0:
            allocator.malloc(key, size)
        else:
            allocator.free(key)
    return allocator.stats
