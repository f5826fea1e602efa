"""Continuation-choice accuracy (HellaSwag's form): which ending a causal LM finds most likely after a context.

Each ending is scored by its log-likelihood after the context minus its log-likelihood after a
neutral prefix (a line break): the domain-conditional PMI of Holtzman et al. 2021 ("Surface Form
Competition"). Plain log-likelihood ranks short and common lines first whatever the context; the
difference measures how much the context raised each ending, which is what the task asks. The
plain-likelihood and per-token (HellaSwag's ``acc_norm``) accuracies are recorded beside it.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn
from transformers import DynamicCache

from velora_core.bench.data.next_line import ContinuationItem
from velora_core.bench.evaluate.causal_lm import _device, _evaluating
from velora_core.contract.intervals import wilson
from velora_core.contract.result import EvalResult
from velora_core.models.tokenizers import Tokenizer

#: What an ending is scored against without its context: the start of a line.
NEUTRAL_PREFIX = "\n"


def _loglikelihoods(
    model: nn.Module, rows: Sequence[tuple[list[int], list[int]]], pad_id: int, batch_size: int
) -> list[float]:
    """``Σ log p(ending | prefix)`` for each ``(prefix ids, ending ids)`` row, in row order."""
    out = [0.0] * len(rows)
    order = sorted(range(len(rows)), key=lambda i: -(len(rows[i][0]) + len(rows[i][1])))
    device = _device(model)
    for start in range(0, len(order), batch_size):
        chosen = order[start : start + batch_size]
        length = max(len(rows[i][0]) + len(rows[i][1]) for i in chosen)
        input_ids = torch.full((len(chosen), length), pad_id, dtype=torch.long)
        mask = torch.zeros_like(input_ids)
        for row, i in enumerate(chosen):
            ids = rows[i][0] + rows[i][1]
            input_ids[row, : len(ids)] = torch.tensor(ids)
            mask[row, : len(ids)] = 1
        logits = model(input_ids=input_ids.to(device), attention_mask=mask.to(device)).logits  # (B, L, V)
        logprobs = F.log_softmax(logits.float(), dim=-1).cpu()
        for row, i in enumerate(chosen):
            prefix, ending = rows[i]
            # Position t predicts token t + 1: the ending's tokens are predicted from len(prefix) - 1 on.
            positions = torch.arange(len(prefix) - 1, len(prefix) + len(ending) - 1)
            out[i] = float(logprobs[row, positions, torch.tensor(ending)].double().sum())
    return out


def _shared_context_loglikelihoods(
    model: nn.Module,
    items: Sequence[tuple[list[int], list[list[int]]]],
    pad_id: int,
    batch_size: int,
) -> list[float]:
    """What :func:`_loglikelihoods` gives for every ``(context, ending)`` pair, each context run once.

    For ``(context ids, [ending ids, ...])`` items: one forward pass over ``batch_size`` contexts
    keeps their keys and values (``use_cache``); the endings then run on that cache, repeated once
    per ending. Each context runs once instead of once per ending: for stdlib-next-line (contexts of
    61 tokens, four endings of 42 on average) 229 tokens an item instead of 412. Scores in item order, then ending order.
    """
    # Items run in order of their longest ending, so a batch's endings are padded to similar widths
    # (endings are most of the tokens: 4 per context); scores are put back in item order.
    order = sorted(range(len(items)), key=lambda i: (max(map(len, items[i][1])), len(items[i][0])))
    scores: list[list[float]] = [[] for _ in items]
    device = _device(model)
    for start in range(0, len(order), batch_size):
        chosen = order[start : start + batch_size]
        chunk = [items[i] for i in chosen]
        counts = torch.tensor([len(endings) for _, endings in chunk])
        lengths = torch.tensor([len(context) for context, _ in chunk])
        context_ids = torch.full((len(chunk), int(lengths.max())), pad_id, dtype=torch.long)
        for row, (context, _) in enumerate(chunk):
            context_ids[row, : len(context)] = torch.tensor(context)
        context_mask = (torch.arange(context_ids.shape[1]) < lengths[:, None]).long()  # (B, Lc)
        # An explicit DynamicCache: transformers 4.x would otherwise hand back tuples.
        cache = DynamicCache()
        first = model(
            input_ids=context_ids.to(device),
            attention_mask=context_mask.to(device),
            past_key_values=cache,
            use_cache=True,
        )
        # The context's last real token predicts each ending's first token.
        last = F.log_softmax(
            first.logits[torch.arange(len(chunk)), (lengths - 1).to(first.logits.device)].float(), -1
        )
        if not bool((counts == counts[0]).all()):
            raise ValueError("items of one batch must have the same number of endings")
        cache = first.past_key_values or cache
        cache.batch_repeat_interleave(int(counts[0]))  # (B, ...) -> (B·k, ...), each context k times
        endings = [ending for _, item_endings in chunk for ending in item_endings]
        width = max(len(e) for e in endings)
        ending_ids = torch.full((len(endings), width), pad_id, dtype=torch.long)
        for row, ending in enumerate(endings):
            ending_ids[row, : len(ending)] = torch.tensor(ending)
        ending_mask = (torch.arange(width) < torch.tensor([len(e) for e in endings])[:, None]).long()
        rows_lengths = lengths.repeat_interleave(counts)  # (B·k,)
        mask = torch.cat([context_mask.repeat_interleave(counts, dim=0), ending_mask], dim=1)
        positions = rows_lengths[:, None] + torch.arange(width)  # the endings continue each context
        logits = model(
            input_ids=ending_ids.to(device),
            attention_mask=mask.to(device),
            position_ids=positions.to(device),
            past_key_values=cache,
            use_cache=False,
        ).logits  # (B·k, Le, V)
        logprobs = F.log_softmax(logits.float(), dim=-1).cpu()
        last = last.cpu().repeat_interleave(counts, dim=0)  # (B·k, V)
        owners = [i for i, (_, item_endings) in zip(chosen, chunk, strict=True) for _ in item_endings]
        for row, ending in enumerate(endings):
            total = last[row, ending[0]].double()
            if len(ending) > 1:
                total += logprobs[row, torch.arange(len(ending) - 1), torch.tensor(ending[1:])].double().sum()
            scores[owners[row]].append(float(total))
    return [score for item_scores in scores for score in item_scores]


def _caches_keys_and_values(model: nn.Module) -> bool:
    """Whether the model is a Hugging Face causal LM that can keep a context's keys and values."""
    return hasattr(getattr(model, "config", None), "use_cache")


def continuation_accuracy(
    model: nn.Module,
    tokenizer: Tokenizer,
    items: Sequence[ContinuationItem],
    batch_size: int,
    max_length: int | None = None,
) -> EvalResult:
    """The share of items whose true ending scores highest (see the module docstring); ties go first.

    Args:
        max_length: the longest ``context + ending`` in tokens; default: the model's
            ``config.max_position_embeddings`` if it has one.

    Returns:
        ``value`` = fraction correct with its Wilson 95 % interval in ``ci95``; ``chance`` = mean of
        ``1 / len(endings)``; ``details``: the scoring, the accuracies by plain and per-token
        log-likelihood, the mean tokens scored and how often each position was chosen.

    Raises:
        ValueError: no items, or an item longer than ``max_length`` (it is never cut).
    """
    if not items:
        raise ValueError("no items to evaluate")
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    if max_length is None:
        max_length = getattr(getattr(model, "config", None), "max_position_embeddings", None)
    neutral = tokenizer.encode(NEUTRAL_PREFIX, add_bos=True)
    conditional: list[tuple[list[int], list[int]]] = []
    endings: dict[str, list[int]] = {}
    for item in items:
        context = tokenizer.encode(item.context, add_bos=True)
        for ending in item.endings:
            ids = endings.setdefault(ending, tokenizer.encode(ending))
            if max_length is not None and len(context) + len(ids) > max_length:
                raise ValueError(
                    f"an item of {len(context) + len(ids)} tokens is longer than the model's "
                    f"{max_length} positions; it would have to be cut (use shorter contexts)"
                )
            conditional.append((context, ids))
    unique = list(endings)
    with _evaluating(model):
        if _caches_keys_and_values(model) and len({len(item.endings) for item in items}) == 1:
            grouped, position = [], 0
            for item in items:
                rows = conditional[position : position + len(item.endings)]
                grouped.append((rows[0][0], [ending for _, ending in rows]))
                position += len(item.endings)
            scored = _shared_context_loglikelihoods(model, grouped, tokenizer.pad_token_id, batch_size)
        else:
            scored = _loglikelihoods(model, conditional, tokenizer.pad_token_id, batch_size)
        unconditional = dict(
            zip(
                unique,
                _loglikelihoods(
                    model, [(neutral, endings[e]) for e in unique], tokenizer.pad_token_id, batch_size
                ),
                strict=True,
            )
        )
    correct = {"pmi": 0, "loglikelihood": 0, "per_token": 0}
    chosen_positions: Counter[int] = Counter()
    position = 0
    for item in items:
        k = len(item.endings)
        own = scored[position : position + k]
        position += k
        scores = {
            "pmi": [s - unconditional[e] for s, e in zip(own, item.endings, strict=True)],
            "loglikelihood": own,
            "per_token": [s / max(1, len(endings[e])) for s, e in zip(own, item.endings, strict=True)],
        }
        for name, values in scores.items():
            best = max(range(k), key=values.__getitem__)
            correct[name] += best == item.answer
            if name == "pmi":
                chosen_positions[best] += 1
    n = len(items)
    return EvalResult(
        metric="mc_accuracy",
        value=correct["pmi"] / n,
        ci95=wilson(correct["pmi"], n),
        chance=sum(1 / len(item.endings) for item in items) / n,
        num_examples=n,
        details={
            "scoring": "log p(ending | context) - log p(ending | line start) (domain-conditional PMI)",
            "correct": correct["pmi"],
            "accuracy_by_loglikelihood": correct["loglikelihood"] / n,
            "accuracy_by_per_token_loglikelihood": correct["per_token"] / n,
            "mean_tokens_scored": sum(len(c) + len(e) for c, e in conditional) / len(conditional),
            "predicted_positions": {str(k): v for k, v in sorted(chosen_positions.items())},
        },
    )
