"""Continuation-choice accuracy (HellaSwag's form): which ending a causal LM finds most likely after a context.

The headline scores each ending by its log-likelihood after the context minus its log-likelihood
after a neutral prefix, bos and a line break: the domain-conditional PMI of Holtzman et al. 2021
("Surface Form Competition"). Plain log-likelihood ranks short and common lines first whatever the
context; the difference measures how much the context raised each ending, which is what the task
asks, and the line break puts the ending where it stands in the context, at the start of a line.

Beside it, exactly as lm-evaluation-harness defines them for a ``multiple_choice`` task whose
choices are the endings (``target_delimiter: ""``): ``acc`` (argmax of the log-likelihoods, the
context's trailing whitespace moved into each continuation as the harness's ``_encode_pair`` does),
``acc_norm`` (of the log-likelihoods over each ending's length in characters) and
``acc_mutual_info`` (minus the ending's log-likelihood after the harness's prefix token alone: bos,
else eos). The harness's ``acc_mutual_info`` scores the ending as the first line of a document,
where an indented line is improbable whatever the context, so it is not the headline.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn
from transformers import DynamicCache

from velora_core.bench.data.next_line import ContinuationItem
from velora_core.bench.evaluate.causal_lm import _device, _evaluating, context_length
from velora_core.contract.hashing import prompt_hash
from velora_core.contract.intervals import wilson
from velora_core.contract.result import EvalResult, ItemRecords
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


def harness_pair(tokenizer: Tokenizer, context: str, continuation: str) -> tuple[list[int], list[int]]:
    """``(context ids, continuation ids)`` as lm-evaluation-harness's ``_encode_pair`` makes them for a
    causal LM: trailing whitespace moves from the context to the continuation, both texts are encoded
    as the tokenizer encodes a text, and the continuation is what the whole adds to the context."""
    spaces = len(context) - len(context.rstrip())
    if spaces:
        context, continuation = context[:-spaces], context[-spaces:] + continuation
    whole = tokenizer.encode(context + continuation, add_bos=tokenizer.adds_bos)
    context_ids = tokenizer.encode(context, add_bos=tokenizer.adds_bos)
    return context_ids, whole[len(context_ids) :]


def harness_unconditional(tokenizer: Tokenizer, continuation: str) -> tuple[list[int], list[int]]:
    """The harness's row for an empty context: its prefix token (bos, else eos), then the continuation
    (when the continuation starts with that token, the token is its own context)."""
    ids = tokenizer.encode(continuation)
    prefix = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
    return ([prefix], ids) if ids[0] != prefix else (ids[:1], ids[1:])


def _argmax(values: Sequence[float]) -> int:
    return max(range(len(values)), key=values.__getitem__)  # the first of equal values, like numpy


def continuation_accuracy(
    model: nn.Module,
    tokenizer: Tokenizer,
    items: Sequence[ContinuationItem],
    batch_size: int,
    max_length: int | None = None,
) -> EvalResult:
    """The share of items whose true ending scores highest by the headline (see the module docstring).

    Args:
        max_length: the longest ``context + ending`` in tokens; default: :func:`context_length`.

    Returns:
        ``value`` = the headline's fraction correct with its Wilson 95 % interval in ``ci95``;
        ``chance`` = mean of ``1 / len(endings)``; ``details``: the headline and why, ``acc``,
        ``acc_norm`` and ``acc_mutual_info`` with their Wilson intervals, the mean tokens scored and
        how often each position was chosen; ``items``: each item's record (the harness's
        log-likelihoods, and in ``extra`` those after bos and after the line start, each metric's pick).

    Raises:
        ValueError: no items, or an item longer than ``max_length`` (it is never cut).
    """
    if not items:
        raise ValueError("no items to evaluate")
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    if max_length is None:
        max_length = context_length(model)
    neutral = tokenizer.encode(NEUTRAL_PREFIX, add_bos=True)
    grouped: list[tuple[list[int], list[list[int]]]] = []
    for item in items:
        pairs = [harness_pair(tokenizer, item.context, ending) for ending in item.endings]
        for context, ids in pairs:
            if max_length is not None and len(context) + len(ids) > max_length + 1:
                raise ValueError(
                    f"an item of {len(context) + len(ids)} tokens is longer than the model's "
                    f"{max_length} positions; it would have to be cut (use shorter contexts)"
                )
        grouped.append((pairs[0][0], [ids for _, ids in pairs]))
    unique = list(dict.fromkeys(ending for item in items for ending in item.endings))
    line_rows = [(neutral, tokenizer.encode(e)) for e in unique]
    bos_rows = [harness_unconditional(tokenizer, e) for e in unique]
    pad = tokenizer.pad_token_id
    with _evaluating(model):
        if _caches_keys_and_values(model) and len({len(item.endings) for item in items}) == 1:
            scored = _shared_context_loglikelihoods(model, grouped, pad, batch_size)
        else:
            flat = [(context, ids) for context, endings in grouped for ids in endings]
            scored = _loglikelihoods(model, flat, pad, batch_size)
        unconditional = _loglikelihoods(model, line_rows + bos_rows, pad, batch_size)
    after_line = dict(zip(unique, unconditional[: len(unique)], strict=True))
    after_bos = dict(zip(unique, unconditional[len(unique) :], strict=True))
    names = ("pmi", "acc", "acc_norm", "acc_mutual_info")
    picks: dict[str, list[int]] = {name: [] for name in names}
    conditional: list[list[float]] = []
    position = 0
    for item in items:
        own = scored[position : position + len(item.endings)]
        position += len(item.endings)
        conditional.append(own)
        scores = {
            "pmi": [s - after_line[e] for s, e in zip(own, item.endings, strict=True)],
            "acc": own,
            "acc_norm": [s / len(e) for s, e in zip(own, item.endings, strict=True)],
            "acc_mutual_info": [s - after_bos[e] for s, e in zip(own, item.endings, strict=True)],
        }
        for name in names:
            picks[name].append(_argmax(scores[name]))
    n = len(items)
    hits = {name: sum(p == item.answer for p, item in zip(picks[name], items, strict=True)) for name in names}
    # ci95 as a list: details are stored as JSON, and a tuple would not read back equal
    harness = {name: {"value": hits[name] / n, "ci95": list(wilson(hits[name], n))} for name in names[1:]}
    tokens = [len(context) + len(ids) for context, endings in grouped for ids in endings]
    return EvalResult(
        metric="mc_accuracy",
        value=hits["pmi"] / n,
        ci95=wilson(hits["pmi"], n),
        chance=sum(1 / len(item.endings) for item in items) / n,
        num_examples=n,
        details={
            "scoring": "log p(ending | context) - log p(ending | bos, line start) (domain-conditional PMI)",
            "headline": (
                "pmi: the endings are lines of code, so each is scored against itself at the start of a "
                "line; the harness's acc_mutual_info scores it against the start of a document (bos alone), "
                "where an indented line is unlikely whatever the context"
            ),
            "correct": hits["pmi"],
            "harness_metrics": harness,
            "mean_tokens_scored": sum(tokens) / len(tokens),
            "predicted_positions": {str(k): v for k, v in sorted(Counter(picks["pmi"]).items())},
            "item_columns": {
                "loglikelihoods_bos": "each ending after bos alone (acc_mutual_info)",
                "loglikelihoods_line": "each ending after bos and a line break (the headline)",
                "acc_choice, acc_norm_choice, acc_mutual_info_choice": "each harness metric's pick",
            },
        },
        items=ItemRecords(
            prompt_hash=[prompt_hash(item.context) for item in items],
            loglikelihoods=[[round(v, 6) for v in own] for own in conditional],
            choice=picks["pmi"],
            answer=[item.answer for item in items],
            correct=[p == item.answer for p, item in zip(picks["pmi"], items, strict=True)],
            extra={
                "loglikelihoods_bos": [[round(after_bos[e], 6) for e in item.endings] for item in items],
                "loglikelihoods_line": [[round(after_line[e], 6) for e in item.endings] for item in items],
                **{f"{name}_choice": picks[name] for name in names[1:]},
            },
        ),
    )
