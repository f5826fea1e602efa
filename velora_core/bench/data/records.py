"""Dataset records from the hub, a local folder laid out like a hub repository, and local files.

Also which records a dataset gives for training and which for evaluation, and what kind they are.
"""

from __future__ import annotations

import itertools
import json
import stat
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, Literal

from velora_core.bench.data.examples import DataKind, alpaca_prompt
from velora_core.bench.data.multiple_choice import MCQuestion, format_mc_question
from velora_core.contract.hashing import unit_hash
from velora_core.contract.names import check_hub_id_not_on_disk
from velora_core.contract.presets.model_shapes import DATASETS
from velora_core.contract.spec import DatasetSpec

#: Where the built-in hub datasets load from by default: name -> (hub id, config).
HUB_DATASETS: dict[str, tuple[str, str | None]] = {
    "c4": ("allenai/c4", "en"),
    "alpaca": ("yahma/alpaca-cleaned", None),
    "mmlu": ("cais/mmlu", "all"),
}

#: Share of records held out for evaluation where a dataset has no evaluation split.
HOLDOUT_FRACTION = 0.05

Role = Literal["train", "eval"]


def hub_records(path_or_id: str, config: str | None, split: str) -> Iterator[dict[str, Any]]:
    """Stream the records of one split with ``datasets.load_dataset(..., streaming=True)``.

    ``path_or_id`` is a hub id or a local folder holding data files (and a README.md whose YAML
    front matter declares ``configs``). ``datasets`` runs no loading scripts, so no remote code runs.
    """
    import datasets  # imported here: it takes seconds and only these sources need it

    yield from datasets.load_dataset(path_or_id, config, split=split, streaming=True)


#: The longest line of a JSON Lines file read as one record.
MAX_RECORD_BYTES = 64 * 1024**2

_LOCAL_FORMATS = "a JSON Lines file (.jsonl), a JSON array (.json), a text file (.txt, .md) or a folder"


def _local_file(path: Path) -> Path:
    """``path`` if it is a regular file (symlinks followed), else a ValueError: a device such as
    ``/dev/zero`` or a FIFO would be read without end."""
    try:
        mode = path.stat().st_mode
    except OSError as exc:
        raise ValueError(f"local dataset {str(path)!r} cannot be read: {exc.strerror}") from None
    if not stat.S_ISREG(mode):
        raise ValueError(f"local dataset {str(path)!r} is not a regular file; expected {_LOCAL_FORMATS}")
    return path


def _json_record(text: str, where: str) -> dict[str, Any]:
    try:
        record = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(
            f"{where} is not JSON ({exc.msg} at column {exc.colno}); a local dataset is {_LOCAL_FORMATS}"
        ) from None
    if not isinstance(record, dict):
        raise ValueError(f"{where} is a JSON {type(record).__name__}, not an object of fields")
    return record


def local_records(path: str | Path, text_field: str = "text") -> Iterator[dict[str, Any]]:
    """Records of a local file: JSON Lines (``.jsonl``/``.json``), a JSON array, or plain text.

    A text file yields one record ``{text_field: paragraph}`` per blank-line-separated paragraph.

    Raises:
        ValueError: the path is not a regular file, is not UTF-8, or holds a line that is not a
            JSON object (the message gives the line); a line longer than :data:`MAX_RECORD_BYTES`.
    """
    path = _local_file(Path(path))
    try:
        if path.suffix in (".txt", ".text", ".md"):
            yield from _paragraphs(path, text_field)
            return
        if path.suffix == ".json":
            with path.open(encoding="utf-8") as handle:
                head = handle.read(4096).lstrip()
            if head.startswith("["):
                yield from _json_array(path)
                return
        with path.open(encoding="utf-8") as lines:
            for number, line in enumerate(iter(lambda: lines.readline(MAX_RECORD_BYTES + 1), ""), 1):
                if len(line) > MAX_RECORD_BYTES:
                    raise ValueError(f"{path}: line {number} is longer than {MAX_RECORD_BYTES} characters")
                if line.strip():
                    yield _json_record(line, f"{path}: line {number}")
    except UnicodeDecodeError:
        raise ValueError(f"{path} is not UTF-8 text; a local dataset is {_LOCAL_FORMATS}") from None


def _paragraphs(path: Path, text_field: str) -> Iterator[dict[str, Any]]:
    """``{text_field: paragraph}`` per blank-line-separated paragraph, read a line at a time (the
    file is never held whole: a dataset's size limit bounds the worker's memory, not a multiple of it)."""
    lines: list[str] = []
    size = 0
    with path.open(encoding="utf-8") as handle:
        for line in iter(lambda: handle.readline(MAX_RECORD_BYTES + 1), ""):
            if line.strip():
                lines.append(line)
                size += len(line)
                if size > MAX_RECORD_BYTES:
                    raise ValueError(f"{path}: a paragraph is longer than {MAX_RECORD_BYTES} characters")
                continue
            if lines:
                yield {text_field: "".join(lines).strip()}
            lines, size = [], 0
    if lines:
        yield {text_field: "".join(lines).strip()}


def _json_array(path: Path, chunk_chars: int = 1 << 20) -> Iterator[dict[str, Any]]:
    """The objects of a JSON array file, decoded one at a time from a sliding buffer (a 300 MB array
    read whole with ``json.loads`` peaked at 2.5 GB)."""
    decoder = json.JSONDecoder()
    with path.open(encoding="utf-8") as handle:
        buffer, position, index, ended = handle.read(chunk_chars), 0, 0, False
        position = len(buffer) - len(buffer.lstrip()) + 1  # past the opening "["
        while True:
            while position < len(buffer) and buffer[position] in " \t\r\n,":
                position += 1
            if position < len(buffer) and buffer[position] == "]":
                return
            try:
                record, end = decoder.raw_decode(buffer, position)
            except json.JSONDecodeError as exc:
                if ended:
                    raise ValueError(f"{path}: item {index} is not JSON ({exc.msg})") from None
                if len(buffer) - position > MAX_RECORD_BYTES:
                    raise ValueError(
                        f"{path}: item {index} is longer than {MAX_RECORD_BYTES} characters"
                    ) from None
                more = handle.read(chunk_chars)
                ended = not more
                buffer, position = buffer[position:] + more, 0
                continue
            if not isinstance(record, dict):
                raise ValueError(f"{path}: item {index} is a JSON {type(record).__name__}, not an object")
            yield record
            index += 1
            position = end
            if position > chunk_chars:  # drop what was decoded
                buffer, position = buffer[position:], 0


def _held_out(record: Mapping[str, Any]) -> bool:
    return unit_hash("holdout:" + json.dumps(record, sort_keys=True, default=str)) < HOLDOUT_FRACTION


def dataset_records(
    spec: DatasetSpec, role: Role, paths: Mapping[str, str]
) -> tuple[Iterator[dict[str, Any]], str]:
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
    elif spec.source == "hub" or Path(spec.name).is_dir():  # a local folder is read like a hub repository
        if spec.source == "hub":
            check_hub_id_not_on_disk(spec.name, "dataset.name")
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


def peek_kind(
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


def record_question(record: Mapping[str, Any]) -> MCQuestion:
    """A ``question``/``choices``/``answer`` record (MMLU's fields) as an :class:`MCQuestion`."""
    subject = str(record.get("subject") or "").replace("_", " ")
    return MCQuestion(
        str(record["question"]).strip(), tuple(record["choices"]), int(record["answer"]), subject
    )


def record_text(record: Mapping[str, Any], kind: DataKind, text_field: str) -> str:
    """A record as plain text for language modelling (instructions with their response, MC answered)."""
    if kind == "lm":
        return record[text_field]
    if kind == "instruct":
        return alpaca_prompt(record["instruction"], record.get("input") or "") + record["output"]
    return format_mc_question(record_question(record), with_answer=True)
