"""The run a tracked step's log stands for: what is asked of the caching allocator, in order."""

from __future__ import annotations

from velora_core.memory.reserved import replay_run, run_requests
from velora_core.memory.tracker import AllocationLog

MIB = 1024**2
FORWARD, BACKWARD, OPTIMIZER = 0, 1, 2


def _steady_log() -> AllocationLog:
    """A steady step: a weight (0) and AdamW state (1) exist; the step saves an activation (2),
    makes a gradient (3) in backward and a temporary (4) in the optimizer."""
    sizes = [30 * MIB, 12 * MIB, 40 * MIB, 30 * MIB, 5 * MIB]
    categories = ["trainable", "optimizer", "activations", "gradients", "temporary"]
    events = [(0, 1, 0), (1, 1, 0)]  # what existed when tracking began
    events += [(2, 1, FORWARD), (3, 1, BACKWARD), (2, -1, BACKWARD), (4, 1, OPTIMIZER), (4, -1, OPTIMIZER)]
    return AllocationLog(sizes, categories, events, entry_events=2)


def test_optimizer_state_is_built_in_step_ones_optimizer_phase_and_kept():
    requests = list(run_requests(_steady_log()))
    keys = [key for key, size in requests if size > 0]
    assert keys[:2] == [0, 2]  # the weight, then step 1's activation: no state before the first step
    assert keys.index(1) > keys.index(3)  # the state comes after step 1's gradient
    assert (1, -12 * MIB) not in requests  # and is never freed
    assert ("step 2", 1) not in keys  # step 2 does not build it again
    assert (3, -30 * MIB) in requests  # zero_grad(set_to_none=True) between the steps


def test_a_run_reserves_what_the_order_of_its_requests_implies():
    # Step 1: weight 30, activation 40 and gradient 30 MiB in segments of their own (>= 10 MiB: rounded
    # to 2 MiB); the activation is freed in backward, so the state (12) and the temporary (5) are cut
    # from its cached 40 MiB block. Step 2's activation no longer fits in what is left (23 MiB): a new
    # 40 MiB segment. The gradient takes its cached segment back. The steady step costs 40 MiB more
    # than the first: what a first-step peak leaves out.
    assert replay_run(_steady_log()).reserved == (30 + 40 + 30 + 40) * MIB
    # Two 8 MiB + 128 KiB cuBLAS workspaces (forward's, backward's thread): both from one 20 MiB
    # segment (under 10 MiB: kLargeBuffer), split between them.
    with_workspaces = replay_run(_steady_log(), workspace_bytes=8 * MIB + 128 * 1024)
    assert with_workspaces.reserved == (30 + 40 + 30 + 40 + 20) * MIB
