"""The masked-LM workload: a RoBERTa pre-trained on text with 15 % of its tokens masked, evaluated by
the perplexity of the masked tokens."""

from __future__ import annotations

import dataclasses

import torch
from torch import nn

from velora_core.bench.data import load_eval_data, load_train_data
from velora_core.bench.evaluate.encoder import masked_lm_perplexity
from velora_core.bench.workloads.data import masked_batches
from velora_core.bench.workloads.strategy import TrainingData, step_budget_examples
from velora_core.contract.result import EvalResult
from velora_core.contract.spec import RunSpec
from velora_core.models.loading import ModelSource
from velora_core.models.tokenizers import load_tokenizer


class MaskedLMWorkload:
    """Masked-token prediction; its training text is read before the model is built."""

    def __init__(self, spec: RunSpec, source: ModelSource) -> None:
        self.spec = spec
        self.source = dataclasses.replace(source, pooling=spec.model.pooling)
        self.processor = load_tokenizer(spec.model, source.path if spec.model.source == "artifact" else None)
        self._data = load_train_data(
            spec.dataset, self.processor, spec.seq_len, spec.seed, max_examples=step_budget_examples(spec)
        )

    def training_data(self, model: nn.Module) -> TrainingData:
        spec, data = self.spec, self._data
        batches = masked_batches(data.batches(spec.micro_batch, spec.seed), self.processor, spec.seed)
        environment = {"data": data.description, "data_fingerprint": data.fingerprint}
        return TrainingData(batches, data.num_examples, environment)

    def evaluate(self, model: nn.Module, device: torch.device) -> EvalResult:
        spec = self.spec
        if spec.eval.metric == "none":
            return EvalResult(metric="none")
        blocks = load_eval_data(spec.eval, spec.dataset, self.processor, spec.seq_len, spec.seed)
        result = masked_lm_perplexity(model, blocks.blocks, self.processor, spec.eval.batch_size, spec.seed)
        result.details.update(dataset=blocks.description, fingerprint=blocks.fingerprint)
        return result
