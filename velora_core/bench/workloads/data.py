"""Labelled data of the classification workloads, and the masking of masked-LM pre-training.

Built-in (offline) sets:

- ``digits``: scikit-learn's bundled 8x8 handwritten digits (1,797 images, 10 classes). A hash of
  the image index puts :data:`DIGITS_TEST_FRACTION` of them in ``test``, the rest in ``train``.
- ``digits-rotation``: a pretext task without digit labels: each ``train`` image turned by 0, 90,
  180 or 270 degrees, the label is the turn. Its evaluation turns the ``test`` images, so a model
  pre-trained on it has never seen an image the fine-tuned ``digits`` model is tested on.
- ``stdlib-package``: a standard-library function's source (its first ``seq_len`` tokens) and the
  package it comes from (``email``, ``xml`` …). Test functions come only from the files of the
  corpus' validation split, which ``stdlib-corpus`` pre-training never reads; training functions
  from the other files. Only packages with at least :data:`MIN_TEST_FUNCTIONS` test and
  :data:`MIN_TRAIN_FUNCTIONS` training functions are classes (which ones depends on the Python
  version, so the class names are in the result's details).

Hub and local sets (``datasets``): a hub id, a local folder laid out like a hub repository (data
files such as parquet, read by ``load_dataset``) or a folder written by ``save_to_disk``. Columns:
``text_field`` (and ``text_pair_field``) or ``image_field`` (default ``image``), and ``label_field``
(default ``label``). A ``ClassLabel`` label gives the class names; float labels make a regression
(one output, Pearson's r); other integer labels give ``max + 1`` classes. The evaluation split is
``eval_split``, else ``validation``, else ``test``.
"""

from __future__ import annotations

import ast
import itertools
import json
import random
import textwrap
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from velora_core.bench.data import TrainData, source_corpus, stdlib_split
from velora_core.contract.hashing import short_hash, unit_hash
from velora_core.contract.spec import DatasetSpec
from velora_core.models.tokenizers import ByteTokenizer, HFTokenizer, Tokenizer

DIGITS_TEST_FRACTION = 0.2
MIN_TEST_FUNCTIONS = 90
MIN_TRAIN_FUNCTIONS = 100
#: Training functions kept per ``stdlib-package`` class (a seeded sample), so no package dominates.
MAX_TRAIN_PER_PACKAGE = 300
#: Share of the tokens masked-LM pre-training predicts (BERT's and RoBERTa's 15%).
MLM_PROBABILITY = 0.15


@dataclass(frozen=True, eq=False)
class ClassificationData(TrainData):
    """Labelled examples and their batches: ``examples`` are ``(input, label)`` pairs, ``collate``
    turns a list of them into a batch (``pixel_values`` or ``input_ids``/``attention_mask``, and
    ``labels`` of shape ``(B,)``)."""

    collate: Callable[[Sequence[tuple[Any, Any]]], dict[str, Tensor]]
    label_names: tuple[str, ...]
    regression: bool = False

    @property
    def num_labels(self) -> int:
        return 1 if self.regression else len(self.label_names)

    def batches(self, micro_batch: int, seed: int) -> Iterator[dict[str, Tensor]]:
        """Endless micro-batches of exactly ``micro_batch`` examples, in seeded epoch order."""
        if micro_batch < 1:
            raise ValueError(f"micro_batch must be positive, got {micro_batch}")
        if not self.examples:
            raise ValueError(f"no training examples: {self.description}")
        order = self._index_stream(seed)
        while True:
            yield self.collate([self.examples[i] for i in itertools.islice(order, micro_batch)])

    def in_order(self, batch_size: int) -> Iterator[dict[str, Tensor]]:
        """Every example once, in order (evaluation)."""
        for start in range(0, len(self.examples), batch_size):
            yield self.collate(self.examples[start : start + batch_size])

    def labels(self) -> list[float]:
        return [float(label) for _, label in self.examples]


def _label_tensor(labels: Sequence[Any], regression: bool) -> Tensor:
    return torch.tensor(labels, dtype=torch.float32 if regression else torch.long)


def _stack_images(items: Sequence[tuple[Tensor, int]]) -> dict[str, Tensor]:
    return {
        "pixel_values": torch.stack([image for image, _ in items]),
        "labels": _label_tensor([label for _, label in items], False),
    }


def _text_collate(pad_token_id: int, regression: bool) -> Callable[[Sequence[tuple[Tensor, Any]]], dict]:
    def collate(items: Sequence[tuple[Tensor, Any]]) -> dict[str, Tensor]:
        length = max(len(ids) for ids, _ in items)
        input_ids = torch.full((len(items), length), pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(items), length), dtype=torch.long)
        for row, (ids, _) in enumerate(items):
            input_ids[row, : len(ids)] = ids
            mask[row, : len(ids)] = 1
        labels = _label_tensor([label for _, label in items], regression)
        return {"input_ids": input_ids, "attention_mask": mask, "labels": labels}

    return collate


def _fingerprint(header: dict[str, Any], examples: Sequence[tuple[Any, Any]]) -> str:
    parts = [json.dumps(header, sort_keys=True, default=str)]
    for item, label in examples:
        parts.append(item.numpy().tobytes() if isinstance(item, Tensor) else repr(item))
        parts.append(repr(label))
    return short_hash(*parts)


def _data(
    examples: list[tuple[Any, Any]],
    collate: Callable,
    names: Sequence[str],
    header: dict[str, Any],
    description: str,
    regression: bool = False,
    pad_token_id: int = 0,
    fingerprint: str | None = None,
) -> ClassificationData:
    return ClassificationData(
        examples=examples,
        pad_token_id=pad_token_id,
        kind="classification",
        fingerprint=fingerprint or _fingerprint(header, examples),
        description=description,
        collate=collate,
        label_names=tuple(names),
        regression=regression,
    )


# --- digits -------------------------------------------------------------------------------------


@lru_cache(maxsize=1)
def _digits() -> tuple[Tensor, tuple[int, ...]]:
    from sklearn.datasets import load_digits  # bundled with scikit-learn: no download

    bunch = load_digits()
    images = torch.tensor(bunch.images, dtype=torch.float32).unsqueeze(1) / 16.0  # (N, 1, 8, 8) in [0, 1]
    return (images - 0.5) / 0.5, tuple(int(t) for t in bunch.target)


def digits_split(index: int) -> str:
    """``test`` or ``train`` for the digits image at ``index`` (a hash of the index)."""
    return "test" if unit_hash(f"digits:{index}") < DIGITS_TEST_FRACTION else "train"


def digits_data(name: str, split: str) -> ClassificationData:
    """``digits`` or ``digits-rotation``, ``train`` or ``test`` (see the module docstring)."""
    images, targets = _digits()
    chosen = [i for i in range(len(targets)) if digits_split(i) == split]
    if name == "digits":
        examples = [(images[i], targets[i]) for i in chosen]
        names = [str(d) for d in range(10)]
    else:
        examples = [(torch.rot90(images[i], k, dims=(1, 2)), k) for i in chosen for k in range(4)]
        names = ["0", "90", "180", "270"]
    header = {"name": name, "split": split, "fraction": DIGITS_TEST_FRACTION}
    description = f"scikit-learn digits {split} ({len(examples)} images, {len(names)} classes)"
    return _data(examples, _stack_images, names, header, description)


# --- stdlib-package -----------------------------------------------------------------------------


@lru_cache(maxsize=2)
def _package_functions(root: str | None = None) -> dict[str, dict[str, list[str]]]:
    """split -> package -> function sources, in corpus order, each source once."""
    found: dict[str, dict[str, list[str]]] = {"train": {}, "test": {}}
    seen: set[str] = set()
    for source in source_corpus(root).files:
        parts = source.path.split("/")
        if len(parts) < 2:
            continue  # a top-level module belongs to no package
        try:
            tree = ast.parse(source.text)
        except SyntaxError:
            continue
        split = "test" if stdlib_split(source.path) == "validation" else "train"
        lines = source.text.splitlines(keepends=True)  # (ast.get_source_segment re-splits per call)
        for node in ast.walk(tree):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                text = textwrap.dedent("".join(lines[node.lineno - 1 : node.end_lineno]))
                if text and text not in seen:
                    seen.add(text)
                    found[split].setdefault(parts[0], []).append(text)
    return found


def stdlib_package_data(split: str, tokenizer: Tokenizer, seq_len: int, seed: int) -> ClassificationData:
    """``stdlib-package`` examples of ``split`` (``train`` or ``test``), tokenised (bos + source + eos,
    cut to ``seq_len``)."""
    functions = _package_functions()
    names = sorted(
        p
        for p in functions["test"]
        if len(functions["test"][p]) >= MIN_TEST_FUNCTIONS
        and len(functions["train"].get(p, ())) >= MIN_TRAIN_FUNCTIONS
    )
    if len(names) < 2:
        raise ValueError("stdlib-package: fewer than two packages have enough functions in this Python")
    examples = []
    for label, package in enumerate(names):
        texts = functions[split][package]
        if split == "train" and len(texts) > MAX_TRAIN_PER_PACKAGE:
            texts = random.Random(f"stdlib-package:{seed}:{package}").sample(texts, MAX_TRAIN_PER_PACKAGE)
        examples += [(_encode(tokenizer, text, None, seq_len), label) for text in texts]
    header = {"name": "stdlib-package", "split": split, "corpus": source_corpus().fingerprint, "seed": seed}
    header["tokenizer"], header["seq_len"] = tokenizer.fingerprint, seq_len
    description = f"stdlib-package {split} ({len(examples)} functions, {len(names)} packages)"
    return _data(examples, _text_collate(tokenizer.pad_token_id, False), names, header, description)


def _encode(tokenizer: Tokenizer, text: str, pair: str | None, seq_len: int) -> Tensor:
    """Token ids of a text (or a pair) as an encoder reads it: ``<s> a </s>`` (``</s></s> b </s>``)."""
    if isinstance(tokenizer, HFTokenizer):
        ids = tokenizer.hf(text, pair, truncation=True, max_length=seq_len)["input_ids"]
        return torch.tensor(ids, dtype=torch.long)
    ids = tokenizer.encode(text, add_bos=True, add_eos=True)
    if pair is not None:
        ids += [tokenizer.eos_token_id, *tokenizer.encode(pair, add_eos=True)]
    if len(ids) > seq_len:
        ids = [*ids[: seq_len - 1], tokenizer.eos_token_id]
    return torch.tensor(ids, dtype=torch.long)


# --- hub and local sets -------------------------------------------------------------------------


def _load_split(spec: DatasetSpec, role: str):
    """The ``datasets.Dataset`` of the training split or of the evaluation split (see module doc)."""
    import datasets  # imported here: it takes seconds

    if spec.source == "local":
        folder = Path(spec.name)
        if not folder.is_dir():
            raise ValueError(
                f"dataset.name {spec.name!r} is not a folder (a hub-shaped one or save_to_disk's)"
            )
        if (folder / "dataset_dict.json").is_file() or (folder / "state.json").is_file():
            loaded = datasets.load_from_disk(str(folder))
        else:
            loaded = datasets.load_dataset(str(folder), spec.config)
    else:
        loaded = datasets.load_dataset(spec.name, spec.config)
    if isinstance(loaded, datasets.Dataset):
        loaded = datasets.DatasetDict({spec.split: loaded})
    if role == "train":
        wanted = [spec.split]
    else:
        wanted = [spec.eval_split] if spec.eval_split else ["validation", "test"]
    for split in wanted:
        if split in loaded:
            return loaded[split], split
    raise ValueError(f"dataset {spec.name!r} has no split {' or '.join(wanted)}; it has {sorted(loaded)}")


def _label_kind(dataset, label_field: str, train_labels: Sequence[Any]) -> tuple[list[str], bool]:
    """Class names and whether the labels are a regression target."""
    import datasets

    feature = dataset.features.get(label_field)
    if isinstance(feature, datasets.ClassLabel):
        return list(feature.names), False
    if isinstance(feature, datasets.Value) and feature.dtype.startswith("float"):
        return ["score"], True
    if not train_labels or not all(isinstance(v, int) and v >= 0 for v in train_labels):
        raise ValueError(f"label column {label_field!r} holds neither class ids nor float scores")
    return [str(k) for k in range(max(train_labels) + 1)], False


def hub_data(
    spec: DatasetSpec,
    role: str,
    tokenizer: Tokenizer | None,
    image_processor: Any | None,
    seq_len: int,
    limit: int | None,
    names: list[str] | None = None,
) -> ClassificationData:
    """A hub or local labelled set (see the module docstring); ``names`` are the training split's classes.

    Raises:
        ValueError: a missing column or split, labels of neither kind, an image set without an image
            processor or a text set without a tokenizer.
    """
    dataset, split = _load_split(spec, role)
    if limit is not None and limit < len(dataset):
        dataset = dataset.select(range(limit))
    label_field = spec.label_field or "label"
    image_field = spec.image_field or ("image" if tokenizer is None else None)
    columns = [label_field, image_field or spec.text_field] + (
        [spec.text_pair_field] if spec.text_pair_field else []
    )
    missing = [c for c in columns if c not in dataset.column_names]
    if missing:
        raise ValueError(
            f"dataset {spec.name!r} ({split}) has no column {missing}; it has {dataset.column_names}"
        )
    labels = list(dataset[label_field])
    if names is None:
        names, regression = _label_kind(dataset, label_field, labels)
    else:
        regression = names == ["score"]
    if not regression:
        labels = [int(v) for v in labels]
        bad = [v for v in labels if not 0 <= v < len(names)]
        if bad:
            raise ValueError(
                f"dataset {spec.name!r} ({split}): label {bad[0]} is outside 0..{len(names) - 1}"
            )
    header = {"dataset": spec.model_dump(mode="json"), "role": role, "split": split, "limit": limit}
    if image_field is not None:
        if image_processor is None:
            raise ValueError("an image dataset needs the model's image processor (preprocessor_config.json)")
        images = list(dataset[image_field])
        header["fingerprint"] = getattr(dataset, "_fingerprint", "")
        examples = [(image, label) for image, label in zip(images, labels, strict=True)]

        def collate(items):
            pixels = image_processor(images=[img.convert("RGB") for img, _ in items], return_tensors="pt")
            return {
                "pixel_values": pixels["pixel_values"],
                "labels": _label_tensor([y for _, y in items], False),
            }

        description = f"{spec.name} {split} ({len(examples)} images, {len(names)} classes)"
        # Decoded images have no stable bytes to hash: the dataset's own fingerprint and the labels.
        fingerprint = short_hash(json.dumps(header, sort_keys=True, default=str), repr(labels))
        return _data(examples, collate, names, header, description, fingerprint=fingerprint)
    if tokenizer is None:
        raise ValueError("a text dataset needs the model's tokenizer")
    texts = dataset[spec.text_field]
    pairs = dataset[spec.text_pair_field] if spec.text_pair_field else [None] * len(texts)
    examples = [
        (_encode(tokenizer, str(a), None if b is None else str(b), seq_len), label)
        for a, b, label in zip(texts, pairs, labels, strict=True)
    ]
    header["tokenizer"], header["seq_len"] = tokenizer.fingerprint, seq_len
    kind = "scores" if regression else f"{len(names)} classes"
    description = f"{spec.name} {split} ({len(examples)} texts, {kind})"
    return _data(
        examples, _text_collate(tokenizer.pad_token_id, regression), names, header, description, regression
    )


# --- masked-LM ----------------------------------------------------------------------------------


def mask_token_id(tokenizer: Tokenizer) -> int:
    """The mask token: the HF tokenizer's, or for the byte tokenizer its first unused id (259)."""
    if isinstance(tokenizer, HFTokenizer):
        if tokenizer.hf.mask_token_id is None:
            raise ValueError(f"tokenizer {tokenizer.name!r} has no mask token, so it cannot do masked LM")
        return int(tokenizer.hf.mask_token_id)
    return ByteTokenizer.vocab_size


def mask_batch(
    batch: dict[str, Tensor], mask_id: int, vocab: tuple[int, int], generator: torch.Generator
) -> dict[str, Tensor]:
    """BERT's masking of a packed batch: :data:`MLM_PROBABILITY` of the real tokens are predicted;
    of those 80% become ``mask_id``, 10% a random id in ``vocab`` ``[low, high)`` and 10% stay.
    Labels are the original ids there and -100 elsewhere."""
    ids = batch["input_ids"].clone()
    real = batch.get("attention_mask", torch.ones_like(ids)).bool()
    chosen = (torch.rand(ids.shape, generator=generator) < MLM_PROBABILITY) & real
    labels = torch.where(chosen, ids, torch.full_like(ids, -100))
    draw = torch.rand(ids.shape, generator=generator)
    random_ids = torch.randint(vocab[0], vocab[1], ids.shape, generator=generator)
    ids = torch.where(chosen & (draw < 0.8), torch.full_like(ids, mask_id), ids)
    ids = torch.where(chosen & (draw >= 0.8) & (draw < 0.9), random_ids, ids)
    return {**batch, "input_ids": ids, "labels": labels}


def masked_batches(
    batches: Iterator[dict[str, Tensor]], tokenizer: Tokenizer, seed: int
) -> Iterator[dict[str, Tensor]]:
    """The packed text batches, masked (seeded: the same run masks the same tokens)."""
    generator = torch.Generator().manual_seed(seed)
    mask_id = mask_token_id(tokenizer)
    low = ByteTokenizer.offset if not isinstance(tokenizer, HFTokenizer) else 0
    high = ByteTokenizer.vocab_size if not isinstance(tokenizer, HFTokenizer) else tokenizer.vocab_size
    for batch in batches:
        yield mask_batch(batch, mask_id, (low, high), generator)
