"""Evaluation of the encoder workloads: a classification metric with its 95% interval, and the
masked-LM perplexity of held-out text."""

from __future__ import annotations

from collections import Counter

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from velora_core.bench.evaluate.causal_lm import _device, _evaluating
from velora_core.bench.evaluate.classification_metrics import classification_metric
from velora_core.bench.workloads.data import ClassificationData, mask_batch, mask_token_id
from velora_core.contract.result import EvalResult
from velora_core.models.tokenizers import ByteTokenizer, HFTokenizer, Tokenizer


def predict(model: nn.Module, data: ClassificationData, batch_size: int) -> list[float]:
    """The model's prediction for every example, in order: the arg-max class, or the score of a
    regression head."""
    device = _device(model)
    out: list[float] = []
    with _evaluating(model):
        for batch in data.in_order(batch_size):
            inputs = {k: v.to(device) for k, v in batch.items() if k != "labels"}
            logits = model(**inputs).logits.float()
            out += logits[:, 0].tolist() if data.regression else logits.argmax(-1).tolist()
    return out


def classification_eval(
    model: nn.Module, data: ClassificationData, metric: str, batch_size: int
) -> EvalResult:
    """``metric`` (accuracy, matthews, pearson) of the model on ``data``, with its 95% interval.

    ``chance`` is what a constant answer scores: the majority class's share for accuracy, 0 for the
    two correlations.
    """
    if not data.examples:
        raise ValueError(f"no evaluation examples: {data.description}")
    labels = data.labels()
    predictions = predict(model, data, batch_size)
    if not data.regression:
        labels = [int(y) for y in labels]
        predictions = [int(p) for p in predictions]
    value, interval = classification_metric(metric, predictions, labels)
    chance = Counter(labels).most_common(1)[0][1] / len(labels) if metric == "accuracy" else 0.0
    return EvalResult(
        metric=metric,
        value=value,
        chance=chance,
        num_examples=len(labels),
        ci95=None if interval is None else [interval[0], interval[1]],
        details={
            "dataset": data.description,
            "fingerprint": data.fingerprint,
            "classes": list(data.label_names),
            "interval": "Wilson" if metric == "accuracy" else "Fisher z",
        },
    )


def masked_lm_perplexity(
    model: nn.Module, blocks: Tensor, tokenizer: Tokenizer, batch_size: int, seed: int
) -> EvalResult:
    """``exp`` of the mean negative log-likelihood of the masked tokens of ``blocks`` (``(N, L)``),
    masked as in training with a fixed seed, so every method is scored on the same tokens."""
    device = _device(model)
    generator = torch.Generator().manual_seed(seed)
    mask_id = mask_token_id(tokenizer)
    byte = not isinstance(tokenizer, HFTokenizer)
    vocab = (ByteTokenizer.offset, ByteTokenizer.vocab_size) if byte else (0, tokenizer.vocab_size)
    total, count = torch.zeros((), dtype=torch.float64), 0
    with _evaluating(model):
        for start in range(0, blocks.shape[0], batch_size):
            ids = blocks[start : start + batch_size]
            batch = mask_batch(
                {"input_ids": ids, "attention_mask": torch.ones_like(ids)}, mask_id, vocab, generator
            )
            logits = model(
                input_ids=batch["input_ids"].to(device), attention_mask=batch["attention_mask"].to(device)
            ).logits
            labels = batch["labels"].to(device)
            nll = F.cross_entropy(logits.float().transpose(1, 2), labels, reduction="sum", ignore_index=-100)
            total += nll.double().cpu()
            count += int((labels != -100).sum())
    if count == 0:
        raise ValueError("no token was masked in the evaluation blocks")
    return EvalResult(
        metric="perplexity",
        value=float(torch.exp(total / count)),
        num_examples=int(blocks.shape[0]),
        details={"masked_tokens": count},
    )
