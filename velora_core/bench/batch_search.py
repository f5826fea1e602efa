"""The largest micro-batch that fits on the device: a doubling-then-bisection search over real
training steps."""

from __future__ import annotations

from collections.abc import Callable

import torch

from velora_core.bench.step import TrainingStep
from velora_core.bench.trainer import oom_types, random_batches
from velora_core.contract.spec import RunSpec
from velora_core.methods.registry import prepare_model
from velora_core.models.loading import ModelSource


def find_max_micro_batch(fits: Callable[[int], bool], start: int = 1, cap: int = 4096) -> int | None:
    """The largest micro-batch for which ``fits`` is true: doubling, then bisection. None if even
    ``start`` does not fit."""
    if not fits(start):
        return None
    good, bad = start, None
    while bad is None:
        trial = good * 2
        if trial > cap:
            return good
        if fits(trial):
            good = trial
        else:
            bad = trial
    while bad - good > 1:
        mid = (good + bad) // 2
        good, bad = (mid, bad) if fits(mid) else (good, mid)
    return good


def search_max_micro_batch(
    spec: RunSpec, source: ModelSource, vocab: int, device: torch.device
) -> int | None:
    """The largest micro-batch for which a steady training step of ``spec``'s method fits on
    ``device``: each trial (a fresh model) takes two whole steps as the trainer does (optimizer built
    first, every micro-batch of ``grad_accum``), the second with the optimizer state the first made.
    None if even 1 does not fit."""

    def trial(micro_batch: int) -> None:
        prepared = prepare_model(spec.method, source, spec.method_config)
        prepared.model.train()
        step = TrainingStep(spec, prepared, device)
        batches = random_batches(vocab, micro_batch, spec.seq_len, spec.seed)
        on_device = ({k: v.to(device) for k, v in batch.items()} for batch in batches)
        for _ in range(2):
            step.run(on_device)

    def fits(micro_batch: int) -> bool:
        try:
            trial(micro_batch)  # its model and optimizer are gone when it returns or raises
            return True
        except oom_types():
            return False
        finally:
            if device.type == "cuda":
                torch.cuda.empty_cache()  # between trials, not in a hot path

    return find_max_micro_batch(fits)
