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
    build_kshot_prompt,
    encode_mc_prompt,
    select_shots,
)
from velora_core.contract.hashing import prompt_hash
from velora_core.contract.intervals import perplexity_interval, wilson
from velora_core.contract.result import EvalResult, ItemRecords
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


#: Config attributes that give a model's context length, in the order lm-evaluation-harness reads them.
CONTEXT_LENGTH_ATTRIBUTES = ("n_positions", "max_position_embeddings", "n_ctx")


def context_length(model: nn.Module) -> int | None:
    """The longest input the model takes, read from its config as lm-evaluation-harness reads it."""
    config = getattr(model, "config", None)
    for name in CONTEXT_LENGTH_ATTRIBUTES:
        value = getattr(config, name, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def mc_accuracy(
    model: nn.Module,
    tokenizer: Tokenizer,
    shots: Sequence[MCQuestion],
    questions: Sequence[MCQuestion],
    num_shots: int,
    batch_size: int,
    max_length: int | None = None,
) -> EvalResult:
    """k-shot multiple-choice accuracy by answer-letter log-likelihood, as lm-evaluation-harness's ``mmlu``.

    For each question the context is :func:`build_kshot_prompt` with the first ``num_shots``
    exemplars of its subject (:func:`select_shots`) and each choice's continuation is `` A``, `` B``
    …; a choice's log-likelihood is that of its continuation's tokens after the context, encoded as
    the harness encodes them (bos only where the tokenizer adds it, :func:`encode_mc_prompt`), so
    the numbers are the harness's ``acc`` item for item. The highest is the prediction (ties: the
    earlier letter, like ``numpy.argmax``). One forward pass per question: the continuations share
    every token but the letter (:func:`answer_tokens`).

    Args:
        max_length: the longest input; a longer one loses its first tokens, as in the harness;
            default: :func:`context_length`.

    Returns:
        ``value`` = fraction correct with its Wilson 95 % interval in ``ci95``; ``chance`` = mean of
        ``1 / len(choices)``; ``items``: each question's record (prompt hash, the choices'
        log-likelihoods, choice, answer, exemplars used ``shots`` and ``tokens_cut``); ``details``:
        the protocol, the exemplars used, how many questions got fewer than ``num_shots`` or were
        cut, the predicted-letter counts and, with subjects, the accuracy per subject and its mean
        over subjects (MMLU as QLoRA and VeLoRA report it) beside the mean over questions (``value``).

    Raises:
        ValueError: no questions, or a tokenizer that cannot score answer letters.
    """
    if not questions:
        raise ValueError("no questions to evaluate")
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    suffix, letter_ids = answer_tokens(tokenizer, max(len(q.choices) for q in questions))
    if max_length is None:
        max_length = context_length(model)
    if max_length is not None and max_length <= len(suffix):
        raise ValueError(f"max_length {max_length} leaves no room for a prompt")
    chosen_shots = [select_shots(shots, q, num_shots) for q in questions]
    texts = [build_kshot_prompt(chosen, q) for chosen, q in zip(chosen_shots, questions, strict=True)]
    encoded = [encode_mc_prompt(tokenizer, text, suffix, max_length) for text in texts]
    prompts = [ids for ids, _ in encoded]
    # Longest first, so each batch pads to similar lengths; scores go back to question order.
    order = sorted(range(len(prompts)), key=lambda i: -len(prompts[i]))
    lls: list[list[float]] = [[] for _ in prompts]
    device = _device(model)
    n_suffix = len(suffix)
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
            # The positions that predict the suffix tokens and then the letter: (B, n_suffix + 1).
            positions = (lengths - 1 - n_suffix)[:, None] + torch.arange(n_suffix + 1)
            picked = logits[torch.arange(len(rows))[:, None], positions.to(logits.device)]
            logprobs = F.log_softmax(picked.float(), dim=-1).cpu()  # (B, n_suffix + 1, V)
            common = logprobs[:, torch.arange(n_suffix), torch.tensor(suffix, dtype=torch.long)].double()
            common = common.sum(1) if n_suffix else torch.zeros(len(rows), dtype=torch.float64)
            letters = logprobs[:, n_suffix, letter_ids].double()  # (B, num_letters)
            for row, i in enumerate(rows):
                k = len(questions[i].choices)
                lls[i] = [float(common[row] + letters[row, j]) for j in range(k)]
    predictions = [max(range(len(ll)), key=ll.__getitem__) for ll in lls]
    correct = [p == q.answer for p, q in zip(predictions, questions, strict=True)]
    shots_used = [len(chosen) for chosen in chosen_shots]
    cut = [tokens for _, tokens in encoded]
    details: dict[str, object] = {
        "protocol": (
            "lm-evaluation-harness mmlu template (subject header, 'Answer:', choices ' A'…), "
            "exemplars: the first num_shots of the question's subject; acc = argmax of the "
            "continuations' log-likelihoods; bos as the tokenizer adds it; over-long inputs lose "
            "their first tokens (the harness's left truncation)"
        ),
        "num_shots": num_shots,
        "bos_added": tokenizer.adds_bos,
        "max_length": max_length,
        "letter_token_ids": letter_ids,
        "suffix_token_ids": suffix,
        "shots_used": {
            "min": min(shots_used),
            "max": max(shots_used),
            "mean": sum(shots_used) / len(shots_used),
        },
        "questions_with_fewer_shots": sum(n < num_shots for n in shots_used),
        "questions_cut": sum(c > 0 for c in cut),
        "mean_prompt_tokens": sum(map(len, prompts)) / len(prompts),
        "predicted_letters": {LETTERS[k]: n for k, n in sorted(Counter(predictions).items())},
        "item_columns": {"shots": "exemplars in the prompt", "tokens_cut": "tokens cut from its start"},
    }
    details.update(subject_means(questions, correct))
    return EvalResult(
        metric="mc_accuracy",
        value=sum(correct) / len(questions),
        ci95=wilson(sum(correct), len(questions)),
        chance=sum(1 / len(q.choices) for q in questions) / len(questions),
        num_examples=len(questions),
        details=details,
        items=ItemRecords(
            prompt_hash=[prompt_hash(text) for text in texts],
            loglikelihoods=[[round(v, 6) for v in ll] for ll in lls],
            choice=predictions,
            answer=[q.answer for q in questions],
            correct=correct,
            extra={"shots": shots_used, "tokens_cut": cut},
        ),
    )


def subject_means(questions: Sequence[MCQuestion], correct: Sequence[bool]) -> dict[str, object]:
    """For questions with subjects: the accuracy of each subject with its Wilson interval and the
    mean over subjects (each subject weighs the same: QLoRA's and VeLoRA's MMLU number), beside
    the mean over questions that ``value`` holds (the harness's ``mmlu`` group number)."""
    subjects = sorted({q.subject for q in questions if q.subject})
    if not subjects:
        return {}
    by_subject = {}
    for subject in subjects:
        hits = [c for c, q in zip(correct, questions, strict=True) if q.subject == subject]
        by_subject[subject] = {
            "acc": sum(hits) / len(hits),
            "n": len(hits),
            "ci95": wilson(sum(hits), len(hits)),
        }
    return {
        "by_subject": by_subject,
        "mean_over_subjects": sum(s["acc"] for s in by_subject.values()) / len(by_subject),
        "mean_over_questions": sum(correct) / len(correct),
    }
