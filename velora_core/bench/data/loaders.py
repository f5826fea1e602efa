"""The engine's entry points: a run's training examples and its evaluation data, from any source."""

from __future__ import annotations

import itertools
import json
import random
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from velora_core.bench.data.examples import (
    LMEvalData,
    MCEvalData,
    TrainData,
    fingerprint_examples,
    instruct_examples,
    lm_blocks,
    mc_examples,
)
from velora_core.bench.data.multiple_choice import MCQuestion, format_mc_question
from velora_core.bench.data.next_line import ContinuationEvalData, continuation_examples, stdlib_next_line
from velora_core.bench.data.records import (
    HUB_DATASETS,
    dataset_records,
    hub_records,
    peek_kind,
    record_question,
    record_text,
)
from velora_core.bench.data.sources import source_corpus, stdlib_documents
from velora_core.bench.data.stdlib_questions import stdlib_mc
from velora_core.contract.hashing import short_hash
from velora_core.contract.spec import DatasetSpec, EvalSpec
from velora_core.models.tokenizers import Tokenizer

#: Packed blocks of a text dataset when neither the spec nor the engine bounds them.
DEFAULT_MAX_BLOCKS = 16_384


def _limit(*bounds: int | None) -> int | None:
    given = [b for b in bounds if b is not None]
    return min(given) if given else None


def load_train_data(
    dataset_spec: DatasetSpec,
    tokenizer: Tokenizer,
    seq_len: int,
    seed: int,
    *,
    max_examples: int | None = None,
    dataset_paths: Mapping[str, str] | None = None,
) -> TrainData:
    """The training examples of a dataset.

    Args:
        dataset_spec: what to load. ``max_examples`` bounds the examples (packed blocks for text).
        tokenizer: the model's tokenizer.
        seq_len: tokens per packed block and the longest instruction/MC example.
        seed: chooses the ``stdlib-mc`` distractors (batch order is seeded by ``batches``).
        max_examples: a further bound from the engine (e.g. steps × batch): a stream is read no
            further than needed. Text without any bound stops at :data:`DEFAULT_MAX_BLOCKS` blocks.
        dataset_paths: overrides of :data:`HUB_DATASETS` ids, e.g. ``{"c4": "/data/c4"}``.

    Raises:
        ValueError: the dataset yields no example, or its records have no usable fields.
    """
    paths = dict(dataset_paths or {})
    limit = _limit(dataset_spec.max_examples, max_examples)
    header: dict[str, Any] = {
        "dataset": dataset_spec.model_dump(mode="json"),
        "tokenizer": tokenizer.fingerprint,
        "seq_len": seq_len,
    }
    if dataset_spec.source == "builtin" and dataset_spec.name == "stdlib-corpus":
        corpus = source_corpus()
        used: list[str] = []  # files lm_blocks actually read (it stops at the block bound)
        texts = (used.append(f.path) or f.text for f in stdlib_documents("train"))
        blocks = lm_blocks(texts, tokenizer, seq_len, limit or DEFAULT_MAX_BLOCKS)
        examples, kind = [(row, row) for row in blocks], "lm"
        header["source"] = corpus.fingerprint
        where = f"the Python standard library ({len(used)} train files read, sources {corpus.fingerprint})"
    elif dataset_spec.source == "builtin" and dataset_spec.name == "stdlib-mc":
        questions = stdlib_mc(seed)["train"][:limit]
        examples, kind = mc_examples(questions, tokenizer, seq_len), "mc"
        header["source"], header["seed"] = source_corpus().fingerprint, seed
        where = "stdlib-mc train (docstring -> function name, 4 choices)"
    elif dataset_spec.source == "builtin" and dataset_spec.name == "stdlib-next-line":
        items = stdlib_next_line("train", seed)[:limit]
        examples, kind = continuation_examples(items, tokenizer, seq_len), "instruct"
        header["source"], header["seed"] = source_corpus().fingerprint, seed
        where = "stdlib-next-line train (context -> true next line, loss on the line)"
    else:
        records, where = dataset_records(dataset_spec, "train", paths)
        kind, records = peek_kind(dataset_spec, records)
        if kind == "lm":
            texts = (r[dataset_spec.text_field] for r in records)
            examples = [
                (row, row) for row in lm_blocks(texts, tokenizer, seq_len, limit or DEFAULT_MAX_BLOCKS)
            ]
        elif kind == "instruct":
            examples = instruct_examples(records, tokenizer, seq_len, limit)
        else:
            examples = mc_examples(map(record_question, itertools.islice(records, limit)), tokenizer, seq_len)
    if not examples:
        raise ValueError(f"dataset {dataset_spec.name!r} gave no training example of up to {seq_len} tokens")
    tokens = sum(len(ids) for ids, _ in examples)
    description = f"{dataset_spec.name}: {len(examples)} {kind} examples, {tokens} tokens, from {where}"
    return TrainData(
        examples, tokenizer.pad_token_id, kind, fingerprint_examples(header, examples), description
    )


def _sample_indices(size: int, count: int, seed: int) -> list[int]:
    """A seeded sample of ``count`` of ``range(size)``, in order (all of them if fewer)."""
    if size <= count:
        return list(range(size))
    return sorted(random.Random(f"eval:{seed}").sample(range(size), count))


def _sample(items: Sequence[MCQuestion], count: int, seed: int) -> list[MCQuestion]:
    """A seeded sample of ``count`` items in their original order (all of them if fewer)."""
    return [items[i] for i in _sample_indices(len(items), count, seed)]


def load_eval_data(
    eval_spec: EvalSpec,
    train_dataset_spec: DatasetSpec,
    tokenizer: Tokenizer,
    seq_len: int,
    seed: int,
    *,
    dataset_paths: Mapping[str, str] | None = None,
) -> LMEvalData | MCEvalData | ContinuationEvalData | None:
    """The evaluation data of a run (None for ``metric='none'``).

    ``perplexity``: up to ``eval_spec.max_examples`` blocks of ``seq_len`` tokens of held-out text
    (``stdlib-corpus`` validation files, C4 validation, a hub ``eval_split``, or held-out records).
    ``mc_accuracy``: the exemplars and ``max_examples`` test questions (a sample that does not
    depend on the seed; all of them if fewer): ``stdlib-mc`` dev/test, MMLU dev/test (``cais/mmlu``
    'all', or the folder ``dataset_paths['mmlu']``), or for hub/local multiple-choice records,
    ``split`` (exemplars: each question gets the first ``num_shots`` of its own ``subject``) and
    ``eval_split`` (questions); a local folder laid out like ``cais/mmlu`` with ``config='all'``,
    ``split='dev'``, ``eval_split='test'`` is scored exactly as the built-in ``mmlu``.

    Raises:
        ValueError: ``mc_accuracy`` on a dataset that is not multiple choice, or no held-out block.
    """
    if eval_spec.metric == "none":
        return None
    spec = eval_spec.dataset or train_dataset_spec
    paths = dict(dataset_paths or {})
    header: dict[str, Any] = {
        "eval": eval_spec.model_dump(mode="json", exclude={"batch_size"}),
        "dataset": spec.model_dump(mode="json"),
        "tokenizer": tokenizer.fingerprint,
        "seq_len": seq_len,
        "seed": seed,
    }
    if eval_spec.metric == "perplexity":
        if spec.source == "builtin" and spec.name == "stdlib-corpus":
            texts: Iterable[str] = (f.text for f in source_corpus().split("validation"))
            header["source"], where = source_corpus().fingerprint, "stdlib-corpus validation files"
        elif spec.source == "builtin" and spec.name == "stdlib-mc":
            texts = (format_mc_question(q, with_answer=True) for q in stdlib_mc(seed)["test"])
            where = "stdlib-mc test questions with answers"
        elif spec.source == "builtin" and spec.name == "stdlib-next-line":
            texts = (i.context + i.endings[i.answer] for i in stdlib_next_line("test", seed))
            where = "stdlib-next-line test contexts with their true line"
        else:
            records, where = dataset_records(spec, "eval", paths)
            kind, records = peek_kind(spec, records)
            texts = (record_text(r, kind, spec.text_field) for r in records)
        blocks = lm_blocks(texts, tokenizer, seq_len, eval_spec.max_examples)
        if len(blocks) == 0:
            raise ValueError(f"{where}: not enough evaluation text for one block of {seq_len} tokens")
        fingerprint = fingerprint_examples(header, [(blocks, blocks[:0])])
        return LMEvalData(blocks, fingerprint, f"{where}: {len(blocks)} blocks x {seq_len} tokens")

    if spec.source == "builtin" and spec.name == "stdlib-next-line":
        # The same test items for every seed (the seed changes the model, not the exam).
        items = stdlib_next_line("test")
        chosen = [items[i] for i in _sample_indices(len(items), eval_spec.max_examples, 0)]
        content = json.dumps([[i.context, i.endings, i.answer] for i in chosen])
        fingerprint = short_hash(json.dumps(header | {"source": source_corpus().fingerprint}), content)
        description = f"stdlib-next-line test (held-out files): {len(chosen)} of {len(items)} items"
        return ContinuationEvalData(chosen, fingerprint, description)
    if spec.source == "builtin" and spec.name == "stdlib-mc":
        task = stdlib_mc(seed)
        shots, questions, where = list(task["dev"]), list(task["test"]), "stdlib-mc dev/test"
        header["source"] = source_corpus().fingerprint
    elif spec.source == "builtin" and spec.name == "mmlu":
        hub_id, default_config = HUB_DATASETS["mmlu"]
        path, config = paths.get("mmlu", hub_id), spec.config or default_config
        shots = [record_question(r) for r in hub_records(path, config, "dev")]
        questions = [record_question(r) for r in hub_records(path, config, "test")]
        where = f"{path} ({config}) dev/test"
    elif spec.source in ("hub", "local"):
        shot_records, _ = dataset_records(spec, "train", paths)
        question_records, where = dataset_records(spec, "eval", paths)
        kind, question_records = peek_kind(spec, question_records)
        if kind != "mc":
            raise ValueError(f"mc_accuracy needs multiple-choice records; {spec.name!r} holds {kind!r} data")
        # Every exemplar record: each question takes the first few of its own subject (select_shots).
        shots = [record_question(r) for r in shot_records]
        questions = [record_question(r) for r in question_records]
    else:
        raise ValueError(f"mc_accuracy needs a multiple-choice dataset (stdlib-mc, mmlu); got {spec.name!r}")
    # The same questions for every seed and method (the seed changes the model, not the exam), so
    # two runs' per-item records pair up.
    questions = _sample(questions, eval_spec.max_examples, 0)
    if not questions:
        raise ValueError(f"{where}: no test questions")
    content = json.dumps([[q.question, q.choices, q.answer, q.subject] for q in shots + questions])
    fingerprint = short_hash(json.dumps(header, sort_keys=True, default=str), content)
    description = f"{where}: {len(questions)} questions, {len(shots)} exemplars available"
    return MCEvalData(shots, questions, fingerprint, description)
