"""Standard benchmarks (MMLU, HellaSwag, ARC, GSM8K, …) through lm-evaluation-harness, on the trained
model in memory.

The model the run trained is wrapped, as it is, in the harness's ``HFLM`` with the ``transformers``
tokenizer that encodes the run's own ids (``Tokenizer.hf_tokenizer``), and scored by
``lm_eval.simple_evaluate``: the harness's prompts, few-shot sampling, truncation and metrics, so
the numbers are the ones papers report from the same protocol. LoRA adapters are not merged: peft
applies them in each forward (a 4-bit base could not take them back losslessly), which gives the
same outputs as a merged model up to rounding. VeLoRA layers run their plain forward in eval mode
(they change only what training keeps for backward), so there is nothing of theirs to merge.

The result records the harness's version and each task's version and shot count, every task's
accuracy with its Wilson interval, for a group (``mmlu``) both the mean over questions (the
harness's group number) and the mean over its subtasks (QLoRA's and VeLoRA's MMLU), and each
multiple-choice item's record.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from typing import Any

from torch import nn

from velora_core.bench.evaluate.causal_lm import _device, _evaluating, context_length
from velora_core.contract.hashing import content_hash, short_digest
from velora_core.contract.intervals import wilson
from velora_core.contract.result import EvalResult, ItemRecords
from velora_core.models.tokenizers import Tokenizer

ADAPTERS = (
    "not merged: peft applies LoRA adapters in each forward; VeLoRA layers run their plain forward "
    "in eval mode"
)


def _leaves(name: str, group_subtasks: Mapping[str, Sequence[str]], samples: Mapping[str, Any]) -> list[str]:
    """The tasks with samples under ``name`` (itself, if it is a task), in the harness's order."""
    if name in samples:
        return [name]
    return [leaf for sub in group_subtasks.get(name, []) for leaf in _leaves(sub, group_subtasks, samples)]


def _task_records(samples: Sequence[Mapping[str, Any]]) -> ItemRecords | None:
    """A multiple-choice task's samples as item records (None for a generation task)."""
    rows = sorted(samples, key=lambda s: s["doc_id"])
    if not rows or not all(isinstance(r, (list, tuple)) for r in rows[0]["filtered_resps"]):
        return None
    records = ItemRecords()
    for sample in rows:
        lls = [float(r[0]) for r in sample["filtered_resps"]]
        if "acc_mutual_info" in sample.get("metrics", []):
            lls = lls[: len(lls) // 2]  # the second half: the harness's unconditional rows
        context = sample["arguments"][0][0]
        records.prompt_hash.append(short_digest(hashlib.sha256(context.encode())))
        records.loglikelihoods.append([round(v, 6) for v in lls])
        records.choice.append(max(range(len(lls)), key=lls.__getitem__))
        target = sample["target"]
        records.answer.append(int(target) if isinstance(target, int) else -1)
        records.correct.append(bool(sample.get("acc", 0.0)))
    return records


def _metrics(entry: Mapping[str, Any]) -> dict[str, float]:
    """The harness's numeric metrics of one task or group (``acc,none`` -> ``acc``), stderr left out."""
    out = {}
    for key, value in entry.items():
        metric, _, _ = key.partition(",")
        if "," in key and "stderr" not in metric and isinstance(value, (int, float)):
            out[metric] = float(value)
    return out


def _summary(
    name: str, output: Mapping[str, Any], records: Mapping[str, ItemRecords | None]
) -> tuple[dict[str, Any], int, int]:
    """One requested task or group: its metrics, version, shots, and (k correct, n items) of ``acc``."""
    leaves = _leaves(name, output.get("group_subtasks", {}), output["samples"])
    entry: dict[str, Any] = {
        **_metrics(output["results"].get(name, {})),
        "version": output["versions"].get(name),
        "num_fewshot": output["n-shot"].get(name),
    }
    hits = [sum(records[leaf].correct) if records[leaf] else None for leaf in leaves]
    sizes = [len(records[leaf]) if records[leaf] else 0 for leaf in leaves]
    if None in hits or not sum(sizes):
        return entry, 0, 0
    k, n = sum(hits), sum(sizes)
    entry.update(n=n, mean_over_questions=k / n, ci95=wilson(k, n))
    if len(leaves) > 1:
        entry["subtasks"] = {
            leaf: {"acc": h / s, "n": s, "ci95": wilson(h, s), "version": output["versions"].get(leaf)}
            for leaf, h, s in zip(leaves, hits, sizes, strict=True)
        }
        entry["mean_over_subtasks"] = sum(h / s for h, s in zip(hits, sizes, strict=True)) / len(leaves)
    return entry, k, n


def harness_evaluate(
    model: nn.Module,
    tokenizer: Tokenizer,
    tasks: Sequence[str],
    *,
    num_fewshot: int | None,
    limit: int | None,
    include_path: str | None,
    batch_size: int,
    max_length: int | None = None,
) -> EvalResult:
    """Score ``model`` on lm-evaluation-harness ``tasks`` (see the module docstring).

    Args:
        tasks: task or group names (``mmlu``, ``hellaswag``, ``arc_easy``, …, or tasks defined in
            ``include_path``); the first is the headline.
        num_fewshot: exemplars per question; None keeps each task's own default.
        limit: at most this many items of each task (the first ones, as the harness takes them);
            None scores them all.
        include_path: a folder of the harness's task YAML files (local tasks, local data).
        max_length: the longest input; default: :func:`context_length`, as the harness reads it.

    Returns:
        ``value``: the first task's accuracy over all its items (``acc``) with its Wilson interval;
        ``details['harness']``: the harness's and each task's version, shots, every metric, per group
        the mean over questions and over subtasks; ``items``: the first task's item records.

    Raises:
        ValueError: an unknown task, or a first task without a multiple-choice accuracy.
    """
    import lm_eval
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    manager = TaskManager(include_path=include_path)
    unknown = [t for t in tasks if t not in manager.all_tasks]
    if unknown:
        raise ValueError(f"lm-evaluation-harness has no task {unknown}; see `lm-eval ls tasks`")
    with _evaluating(model):
        lm = HFLM(
            pretrained=model,
            tokenizer=tokenizer.hf_tokenizer(),
            batch_size=batch_size,
            max_length=max_length or context_length(model),
            device=str(_device(model)),
        )
        output = lm_eval.simple_evaluate(
            model=lm,
            tasks=list(tasks),
            num_fewshot=num_fewshot,
            limit=limit,
            task_manager=manager,
            log_samples=True,
            bootstrap_iters=0,
        )
    records = {name: _task_records(samples) for name, samples in output["samples"].items()}
    summaries = {}
    for name in tasks:
        summaries[name], k, n = _summary(name, output, records)
        if name == tasks[0]:
            headline_k, headline_n = k, n
    if not headline_n:
        raise ValueError(
            f"harness task {tasks[0]!r} has no multiple-choice accuracy to report as the headline"
        )
    first = _leaves(tasks[0], output.get("group_subtasks", {}), output["samples"])
    items = ItemRecords(extra={"task": []})
    for leaf in first:
        part = records[leaf]
        items.prompt_hash += part.prompt_hash
        items.loglikelihoods += part.loglikelihoods
        items.choice += part.choice
        items.answer += part.answer
        items.correct += part.correct
        items.extra["task"] += [leaf] * len(part)
    configs = output.get("configs", {})
    return EvalResult(
        metric="mc_accuracy",
        value=headline_k / headline_n,
        ci95=wilson(headline_k, headline_n),
        chance=sum(1 / len(ll) for ll in items.loglikelihoods) / len(items),
        num_examples=headline_n,
        details={
            "protocol": "lm-evaluation-harness simple_evaluate on the trained model in memory (HFLM)",
            "headline": f"{tasks[0]}: acc over all its items (the harness's number)",
            "adapters": ADAPTERS,
            "harness": {
                "lm_eval_version": output.get("lm_eval_version") or lm_eval.__version__,
                "tasks": summaries,
                "versions": output.get("versions", {}),
                "n_shot": output.get("n-shot", {}),
                "limit": limit,
                "max_length": output.get("max_length"),
                "task_configs_hash": content_hash(json.loads(json.dumps(configs, default=str))),
            },
            "item_columns": {"task": "the harness task of the item"},
        },
        items=items,
    )
