"""The engine's side of each workload: one strategy module per workload, named by its entry in
``velora_core.contract.workload_registry.WORKLOADS`` (``strategy``) and resolved here.

- ``causal_lm``: ``pretrain`` and ``finetune`` (LLaMA; text, perplexity or multiple choice);
- ``masked_lm``: ``masked-lm`` (RoBERTa pre-training);
- ``image_classification`` and ``sequence_classification`` (ViT, RoBERTa), on ``classification``;
- ``strategy``: the protocol they implement (model source, processor, training data, evaluation);
- ``data``: the encoder workloads' labelled data and masking.

Adding a workload is one registry entry and one module here; the engine does not change.
"""

from __future__ import annotations

import functools

from velora_core.bench.workloads.strategy import Processor, TrainingData, WorkloadStrategy
from velora_core.contract.code_reference import resolve_reference
from velora_core.contract.spec import RunSpec
from velora_core.contract.workload_registry import STRATEGIES, WORKLOADS
from velora_core.models.loading import ModelSource

__all__ = ["Processor", "TrainingData", "WorkloadStrategy", "start_workload", "strategy_class"]


@functools.cache
def strategy_class(workload: str) -> type[WorkloadStrategy]:
    """The strategy class the registry entry of ``workload`` names.

    Raises:
        LookupError: the entry names no class under ``velora_core.bench.workloads``.
    """
    cls = resolve_reference(STRATEGIES, WORKLOADS[workload].strategy)
    if not isinstance(cls, type):
        raise LookupError(f"workload {workload!r}: {WORKLOADS[workload].strategy!r} is not a class")
    return cls


def start_workload(spec: RunSpec, source: ModelSource) -> WorkloadStrategy:
    """The strategy of ``spec``'s workload for a run whose model comes from ``source``; it reads
    what must come before the model (a classification head's labels).

    Raises:
        ValueError: data that cannot serve the workload (the message says why).
    """
    return strategy_class(spec.workload)(spec, source)
