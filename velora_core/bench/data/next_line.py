"""The ``stdlib-next-line`` task: which of four lines comes next in standard-library code (HellaSwag's form).

Each item is a few lines of a ``.py`` file (the context) and four candidate next lines: the true one
and three true next lines of *other* items of the same split, from other files. No letters, no
prompt to read: a model is scored by how likely it finds each ending after the context
(``velora_core.bench.evaluate.continuation``). Every ending is a real line that really follows some
context, so what tells the right one apart is the context, not how common a line is.

Splits follow the corpus (``sources.stdlib_split``): ``test`` items come only from the corpus'
validation files, which pre-training never reads; ``train`` items from its training files.
"""

from __future__ import annotations

import random
from collections.abc import Iterable
from dataclasses import dataclass
from functools import lru_cache
from typing import Literal

import torch

from velora_core.bench.data.examples import IGNORE_INDEX, Example
from velora_core.bench.data.sources import SourceFile, source_corpus
from velora_core.models.tokenizers import Tokenizer

#: The context is the whole lines just before the ending, at most this many characters in all.
CONTEXT_CHARS = 80
#: Endings are lines of 6 to 80 characters (stripped: at least 6), not comments.
MIN_ENDING_CHARS, MAX_ENDING_CHARS = 6, 80
#: Items per file at most, evenly spaced through it: long generated tables (the codecs in
#: ``encodings/``) would otherwise make up most of the task.
MAX_ITEMS_PER_FILE = 40
NUM_CHOICES = 4

Split = Literal["train", "test"]


@dataclass(frozen=True)
class ContinuationItem:
    """A context, candidate ``endings`` (each ending in a newline) and the index of the true one."""

    context: str
    endings: tuple[str, ...]
    answer: int
    source: str = ""  # the file's relative path


def _file_items(source: SourceFile, thin: bool = True) -> list[tuple[str, str]]:
    """``(context, ending)`` at each usable line of one file, evenly thinned to MAX_ITEMS_PER_FILE."""
    lines = source.text.split("\n")
    found = []
    for index in range(1, len(lines)):
        line = lines[index]
        stripped = line.strip()
        if len(stripped) < MIN_ENDING_CHARS or len(line) > MAX_ENDING_CHARS or stripped.startswith("#"):
            continue
        context: list[str] = []
        size = 0
        for previous in reversed(lines[:index]):
            if size + len(previous) + 1 > CONTEXT_CHARS:
                break
            context.insert(0, previous)
            size += len(previous) + 1
        if "".join(context).strip():
            found.append(("\n".join(context) + "\n", line + "\n"))
    if thin and len(found) > MAX_ITEMS_PER_FILE:
        found = [found[k * len(found) // MAX_ITEMS_PER_FILE] for k in range(MAX_ITEMS_PER_FILE)]
    return found


@lru_cache(maxsize=4)
def _training_windows(root: str | None) -> frozenset[tuple[str, str]]:
    """Every ``(context, ending)`` of the corpus' training files, unthinned: what pre-training has read."""
    return frozenset(pair for f in source_corpus(root).split("train") for pair in _file_items(f, thin=False))


@lru_cache(maxsize=8)
def stdlib_next_line(split: Split, seed: int = 0, root: str | None = None) -> tuple[ContinuationItem, ...]:
    """The items of one split, in a seeded random order; deterministic given the sources and ``seed``.

    ``seed`` chooses the distractors, the answer positions and the order; which contexts there are
    depends only on the sources. The distractors of an item are true endings of items from other
    files, differing from its own ending and from each other. A ``test`` context and line that also
    occur together in a training file (code copied between modules) are dropped. Chance is 1/4.
    """
    corpus_split = "validation" if split == "test" else "train"
    pairs = [(f.path, c, e) for f in source_corpus(root).split(corpus_split) for c, e in _file_items(f)]
    if split == "test":  # code copied between modules: a window pre-training has read is no test
        seen = _training_windows(root)
        pairs = [(path, c, e) for path, c, e in pairs if (c, e) not in seen]
    rng = random.Random(f"stdlib-next-line:{seed}:{split}")
    items = []
    for path, context, ending in pairs:
        distractors: list[str] = []
        for _ in range(1000):  # a handful of draws in practice; bounded for degenerate corpora
            other_path, _, other = pairs[rng.randrange(len(pairs))]
            if other_path != path and other != ending and other not in distractors:
                distractors.append(other)
                if len(distractors) == NUM_CHOICES - 1:
                    break
        if len(distractors) < NUM_CHOICES - 1:
            continue  # a corpus of one or two files has no distractors to draw
        answer = rng.randrange(NUM_CHOICES)
        endings = (*distractors[:answer], ending, *distractors[answer:])
        items.append(ContinuationItem(context, endings, answer, path))
    rng.shuffle(items)
    return tuple(items)


@dataclass(frozen=True, eq=False)
class ContinuationEvalData:
    """Test items for :func:`velora_core.bench.evaluate.continuation.continuation_accuracy`."""

    items: list[ContinuationItem]
    fingerprint: str
    description: str


def continuation_examples(
    items: Iterable[ContinuationItem], tokenizer: Tokenizer, seq_len: int
) -> list[Example]:
    """Training examples ``bos context ending``, loss on the true ending only (what the score reads).

    Context and ending are encoded separately, as the evaluation does. A training example longer
    than ``seq_len`` loses the oldest context tokens (bos kept); one whose ending alone does not
    fit is skipped. (Evaluation never cuts: see ``continuation_accuracy``.)
    """
    out: list[Example] = []
    for item in items:
        context = tokenizer.encode(item.context, add_bos=True)
        ending = tokenizer.encode(item.endings[item.answer])
        room = seq_len - len(ending)
        if room < 2:
            continue
        if len(context) > room:
            context = context[:1] + context[len(context) - room + 1 :]
        labels = [IGNORE_INDEX] * len(context) + ending
        out.append((torch.tensor(context + ending), torch.tensor(labels)))
    return out
