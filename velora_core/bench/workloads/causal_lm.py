"""The causal-LM workloads (``pretrain``, ``finetune``): a LLaMA-family model, text batches (random
tokens for a memory-only run), perplexity or multiple-choice accuracy."""

from __future__ import annotations

import torch
from torch import nn

from velora_core.bench.data import (
    ContinuationEvalData,
    LMEvalData,
    MCEvalData,
    load_eval_data,
    load_train_data,
)
from velora_core.bench.evaluate.causal_lm import mc_accuracy, perplexity
from velora_core.bench.evaluate.continuation import continuation_accuracy
from velora_core.bench.trainer import random_batches
from velora_core.bench.workloads.strategy import TrainingData, step_budget_examples
from velora_core.contract.result import EvalResult
from velora_core.contract.spec import RunSpec
from velora_core.models.loading import ModelSource
from velora_core.models.tokenizers import load_tokenizer


class CausalLMWorkload:
    """Next-token prediction: the model as the spec names it, the tokenizer of its data."""

    def __init__(self, spec: RunSpec, source: ModelSource) -> None:
        self.spec = spec
        self.source = source
        self.processor = load_tokenizer(spec.model, source.path if spec.model.source == "artifact" else None)

    def training_data(self, model: nn.Module) -> TrainingData:
        spec = self.spec
        if spec.model.memory_only:
            vocab = model.get_input_embeddings().num_embeddings
            batches = random_batches(vocab, spec.micro_batch, spec.seq_len, spec.seed)
            return TrainingData(batches, spec.micro_batch, {"data": "random tokens (memory-only)"})
        data = load_train_data(
            spec.dataset, self.processor, spec.seq_len, spec.seed, max_examples=step_budget_examples(spec)
        )
        environment = {"data_fingerprint": data.fingerprint, "data": data.description}
        return TrainingData(data.batches(spec.micro_batch, spec.seed), data.num_examples, environment)

    def evaluate(self, model: nn.Module, device: torch.device) -> EvalResult:
        spec, tokenizer = self.spec, self.processor
        if spec.eval.metric == "none":
            return EvalResult(metric="none")
        if spec.eval.harness_tasks:
            from velora_core.bench.evaluate.harness import harness_evaluate  # imports lm_eval: seconds

            return harness_evaluate(
                model,
                tokenizer,
                spec.eval.harness_tasks,
                num_fewshot=spec.eval.num_fewshot,
                limit=spec.eval.limit,
                include_path=spec.eval.include_path,
                batch_size=spec.eval.batch_size,
            )
        data = load_eval_data(spec.eval, spec.dataset, tokenizer, spec.seq_len, spec.seed)
        if data is None:
            return EvalResult(metric="none")
        if isinstance(data, LMEvalData):
            result = perplexity(model, data.blocks.to(device), spec.eval.batch_size)
        elif isinstance(data, MCEvalData):
            result = mc_accuracy(
                model, tokenizer, data.shots, data.questions, spec.eval.num_shots, spec.eval.batch_size
            )
        elif isinstance(data, ContinuationEvalData):
            result = continuation_accuracy(model, tokenizer, data.items, spec.eval.batch_size)
        else:  # pragma: no cover - load_eval_data returns one of these
            raise TypeError(f"unexpected evaluation data {type(data).__name__}")
        result.details = {**result.details, "dataset": data.description, "fingerprint": data.fingerprint}
        return result
