"""The protocol every workload's strategy implements: what differs between workloads, asked for by
the engine's one lifecycle (``velora_core.bench.engine``)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import nn

from velora_core.contract.result import EvalResult
from velora_core.contract.spec import RunSpec
from velora_core.models.loading import ModelSource


class Processor(Protocol):
    """What turns raw examples into model inputs (a tokenizer, an image processor): it pads batches
    with ``pad_token_id`` and is saved beside the model in the artifact."""

    pad_token_id: int

    def save(self, directory: str | Path) -> None: ...


@dataclass
class TrainingData:
    """The training batches of a run, how many examples they come from (for an ``epochs`` budget)
    and what the result's environment says about them (``data``, ``data_fingerprint`` …)."""

    batches: Iterator[dict[str, torch.Tensor]]
    num_examples: int
    environment: dict[str, Any] = field(default_factory=dict)


def step_budget_examples(spec: RunSpec) -> int | None:
    """With a step budget, the most examples a run can visit (None for an ``epochs`` budget)."""
    return spec.steps * spec.micro_batch * spec.grad_accum if spec.steps is not None else None


class WorkloadStrategy(Protocol):
    """One workload's side of a run. Built with ``Strategy(spec, source)`` once the model's source
    is known and before the model is: the constructor reads whatever must come first (labels give
    a classification head its size) and sets:

    Attributes:
        source: the model to build (its Auto class, head, pooling), given to the method's base.
        processor: the tokenizer or image processor, saved with the artifact.
    """

    source: ModelSource
    processor: Processor

    def __init__(self, spec: RunSpec, source: ModelSource) -> None: ...

    def training_data(self, model: nn.Module) -> TrainingData:
        """The training batches for ``model`` (the prepared model: memory-only runs read its vocabulary).

        Raises:
            ValueError: data that cannot serve the workload (the message says why).
        """
        ...

    def evaluate(self, model: nn.Module, device: torch.device) -> EvalResult:
        """The trained model's score by the spec's ``eval.metric`` (``none``: an empty result)."""
        ...
