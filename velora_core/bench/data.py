"""Training and evaluation data for the benchmark engine: offline built-ins, hub and local datasets.

Every source ends in one of three shapes the engine consumes:

- :class:`TrainData`: examples of at most ``seq_len`` tokens, batched as ``input_ids``,
  ``attention_mask`` and ``labels`` (``(micro_batch, L)`` LongTensors; labels are aligned with the
  inputs, as Hugging Face causal LMs expect, and ``-100`` where no loss is taken).
- :class:`LMEvalData`: held-out text packed into ``(N, seq_len)`` blocks, for perplexity.
- :class:`MCEvalData`: k-shot exemplars and test questions, for multiple-choice accuracy.

Built-in datasets (``velora_core.presets.DATASETS``):

- ``stdlib-corpus``: the running Python's standard-library sources, split by file (a hash of the
  relative path puts ~5% of the files in ``validation``). Needs no network.
- ``stdlib-mc``: "which function does this docstring describe?" with four names, from the same
  files. Its ``test`` questions come only from the corpus' validation files, so a model pre-trained
  on ``stdlib-corpus`` has never seen them; ``dev`` (the k-shot exemplars) and ``train`` come from
  disjoint sets of the other files.
- ``c4``, ``alpaca``, ``mmlu``: ``allenai/c4`` ('en', streamed), ``yahma/alpaca-cleaned`` and
  ``cais/mmlu`` ('all') through ``datasets.load_dataset``. Where they load from is a parameter
  (``dataset_paths``), so the same code reads a local folder laid out like the hub repository.

Datasets without a separate evaluation split (Alpaca, and hub or local data without
``eval_split``) hold out the records whose content hash falls below :data:`HOLDOUT_FRACTION`;
training skips exactly those records.
"""

from __future__ import annotations

import ast
import hashlib
import itertools
import json
import platform
import random
import re
import sysconfig
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor

from velora_core.bench.tokenizer import Tokenizer
from velora_core.presets import DATASETS
from velora_core.spec import DatasetSpec, EvalSpec

#: Label of positions that take no loss (PyTorch's cross-entropy ``ignore_index``).
IGNORE_INDEX = -100

#: Where the built-in hub datasets load from by default: name -> (hub id, config).
HUB_DATASETS: dict[str, tuple[str, str | None]] = {
    "c4": ("allenai/c4", "en"),
    "alpaca": ("yahma/alpaca-cleaned", None),
    "mmlu": ("cais/mmlu", "all"),
}

#: Packed blocks of a text dataset when neither the spec nor the engine bounds them.
DEFAULT_MAX_BLOCKS = 16_384
#: Share of records held out for evaluation where a dataset has no evaluation split.
HOLDOUT_FRACTION = 0.05
#: Share of standard-library files in ``stdlib-corpus`` validation (and ``stdlib-mc`` test).
STDLIB_VALIDATION_FRACTION = 0.05
#: Share of standard-library files whose questions are ``stdlib-mc`` dev (k-shot exemplars).
STDLIB_MC_DEV_FRACTION = 0.03
#: Larger sources are generated tables (``pydoc_data/topics.py``) or outliers; they are skipped.
MAX_SOURCE_FILE_BYTES = 200_000
#: Directory names whose files are not part of the corpus: installed packages and test suites.
EXCLUDED_DIRS = frozenset({"site-packages", "dist-packages", "test", "tests", "idle_test", "__pycache__"})
#: ``stdlib-mc`` questions are the first docstring paragraph, cut to this many characters.
MAX_QUESTION_CHARS = 300

LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"

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
Role = Literal["train", "eval"]
DataKind = Literal["lm", "instruct", "mc"]  # packed text, prompt-masked instructions, multiple choice


def _unit_hash(key: str) -> float:
    """A deterministic number in [0, 1) from ``key`` (SHA-256, independent of PYTHONHASHSEED)."""
    return int(hashlib.sha256(key.encode()).hexdigest()[:13], 16) / 16**13


def _short_hash(*parts: str | bytes) -> str:
    digest = hashlib.sha256()
    for part in parts:
        digest.update(part.encode() if isinstance(part, str) else part)
        digest.update(b"\0")
    return digest.hexdigest()[:16]


# ----------------------------------------------------------------------------------------------------
# The standard-library corpus


@dataclass(frozen=True)
class SourceFile:
    """One ``.py`` file: ``path`` relative to the library root ('/'-separated), its text and SHA-256."""

    path: str
    text: str
    sha256: str


@dataclass(frozen=True)
class SourceCorpus:
    """The usable ``.py`` files under a root, sorted by path, and a fingerprint of all of them.

    ``fingerprint``: SHA-256 (16 hex digits) over the Python implementation and version, then each
    file's relative path and content hash in path order. Equal fingerprints mean identical sources.
    """

    root: str
    files: tuple[SourceFile, ...]
    fingerprint: str

    def split(self, name: Literal["train", "validation"]) -> tuple[SourceFile, ...]:
        """The files of one split, in path order."""
        return tuple(f for f in self.files if stdlib_split(f.path) == name)


def stdlib_split(path: str) -> Literal["train", "validation"]:
    """The corpus split of a file, from a hash of its relative path (stable across machines)."""
    return "validation" if _unit_hash("split:" + path) < STDLIB_VALIDATION_FRACTION else "train"


@lru_cache(maxsize=4)
def source_corpus(root: str | None = None, max_file_bytes: int = MAX_SOURCE_FILE_BYTES) -> SourceCorpus:
    """Read the ``.py`` files under ``root`` (default: the running Python's standard library).

    Skips :data:`EXCLUDED_DIRS` (installed packages, test suites), files over ``max_file_bytes``
    and files that are not UTF-8. Cached per process: the engine and tests call it repeatedly.
    """
    base = Path(root or sysconfig.get_paths()["stdlib"])
    files = []
    for path in sorted(base.rglob("*.py")):
        relative = path.relative_to(base).as_posix()
        if EXCLUDED_DIRS.intersection(relative.split("/")[:-1]) or not path.is_file():
            continue
        data = path.read_bytes()
        if len(data) > max_file_bytes:
            continue
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            continue
        files.append(SourceFile(relative, text, hashlib.sha256(data).hexdigest()))
    files.sort(key=lambda f: f.path)
    version = f"{platform.python_implementation()} {platform.python_version()}"
    fingerprint = _short_hash(version, *(f"{f.path}:{f.sha256}" for f in files))
    return SourceCorpus(str(base), tuple(files), fingerprint)


def stdlib_documents(
    split: Literal["train", "validation"], max_bytes: int | None = None, root: str | None = None
) -> list[SourceFile]:
    """Files of one corpus split in a fixed shuffled order, up to ``max_bytes`` of UTF-8 in all.

    The order (by a hash of the path) mixes packages, so a byte budget takes a varied sample rather
    than the alphabetically first modules. At least one file is returned if the split has any.
    """
    files = sorted(source_corpus(root).split(split), key=lambda f: _unit_hash("order:" + f.path))
    if max_bytes is None:
        return files
    chosen, total = [], 0
    for f in files:
        size = len(f.text.encode())
        if chosen and total + size > max_bytes:
            break
        chosen.append(f)
        total += size
    return chosen


# ----------------------------------------------------------------------------------------------------
# Multiple choice: the question type, MMLU formatting, answer-letter tokens


@dataclass(frozen=True)
class MCQuestion:
    """A multiple-choice question; ``answer`` indexes ``choices``; ``subject`` names MMLU's subject."""

    question: str
    choices: tuple[str, ...]
    answer: int
    subject: str = ""


def format_mc_question(q: MCQuestion, with_answer: bool) -> str:
    """MMLU's layout: ``Question: …\\nA. …\\nB. …\\nAnswer:`` and `` B`` when ``with_answer``."""
    lines = [f"Question: {q.question}"]
    lines += [f"{LETTERS[i]}. {choice}" for i, choice in enumerate(q.choices)]
    text = "\n".join(lines) + "\nAnswer:"
    return f"{text} {LETTERS[q.answer]}" if with_answer else text


def build_kshot_prompt(shots: Sequence[MCQuestion], question: MCQuestion) -> str:
    """The exemplars with their answers, then the question, blank-line separated, ending in ``Answer:``.

    A question with a ``subject`` gets MMLU's header ("The following are multiple choice questions
    (with answers) about <subject>.").
    """
    header = (
        f"The following are multiple choice questions (with answers) about {question.subject}.\n\n"
        if question.subject
        else ""
    )
    parts = [format_mc_question(s, with_answer=True) for s in shots]
    parts.append(format_mc_question(question, with_answer=False))
    return header + "\n\n".join(parts)


def select_shots(shots: Sequence[MCQuestion], question: MCQuestion, num_shots: int) -> list[MCQuestion]:
    """The first ``num_shots`` exemplars of the question's subject (MMLU), else the first overall."""
    if num_shots <= 0:
        return []
    same = [s for s in shots if s.subject == question.subject] if question.subject else []
    return list((same or shots)[:num_shots])


def answer_tokens(tokenizer: Tokenizer, num_choices: int) -> tuple[list[int], list[int]]:
    """How answer letters are scored: ``(suffix, letter_ids)``.

    A prompt ends in ``Answer:`` and MMLU's continuation is `` A``, `` B``…. Encode ``Answer:`` and
    ``Answer: X`` for each letter; the extra tokens' common prefix is ``suffix`` (appended to every
    prompt) and what remains must be one distinct token per letter. For LLaMA's or GPT-2's
    tokenizers ``suffix`` is empty and the letter tokens are ``▁A``/``ĠA``; for the byte tokenizer
    ``suffix`` is the space byte and the letter tokens are the letters' bytes. Scoring the letter
    token after ``suffix`` ranks the letters exactly as the log-likelihood of the whole continuation
    would, since the suffix is common to all of them.

    Raises:
        ValueError: the tokenizer does not split the continuations that way.
    """
    if not 2 <= num_choices <= len(LETTERS):
        raise ValueError(f"num_choices must lie in [2, {len(LETTERS)}], got {num_choices}")
    base = tokenizer.encode("Answer:")
    tails = []
    for letter in LETTERS[:num_choices]:
        full = tokenizer.encode(f"Answer: {letter}")
        if full[: len(base)] != base:
            raise ValueError(f"the tokenizer merges 'Answer:' with ' {letter}'; cannot score answer letters")
        tails.append(full[len(base) :])
    suffix: list[int] = []
    for column in zip(*tails, strict=False):  # longest common prefix of the tails
        if len(set(column)) > 1:
            break
        suffix.append(column[0])
    letters = [tail[len(suffix) :] for tail in tails]
    if any(len(rest) != 1 for rest in letters) or len({rest[0] for rest in letters}) != num_choices:
        raise ValueError(f"answer letters do not encode as one distinct token each: {tails}")
    return list(suffix), [rest[0] for rest in letters]


def encode_mc_prompt(
    tokenizer: Tokenizer, prompt: str, suffix: Sequence[int], max_length: int | None
) -> tuple[list[int], bool]:
    """``bos + prompt + suffix`` as ids, left-truncated to ``max_length`` (keeping bos); and whether cut.

    Left truncation drops the oldest exemplars first and always keeps the question being asked.
    """
    ids = tokenizer.encode(prompt, add_bos=True) + list(suffix)
    if max_length is None or len(ids) <= max_length:
        return ids, False
    bos = tokenizer.bos_token_id
    if bos is not None and ids[0] == bos and max_length > 1:
        return [bos, *ids[len(ids) - max_length + 1 :]], True
    return ids[len(ids) - max_length :], True


# ----------------------------------------------------------------------------------------------------
# stdlib-mc


def _documented_functions(source: SourceFile) -> list[tuple[str, str]]:
    """``(name, docstring)`` of the public module-level functions and methods of one file."""
    try:
        tree = ast.parse(source.text)
    except SyntaxError:
        return []
    functions: list[ast.AST] = []
    for node in tree.body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            functions.append(node)
        elif isinstance(node, ast.ClassDef):
            functions += [m for m in node.body if isinstance(m, ast.FunctionDef | ast.AsyncFunctionDef)]
    out = []
    for fn in functions:
        doc = ast.get_docstring(fn)
        if doc and not fn.name.startswith("_"):
            out.append((fn.name, doc))
    return out


def _question_text(name: str, docstring: str) -> str | None:
    """The docstring's first paragraph on one line, the function's own name blanked out as ``___``.

    Returns None for paragraphs too short to be a question (under three words).
    """
    paragraph = " ".join(docstring.strip().split("\n\n")[0].split())
    paragraph = re.sub(rf"\b{re.escape(name)}\b", "___", paragraph, flags=re.IGNORECASE)
    if len(paragraph.split()) < 3:
        return None
    if len(paragraph) > MAX_QUESTION_CHARS:
        paragraph = paragraph[:MAX_QUESTION_CHARS].rsplit(" ", 1)[0] + " ..."
    return paragraph


def _mc_split(path: str) -> Literal["train", "dev", "test"]:
    # Same hash as stdlib_split: test files are exactly the corpus' validation files.
    u = _unit_hash("split:" + path)
    if u < STDLIB_VALIDATION_FRACTION:
        return "test"
    return "dev" if u < STDLIB_VALIDATION_FRACTION + STDLIB_MC_DEV_FRACTION else "train"


@lru_cache(maxsize=4)
def _stdlib_mc_items(root: str | None = None) -> dict[str, tuple[tuple[str, str], ...]]:
    """``(name, question text)`` per split, in file order; parsed once per process (seconds)."""
    found: dict[str, list[tuple[str, str]]] = {"train": [], "dev": [], "test": []}
    counts: dict[str, int] = {}
    for source in source_corpus(root).files:
        for name, doc in _documented_functions(source):
            text = _question_text(name, doc)
            if text is not None:
                found[_mc_split(source.path)].append((name, text))
                counts[text] = counts.get(text, 0) + 1
    # A paragraph that occurs twice (overrides, aliases) does not identify one function.
    return {split: tuple(item for item in items if counts[item[1]] == 1) for split, items in found.items()}


@lru_cache(maxsize=8)
def stdlib_mc(seed: int = 0, root: str | None = None) -> dict[str, tuple[MCQuestion, ...]]:
    """The ``stdlib-mc`` task: ``{"train", "dev", "test"}`` -> questions, deterministic given ``seed``.

    Each question is a docstring paragraph (see :func:`_question_text`) and four public function
    names: the documented one and three distinct others drawn from the same split; the answer's
    position is uniform. A paragraph that occurs twice anywhere is dropped (it would not identify a
    function). Chance accuracy is 0.25. Each split's questions are in a seeded random order.
    """
    out: dict[str, tuple[MCQuestion, ...]] = {}
    for split, items in _stdlib_mc_items(root).items():
        rng = random.Random(f"stdlib-mc:{seed}:{split}")
        names = sorted({name for name, _ in items})
        if len(names) < 4:  # too few functions for three distractors (only in tiny test corpora)
            out[split] = ()
            continue
        questions = []
        for name, text in items:
            others = rng.sample(names, 4)
            distractors = [n for n in others if n != name][:3]
            answer = rng.randrange(4)
            choices = [*distractors[:answer], name, *distractors[answer:]]
            questions.append(MCQuestion(text, tuple(choices), answer))
        rng.shuffle(questions)
        out[split] = tuple(questions)
    return out


# ----------------------------------------------------------------------------------------------------
# Tokenised examples: packing, instruction masking, multiple-choice training, collation


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


def _fingerprint_examples(header: Mapping[str, Any], examples: Iterable[Example]) -> str:
    # Hashing the final token ids identifies the data exactly, whatever the source.
    digest = hashlib.sha256(json.dumps(header, sort_keys=True, default=str).encode())
    for ids, labels in examples:
        digest.update(ids.numpy().tobytes())
        digest.update(labels.numpy().tobytes())
    return digest.hexdigest()[:16]


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
            generator = torch.Generator().manual_seed(int(_short_hash(f"{seed}:{epoch}"), 16))
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


# ----------------------------------------------------------------------------------------------------
# Record sources: the hub (or a local folder laid out like a hub repository) and local files


def hub_records(path_or_id: str, config: str | None, split: str) -> Iterator[dict[str, Any]]:
    """Stream the records of one split with ``datasets.load_dataset(..., streaming=True)``.

    ``path_or_id`` is a hub id or a local folder holding data files (and a README.md whose YAML
    front matter declares ``configs``). ``datasets`` runs no loading scripts, so no remote code runs.
    """
    import datasets  # imported here: it takes seconds and only these sources need it

    yield from datasets.load_dataset(path_or_id, config, split=split, streaming=True)


def local_records(path: str | Path, text_field: str = "text") -> Iterator[dict[str, Any]]:
    """Records of a local file: JSON Lines (``.jsonl``/``.json``), a JSON array, or plain text.

    A text file yields one record ``{text_field: paragraph}`` per blank-line-separated paragraph.
    """
    path = Path(path)
    if path.suffix in (".txt", ".text", ".md"):
        for paragraph in re.split(r"\n\s*\n", path.read_text(encoding="utf-8")):
            if paragraph.strip():
                yield {text_field: paragraph.strip()}
        return
    if path.suffix == ".json" and path.read_text(encoding="utf-8").lstrip().startswith("["):
        yield from json.loads(path.read_text(encoding="utf-8"))
        return
    with path.open(encoding="utf-8") as lines:
        for line in lines:
            if line.strip():
                yield json.loads(line)


def _held_out(record: Mapping[str, Any]) -> bool:
    return _unit_hash("holdout:" + json.dumps(record, sort_keys=True, default=str)) < HOLDOUT_FRACTION


def _records(spec: DatasetSpec, role: Role, paths: Mapping[str, str]) -> tuple[Iterator[dict[str, Any]], str]:
    """The records a dataset gives for training or evaluation, and where they come from (in words).

    Built-in ``c4`` evaluates on its ``validation`` split, ``mmlu`` trains on ``auxiliary_train``;
    ``eval_split`` overrides (for ``local`` it is the path of the evaluation file). Otherwise the
    evaluation records are the hash-held-out share of the training split (see :func:`_held_out`).
    """
    holdout = False
    if spec.source == "builtin":
        hub_id, default_config = HUB_DATASETS[spec.name]
        path, config = paths.get(spec.name, hub_id), spec.config or default_config
        if spec.name == "c4":
            split = spec.split if role == "train" else spec.eval_split or "validation"
        elif spec.name == "mmlu":
            split = "auxiliary_train" if role == "train" else spec.eval_split or "test"
        else:  # alpaca has one split: evaluation holds records out of it unless eval_split names another
            holdout = spec.eval_split is None
            split = spec.split if role == "train" or holdout else spec.eval_split
        records, where = hub_records(path, config, split), f"{path} ({config or 'default'}, {split})"
    elif spec.source == "hub":
        split = spec.split if role == "train" or spec.eval_split is None else spec.eval_split
        holdout = spec.eval_split is None
        records, where = hub_records(spec.name, spec.config, split), f"{spec.name} ({spec.config}, {split})"
    else:
        file = spec.name if role == "train" or spec.eval_split is None else spec.eval_split
        holdout = spec.eval_split is None
        records, where = local_records(file, spec.text_field), file
    if holdout:
        keep_held_out = role == "eval"
        records = (r for r in records if _held_out(r) == keep_held_out)
        where += f", {'held-out' if role == 'eval' else 'without the held-out'} {HOLDOUT_FRACTION:.0%}"
    return records, where


def _record_kind(record: Mapping[str, Any], text_field: str) -> DataKind:
    if text_field in record:
        return "lm"
    if "instruction" in record and "output" in record:
        return "instruct"
    if {"question", "choices", "answer"} <= set(record):
        return "mc"
    raise ValueError(
        f"records have fields {sorted(record)}: expected {text_field!r} (text), instruction/output "
        "(instructions) or question/choices/answer (multiple choice)"
    )


def _peek_kind(
    spec: DatasetSpec, records: Iterator[dict[str, Any]]
) -> tuple[DataKind, Iterator[dict[str, Any]]]:
    """The dataset kind (built-in: from DATASETS; else from the first record's fields), records intact."""
    if spec.source == "builtin":
        return DATASETS[spec.name][0], records
    try:
        first = next(records)
    except StopIteration:
        raise ValueError(f"dataset {spec.name!r} has no records") from None
    return _record_kind(first, spec.text_field), itertools.chain([first], records)


def _mc_question(record: Mapping[str, Any]) -> MCQuestion:
    subject = str(record.get("subject") or "").replace("_", " ")
    return MCQuestion(
        str(record["question"]).strip(), tuple(record["choices"]), int(record["answer"]), subject
    )


def _as_text(record: Mapping[str, Any], kind: DataKind, text_field: str) -> str:
    """A record as plain text for language modelling (instructions with their response, MC answered)."""
    if kind == "lm":
        return record[text_field]
    if kind == "instruct":
        return alpaca_prompt(record["instruction"], record.get("input") or "") + record["output"]
    return format_mc_question(_mc_question(record), with_answer=True)


def _limit(*bounds: int | None) -> int | None:
    given = [b for b in bounds if b is not None]
    return min(given) if given else None


# ----------------------------------------------------------------------------------------------------
# Entry points used by the engine


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
    else:
        records, where = _records(dataset_spec, "train", paths)
        kind, records = _peek_kind(dataset_spec, records)
        if kind == "lm":
            texts = (r[dataset_spec.text_field] for r in records)
            examples = [
                (row, row) for row in lm_blocks(texts, tokenizer, seq_len, limit or DEFAULT_MAX_BLOCKS)
            ]
        elif kind == "instruct":
            examples = instruct_examples(records, tokenizer, seq_len, limit)
        else:
            examples = mc_examples(map(_mc_question, itertools.islice(records, limit)), tokenizer, seq_len)
    if not examples:
        raise ValueError(f"dataset {dataset_spec.name!r} gave no training example of up to {seq_len} tokens")
    tokens = sum(len(ids) for ids, _ in examples)
    description = f"{dataset_spec.name}: {len(examples)} {kind} examples, {tokens} tokens, from {where}"
    return TrainData(
        examples, tokenizer.pad_token_id, kind, _fingerprint_examples(header, examples), description
    )


def _sample(items: Sequence[MCQuestion], count: int, seed: int) -> list[MCQuestion]:
    """A seeded sample of ``count`` items in their original order (all of them if fewer)."""
    if len(items) <= count:
        return list(items)
    chosen = sorted(random.Random(f"eval:{seed}").sample(range(len(items)), count))
    return [items[i] for i in chosen]


def load_eval_data(
    eval_spec: EvalSpec,
    train_dataset_spec: DatasetSpec,
    tokenizer: Tokenizer,
    seq_len: int,
    seed: int,
    *,
    dataset_paths: Mapping[str, str] | None = None,
) -> LMEvalData | MCEvalData | None:
    """The evaluation data of a run (None for ``metric='none'``).

    ``perplexity``: up to ``eval_spec.max_examples`` blocks of ``seq_len`` tokens of held-out text
    (``stdlib-corpus`` validation files, C4 validation, a hub ``eval_split``, or held-out records).
    ``mc_accuracy``: the exemplars and a seeded sample of ``max_examples`` test questions:
    ``stdlib-mc`` dev/test, MMLU dev/test (``cais/mmlu`` 'all'), or for hub/local multiple-choice
    records, ``split`` (exemplars) and ``eval_split`` (questions).

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
        else:
            records, where = _records(spec, "eval", paths)
            kind, records = _peek_kind(spec, records)
            texts = (_as_text(r, kind, spec.text_field) for r in records)
        blocks = lm_blocks(texts, tokenizer, seq_len, eval_spec.max_examples)
        if len(blocks) == 0:
            raise ValueError(f"{where}: not enough evaluation text for one block of {seq_len} tokens")
        fingerprint = _fingerprint_examples(header, [(blocks, blocks[:0])])
        return LMEvalData(blocks, fingerprint, f"{where}: {len(blocks)} blocks x {seq_len} tokens")

    if spec.source == "builtin" and spec.name == "stdlib-mc":
        task = stdlib_mc(seed)
        shots, questions, where = list(task["dev"]), list(task["test"]), "stdlib-mc dev/test"
        header["source"] = source_corpus().fingerprint
    elif spec.source == "builtin" and spec.name == "mmlu":
        hub_id, default_config = HUB_DATASETS["mmlu"]
        path, config = paths.get("mmlu", hub_id), spec.config or default_config
        shots = [_mc_question(r) for r in hub_records(path, config, "dev")]
        questions = [_mc_question(r) for r in hub_records(path, config, "test")]
        where = f"{path} ({config}) dev/test"
    elif spec.source in ("hub", "local"):
        shot_records, _ = _records(spec, "train", paths)
        question_records, where = _records(spec, "eval", paths)
        kind, question_records = _peek_kind(spec, question_records)
        if kind != "mc":
            raise ValueError(f"mc_accuracy needs multiple-choice records; {spec.name!r} holds {kind!r} data")
        shots = [_mc_question(r) for r in itertools.islice(shot_records, eval_spec.num_shots)]
        questions = [_mc_question(r) for r in question_records]
    else:
        raise ValueError(f"mc_accuracy needs a multiple-choice dataset (stdlib-mc, mmlu); got {spec.name!r}")
    questions = _sample(questions, eval_spec.max_examples, seed)
    if not questions:
        raise ValueError(f"{where}: no test questions")
    content = json.dumps([[q.question, q.choices, q.answer, q.subject] for q in shots + questions])
    fingerprint = _short_hash(json.dumps(header, sort_keys=True, default=str), content)
    description = f"{where}: {len(questions)} questions, {len(shots)} exemplars available"
    return MCEvalData(shots, questions, fingerprint, description)
