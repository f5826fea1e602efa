"""Evaluation of a trained causal LM: perplexity on held-out text, k-shot multiple-choice accuracy.

Both functions take any module that is called as ``model(input_ids=…, attention_mask=…)`` and
returns an object with ``.logits`` of shape ``(B, L, V)`` (every Hugging Face causal LM, peft
models included). They run under ``torch.no_grad()`` in eval mode and restore the training mode.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from velora_core.bench.data import (
    LETTERS,
    MCQuestion,
    answer_tokens,
    fit_kshot_prompt,
    select_shots,
)
from velora_core.contract.intervals import perplexity_interval, wilson
from velora_core.contract.result import EvalResult
from velora_core.models.tokenizers import Tokenizer


def _device(model: nn.Module) -> torch.device:
    parameter = next(model.parameters(), None)
    return parameter.device if parameter is not None else torch.device("cpu")


@contextmanager
def _evaluating(model: nn.Module) -> Iterator[None]:
    """Eval mode without autograd for the block; the model's own mode afterwards."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        model.train(was_training)


def perplexity(
    model: nn.Module, blocks: Tensor, batch_size: int, attention_mask: Tensor | None = None
) -> EvalResult:
    """``exp`` of the mean next-token negative log-likelihood over every predicted token.

    Args:
        model: a causal LM (see the module docstring).
        blocks: LongTensor ``(N, L)`` of token ids; each row's first token is context only.
        batch_size: rows per forward pass; it does not change the result.
        attention_mask: optional ``(N, L)``, 1 on real tokens, 0 on right padding. A token is
            predicted (and counted) when it and the token before it are real.

    The mean is over tokens, not batches: ``exp(Σ nll / Σ tokens)``, computed in float64, so rows
    or batches with fewer tokens weigh exactly as much as their tokens. ``ci95`` is
    :func:`~velora_core.contract.intervals.perplexity_interval` over the blocks' mean NLLs (None
    for a single block).

    Raises:
        ValueError: ``blocks`` is not 2-D or holds no token to predict.
    """
    if blocks.dim() != 2:
        raise ValueError(f"blocks must be (N, L), got shape {tuple(blocks.shape)}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    device = _device(model)
    total_nll = torch.zeros((), dtype=torch.float64)
    total_tokens = 0
    block_nlls: list[float] = []  # each block's mean NLL: the units of the interval
    with _evaluating(model):
        for start in range(0, blocks.shape[0], batch_size):
            input_ids = blocks[start : start + batch_size].to(device)
            mask = (
                torch.ones_like(input_ids)
                if attention_mask is None
                else attention_mask[start : start + batch_size].to(device)
            )
            logits = model(input_ids=input_ids, attention_mask=mask).logits  # (B, L, V)
            # Position t predicts token t + 1: logits (B, L-1, V) against targets (B, L-1).
            nll = F.cross_entropy(
                logits[:, :-1].float().transpose(1, 2), input_ids[:, 1:], reduction="none"
            )  # (B, L-1)
            counted = (mask[:, 1:] * mask[:, :-1]).bool()
            total_nll += nll[counted].double().sum().cpu()
            total_tokens += int(counted.sum())
            per_block = (nll.double() * counted).sum(1) / counted.sum(1).clamp(min=1)  # (B,)
            block_nlls += [float(v) for v, n in zip(per_block, counted.sum(1), strict=True) if n > 0]
    if total_tokens == 0:
        raise ValueError("no token to predict: blocks need at least two real tokens per row")
    mean_nll = float(total_nll) / total_tokens
    value = math.exp(mean_nll) if mean_nll < 700 else math.inf  # exp overflows a float past ~709
    return EvalResult(
        metric="perplexity",
        value=value,
        chance=None,
        num_examples=int(blocks.shape[0]),
        ci95=perplexity_interval(block_nlls) if len(block_nlls) >= 2 else None,
        details={"mean_nll": mean_nll, "tokens": total_tokens},
    )


def mc_accuracy(
    model: nn.Module,
    tokenizer: Tokenizer,
    shots: Sequence[MCQuestion],
    questions: Sequence[MCQuestion],
    num_shots: int,
    batch_size: int,
    max_length: int | None = None,
) -> EvalResult:
    """k-shot multiple-choice accuracy by answer-letter likelihood (MMLU's protocol).

    For each question: the prompt is :func:`build_kshot_prompt` with ``num_shots`` exemplars
    (:func:`select_shots`: same subject first), ending in ``Answer:``; the model's next-token logits
    after it are compared at the letter tokens of :func:`answer_tokens` (`` A`` … as the tokenizer
    encodes them; for the byte tokenizer a space is appended to the prompt and the letter bytes are
    compared). The highest letter is the prediction; ties go to the earlier letter.

    Args:
        max_length: the longest prompt; a longer one keeps fewer exemplars (never cut: see
            :func:`fit_kshot_prompt`); default: the model's ``config.max_position_embeddings``.

    Returns:
        ``value`` = fraction correct with its Wilson 95 % interval in ``ci95``; ``chance`` = mean of
        ``1 / len(choices)``; ``details`` holds the letter token ids, the exemplars used (min, max,
        mean, and how many questions got fewer than ``num_shots``), the predicted-letter counts and,
        for questions with a subject, the accuracy per subject.

    Raises:
        ValueError: no questions, a question too long even without exemplars, or a tokenizer that
            cannot score answer letters.
    """
    if not questions:
        raise ValueError("no questions to evaluate")
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    suffix, letter_ids = answer_tokens(tokenizer, max(len(q.choices) for q in questions))
    if max_length is None:
        max_length = getattr(getattr(model, "config", None), "max_position_embeddings", None)
    encoded = [fit_kshot_prompt(tokenizer, shots, q, num_shots, suffix, max_length) for q in questions]
    prompts = [ids for ids, _ in encoded]
    shots_used = [kept for _, kept in encoded]
    # Longest first, so each batch pads to similar lengths; predictions go back to question order.
    order = sorted(range(len(prompts)), key=lambda i: -len(prompts[i]))
    predictions = [0] * len(prompts)
    device = _device(model)
    with _evaluating(model):
        for start in range(0, len(order), batch_size):
            rows = order[start : start + batch_size]
            lengths = torch.tensor([len(prompts[i]) for i in rows])
            input_ids = torch.full((len(rows), int(lengths.max())), tokenizer.pad_token_id, dtype=torch.long)
            for row, i in enumerate(rows):
                input_ids[row, : len(prompts[i])] = torch.tensor(prompts[i])
            # Right padding: (B, L) mask of real tokens; each row's last real token is at lengths - 1.
            mask = (torch.arange(input_ids.shape[1]) < lengths[:, None]).long()
            logits = model(input_ids=input_ids.to(device), attention_mask=mask.to(device)).logits
            final = logits[
                torch.arange(len(rows), device=logits.device), (lengths - 1).to(logits.device)
            ]  # (B, V)
            scores = final[:, letter_ids].float().cpu()  # (B, num_letters)
            for row, i in enumerate(rows):
                predictions[i] = int(scores[row, : len(questions[i].choices)].argmax())
    correct = [p == q.answer for p, q in zip(predictions, questions, strict=True)]
    details: dict[str, object] = {
        "num_shots": num_shots,
        "letter_token_ids": letter_ids,
        "suffix_token_ids": suffix,
        "shots_used": {
            "min": min(shots_used),
            "max": max(shots_used),
            "mean": sum(shots_used) / len(shots_used),
        },
        "questions_with_fewer_shots": sum(
            kept < len(select_shots(shots, q, num_shots))
            for kept, q in zip(shots_used, questions, strict=True)
        ),
        "mean_prompt_tokens": sum(map(len, prompts)) / len(prompts),
        "predicted_letters": {LETTERS[k]: n for k, n in sorted(Counter(predictions).items())},
    }
    subjects = sorted({q.subject for q in questions if q.subject})
    if subjects:
        details["by_subject"] = {
            s: sum(c for c, q in zip(correct, questions, strict=True) if q.subject == s)
            / sum(q.subject == s for q in questions)
            for s in subjects
        }
    return EvalResult(
        metric="mc_accuracy",
        value=sum(correct) / len(questions),
        ci95=wilson(sum(correct), len(questions)),
        chance=sum(1 / len(q.choices) for q in questions) / len(questions),
        num_examples=len(questions),
        details=details,
    )
