"""What the classification workloads share: labelled data read before the model, so that the head's
size comes from the labels, and accuracy / Matthews / Pearson on the held-out split.

A pre-trained base (``model.source='artifact'``, a hub or local model) is loaded with the labels
and ``ignore_mismatched_sizes``, so a head of another size is initialised afresh. Each workload
module (``image_classification``, ``sequence_classification``) adds its processor.
"""

from __future__ import annotations

import dataclasses
import random
from typing import Any

import torch
from torch import nn

from velora_core.bench.evaluate.encoder import classification_eval
from velora_core.bench.workloads.data import ClassificationData, digits_data, hub_data, stdlib_package_data
from velora_core.bench.workloads.strategy import Processor, TrainingData
from velora_core.contract.result import EvalResult
from velora_core.contract.spec import DatasetSpec, RunSpec
from velora_core.models.loading import ModelSource
from velora_core.models.tokenizers import Tokenizer


def _sample(data: ClassificationData, limit: int, seed: int) -> ClassificationData:
    """At most ``limit`` examples (a seeded sample, kept in their order)."""
    if len(data.examples) <= limit:
        return data
    keep = sorted(random.Random(f"eval:{seed}").sample(range(len(data.examples)), limit))
    return dataclasses.replace(data, examples=[data.examples[i] for i in keep])


def _with_head(source: ModelSource, train: ClassificationData) -> ModelSource:
    """``source`` with a classification head for ``train``'s labels (``id2label`` sets
    ``num_labels``: 1 for a regression's one score)."""
    names = list(train.label_names)
    head: dict[str, Any] = {
        "id2label": dict(enumerate(names)),
        "label2id": {n: i for i, n in enumerate(names)},
        "problem_type": "regression" if train.regression else "single_label_classification",
    }
    if source.config is not None:
        config = source.config.__class__.from_dict({**source.config.to_dict(), **head})
        return dataclasses.replace(source, config=config)
    return dataclasses.replace(source, head={**head, "ignore_mismatched_sizes": True})


class ClassificationWorkload:
    """Labelled examples to classes (or a score). Subclasses set the processors in
    :meth:`_processors`: the tokenizer or transformers image processor the data is read with, and
    the processor saved with the artifact."""

    def __init__(self, spec: RunSpec, source: ModelSource) -> None:
        self.spec = spec
        self.tokenizer, self.image_processor, self.processor = self._processors(spec, source)
        self._train = self._data(spec.dataset, "train")
        self.source = _with_head(source, self._train)

    def _processors(
        self, spec: RunSpec, source: ModelSource
    ) -> tuple[Tokenizer | None, Any | None, Processor]:  # pragma: no cover - each subclass's
        raise NotImplementedError

    def _data(self, dataset: DatasetSpec, role: str, names: list[str] | None = None) -> ClassificationData:
        spec = self.spec
        split = "train" if role == "train" else "test"
        if dataset.source == "builtin" and dataset.name in ("digits", "digits-rotation"):
            return digits_data(dataset.name, split)
        if dataset.source == "builtin" and dataset.name == "stdlib-package":
            return stdlib_package_data(split, self.tokenizer, spec.seq_len, spec.seed)
        if dataset.source == "builtin":
            raise ValueError(f"built-in dataset {dataset.name!r} holds no labelled examples")
        limit = dataset.max_examples if role == "train" else None
        return hub_data(dataset, role, self.tokenizer, self.image_processor, spec.seq_len, limit, names)

    def training_data(self, model: nn.Module) -> TrainingData:
        train, spec = self._train, self.spec
        environment = {
            "data": train.description,
            "data_fingerprint": train.fingerprint,
            "labels": list(train.label_names),
        }
        return TrainingData(train.batches(spec.micro_batch, spec.seed), train.num_examples, environment)

    def evaluate(self, model: nn.Module, device: torch.device) -> EvalResult:
        spec = self.spec
        if spec.eval.metric == "none":
            return EvalResult(metric="none")
        data = self._data(spec.eval.dataset or spec.dataset, "eval", list(self._train.label_names))
        data = _sample(data, spec.eval.max_examples, spec.seed)
        return classification_eval(model, data, spec.eval.metric, spec.eval.batch_size)
