"""Tokenised examples (packed text, masked instructions, multiple choice) and the shapes the engine reads."""

from __future__ import annotations

import hashlib
import itertools
import json
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor

from velora_core.bench.data.multiple_choice import (
    MCQuestion,
    answer_tokens,
    encode_mc_prompt,
    format_mc_question,
)
from velora_core.contract.hashing import short_digest, short_hash
from velora_core.models.tokenizers import Tokenizer

#: Label of positions that take no loss (PyTorch's cross-entropy ``ignore_index``).
IGNORE_INDEX = -100

ALPACA_PROMPT_WITH_INPUT = (
    "Below is an instruction that describes a task, paired with an input that provides further context. "
    "Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n"
)
ALPACA_PROMPT_NO_INPUT = (
    "Below is an instruction that describes a task. "
    "Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Response:\n"
)

Example = tuple[Tensor, Tensor]  # (input_ids, labels): 1-D LongTensors of equal length
DataKind = Literal["lm", "instruct", "mc"]  # packed text, prompt-masked instructions, multiple choice


def lm_blocks(
    texts: Iterable[str], tokenizer: Tokenizer, seq_len: int, max_blocks: int | None = None
) -> Tensor:
    """Pack documents into blocks: ``doc₁ eos doc₂ eos …`` cut every ``seq_len`` tokens.

    Reads ``texts`` only until ``max_blocks`` blocks are full (streams stay unread beyond that); the
    last partial block is dropped. Returns a LongTensor ``(N, seq_len)``, ``N <= max_blocks``.
    """
    if seq_len < 2:
        raise ValueError(f"seq_len must be at least 2, got {seq_len}")
    needed = None if max_blocks is None else max_blocks * seq_len
    ids: list[int] = []
    for text in texts if needed != 0 else ():
        ids += tokenizer.encode(text, add_eos=True)
        if needed is not None and len(ids) >= needed:
            break
    n = len(ids) // seq_len if max_blocks is None else min(len(ids) // seq_len, max_blocks)
    return torch.tensor(ids[: n * seq_len], dtype=torch.long).view(n, seq_len)


def alpaca_prompt(instruction: str, input_text: str = "") -> str:
    """Stanford Alpaca's prompt, with or without the input section."""
    if input_text.strip():
        return ALPACA_PROMPT_WITH_INPUT.format(instruction=instruction, input=input_text)
    return ALPACA_PROMPT_NO_INPUT.format(instruction=instruction)


def instruct_examples(
    records: Iterable[Mapping[str, Any]], tokenizer: Tokenizer, seq_len: int, max_examples: int | None = None
) -> list[Example]:
    """Alpaca-style ``(input_ids, labels)``: ``bos prompt response eos``, loss on ``response eos`` only.

    ``records`` have ``instruction``, ``output`` and optionally ``input``. Prompt and response are
    encoded separately so the masked span is exactly the prompt. Examples are cut to ``seq_len``;
    one whose prompt fills ``seq_len`` (nothing left to learn) is skipped.
    """
    out: list[Example] = []
    for record in records if max_examples != 0 else ():
        prompt = tokenizer.encode(
            alpaca_prompt(record["instruction"], record.get("input") or ""), add_bos=True
        )
        response = tokenizer.encode(record["output"], add_eos=True)
        if len(prompt) >= seq_len:
            continue
        ids = (prompt + response)[:seq_len]
        labels = ([IGNORE_INDEX] * len(prompt) + response)[:seq_len]
        out.append((torch.tensor(ids), torch.tensor(labels)))
        if len(out) == max_examples:  # stop before reading another record of a stream
            break
    return out


def mc_examples(questions: Iterable[MCQuestion], tokenizer: Tokenizer, seq_len: int) -> list[Example]:
    """Zero-shot multiple-choice training examples, loss on the answer letter only.

    ``input_ids`` = ``bos question+choices "Answer:" suffix letter`` (see :func:`answer_tokens`),
    left-truncated to ``seq_len`` like the evaluation prompts; ``labels`` are -100 except on the
    letter. Training only the letter teaches exactly what :func:`mc_accuracy` scores; a loss on the
    whole text would mostly teach the model to predict docstrings.
    """
    questions = list(questions)
    if not questions:
        return []
    suffix, letters = answer_tokens(tokenizer, max(len(q.choices) for q in questions))
    out: list[Example] = []
    for q in questions:
        ids, _ = encode_mc_prompt(tokenizer, format_mc_question(q, with_answer=False), suffix, seq_len - 1)
        ids.append(letters[q.answer])
        labels = [IGNORE_INDEX] * (len(ids) - 1) + [ids[-1]]
        out.append((torch.tensor(ids), torch.tensor(labels)))
    return out


def pad_collate(examples: Sequence[Example], pad_token_id: int) -> dict[str, Tensor]:
    """Right-pad to the longest example: ``input_ids`` with pad, ``labels`` with -100, mask 0.

    Returns LongTensors ``input_ids``, ``attention_mask``, ``labels`` of shape ``(B, L_max)``.
    """
    if not examples:
        raise ValueError("cannot collate an empty batch")
    length = max(len(ids) for ids, _ in examples)
    batch = len(examples)
    input_ids = torch.full((batch, length), pad_token_id, dtype=torch.long)
    labels = torch.full((batch, length), IGNORE_INDEX, dtype=torch.long)
    attention_mask = torch.zeros((batch, length), dtype=torch.long)
    for row, (ids, label) in enumerate(examples):
        n = len(ids)
        input_ids[row, :n] = ids
        labels[row, :n] = label
        attention_mask[row, :n] = 1
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}


def fingerprint_examples(header: Mapping[str, Any], examples: Iterable[Example]) -> str:
    """SHA-256 (16 hex digits) over ``header`` (as sorted JSON) and every example's token ids and labels.

    Hashing the final token ids identifies the data exactly, whatever the source.
    """
    digest = hashlib.sha256(json.dumps(header, sort_keys=True, default=str).encode())
    for ids, labels in examples:
        digest.update(ids.numpy().tobytes())
        digest.update(labels.numpy().tobytes())
    return short_digest(digest)


@dataclass(frozen=True, eq=False)
class TrainData:
    """Tokenised training examples and a deterministic, endless batch stream over them.

    ``examples``: ``(input_ids, labels)`` pairs of 1-D LongTensors, at most ``seq_len`` long
    (packed text: every pair is one ``seq_len`` block and labels equal the inputs).
    ``fingerprint``: 16 hex digits of SHA-256 over the dataset spec, the tokenizer and every token.
    """

    examples: list[Example]
    pad_token_id: int
    kind: DataKind
    fingerprint: str
    description: str

    @property
    def num_examples(self) -> int:
        return len(self.examples)

    @property
    def tokens_per_epoch(self) -> int:
        """Real (unpadded) tokens in one pass over the examples."""
        return sum(len(ids) for ids, _ in self.examples)

    def batches(self, micro_batch: int, seed: int) -> Iterator[dict[str, Tensor]]:
        """Endless micro-batches (see :func:`pad_collate`), each exactly ``micro_batch`` examples.

        Epoch ``e`` visits the examples in ``randperm`` order seeded by ``(seed, e)``; epochs run on
        without a gap, so a batch may straddle two epochs and every batch has the same size.
        """
        if micro_batch < 1:
            raise ValueError(f"micro_batch must be positive, got {micro_batch}")
        if not self.examples:
            raise ValueError(f"no training examples: {self.description}")
        order = self._index_stream(seed)
        while True:
            chosen = [self.examples[i] for i in itertools.islice(order, micro_batch)]
            yield pad_collate(chosen, self.pad_token_id)

    def _index_stream(self, seed: int) -> Iterator[int]:
        for epoch in itertools.count():
            generator = torch.Generator().manual_seed(int(short_hash(f"{seed}:{epoch}"), 16))
            yield from torch.randperm(self.num_examples, generator=generator).tolist()


@dataclass(frozen=True, eq=False)
class LMEvalData:
    """Held-out text for perplexity: ``blocks`` is a LongTensor ``(N, seq_len)``."""

    blocks: Tensor
    fingerprint: str
    description: str


@dataclass(frozen=True, eq=False)
class MCEvalData:
    """Exemplars (``shots``, chosen per question by :func:`select_shots`) and test ``questions``."""

    shots: list[MCQuestion]
    questions: list[MCQuestion]
    fingerprint: str
    description: str
