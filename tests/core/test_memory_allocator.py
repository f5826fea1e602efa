"""The caching-allocator model: hand-worked sequences whose reserved bytes follow from PyTorch's rules
(c10/cuda/CUDACachingAllocator.cpp: round to 512 B, 2 MiB small segments, 20 MiB segments below
10 MiB, 2 MiB-rounded segments above, best fit, split thresholds, merge on free, cache kept)."""

from __future__ import annotations

import pytest

from velora_core.memory.allocator import CachingAllocator, replay, round_size, segment_size

MIB = 1024**2


def test_requests_are_rounded_to_512_bytes():
    assert [round_size(n) for n in (1, 511, 512, 513, 4096)] == [512, 512, 512, 1024, 4096]


def test_segment_sizes_follow_the_request_size():
    assert segment_size(512) == 2 * MIB  # small pool: kSmallBuffer
    assert segment_size(1 * MIB) == 2 * MIB
    assert segment_size(1 * MIB + 512) == 20 * MIB  # 1 MiB < size < 10 MiB: kLargeBuffer
    assert segment_size(10 * MIB) == 10 * MIB  # from kMinLargeAlloc: rounded to 2 MiB
    assert segment_size(11 * MIB) == 12 * MIB


def test_two_medium_requests_share_one_20_mib_segment():
    stats = replay([("a", 3 * MIB), ("b", 3 * MIB)])
    assert stats.reserved == 20 * MIB and stats.segments == 1
    assert stats.allocated == 6 * MIB


def test_small_requests_fill_a_2_mib_segment_then_open_another():
    events = [(i, 100) for i in range(4096)]  # each rounded to 512 B: 4096 fill 2 MiB exactly
    assert replay(events).reserved == 2 * MIB
    assert replay([*events, ("one more", 1)]).reserved == 4 * MIB


def test_a_large_block_is_not_split_for_a_remainder_of_at_most_1_mib():
    allocator = CachingAllocator()
    handed_out = allocator.malloc("a", 11 * MIB + 1)  # 11 MiB + 512 in a 12 MiB segment
    assert handed_out == 12 * MIB  # remaining 1 MiB - 512 B: not > kSmallSize, no split
    assert allocator.stats.peak_allocated == 12 * MIB and allocator.stats.reserved == 12 * MIB


def test_best_fit_picks_the_smallest_free_block_and_splits_it():
    events = [("a", 30 * MIB), ("b", 40 * MIB), ("a", -30 * MIB), ("b", -40 * MIB)]
    events += [("c", 25 * MIB), ("d", 36 * MIB)]  # 25 from the 30 (5 left), 36 from the 40 (4 left)
    assert replay(events).reserved == 70 * MIB
    stats = replay([*events, ("e", 6 * MIB)])  # neither the 4 nor the 5 MiB rest fits: new 20 MiB
    assert stats.reserved == 90 * MIB and stats.segments == 3


def test_freed_blocks_of_different_segments_do_not_merge():
    events = [("a", 12 * MIB), ("b", 12 * MIB), ("a", -12 * MIB), ("b", -12 * MIB), ("c", 20 * MIB)]
    stats = replay(events)
    assert stats.reserved == 44 * MIB  # 12 + 12 cached, apart; the 20 MiB needs its own segment
    assert stats.peak_allocated == 24 * MIB


def test_freed_neighbours_in_one_segment_merge():
    events = [("a", 3 * MIB), ("b", 3 * MIB), ("a", -3 * MIB), ("b", -3 * MIB), ("c", 18 * MIB)]
    assert replay(events).reserved == 20 * MIB  # 3 + 3 + 14 merge back into the whole 20 MiB


def test_small_blocks_split_down_to_512_bytes():
    allocator = CachingAllocator()
    allocator.malloc("a", 1 * MIB)  # the small pool's largest request, in a 2 MiB segment
    allocator.malloc("b", 1 * MIB - 512)  # leaves exactly 512 B: split (remaining >= kMinBlockSize)
    allocator.malloc("c", 512)
    assert allocator.stats.reserved == 2 * MIB and allocator.stats.allocated == 2 * MIB


def test_the_cache_is_kept_between_steps():
    step = [("x", 50 * MIB), ("x", -50 * MIB)]
    assert replay(step * 3).reserved == 50 * MIB


@pytest.mark.parametrize(
    ("events", "fixed", "expandable"),
    [
        ([("a", 3 * MIB), ("b", 30 * MIB)], 50 * MIB, 40 * MIB),  # 20-MiB pages, the tail grows
        (
            [("a", 12 * MIB), ("b", 12 * MIB), ("a", -12 * MIB), ("b", -12 * MIB), ("c", 20 * MIB)],
            44 * MIB,
            40 * MIB,  # one segment: the two freed blocks merge and serve the 20 MiB
        ),
    ],
)
def test_expandable_segments_map_pages_at_the_end(events, fixed, expandable):
    assert replay(events).reserved == fixed
    assert replay(events, expandable_segments=True).reserved == expandable


def test_an_allocation_key_cannot_be_live_twice():
    allocator = CachingAllocator()
    allocator.malloc("a", 10)
    with pytest.raises(ValueError, match="already live"):
        allocator.malloc("a", 10)
