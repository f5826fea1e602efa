"""Data from hub-like folders and local files: the hub datasets' layouts offline, local JSON Lines,
text and Alpaca files, and the errors that name the file and the problem."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
import torch

from velora_core.bench import data
from velora_core.bench.data import (
    IGNORE_INDEX,
    MCEvalData,
    MCQuestion,
    alpaca_prompt,
    instruct_examples,
    load_eval_data,
    load_train_data,
)
from velora_core.bench.data.records import dataset_records
from velora_core.contract.spec import DatasetSpec, EvalSpec
from velora_core.models.tokenizers import ByteTokenizer

if TYPE_CHECKING:  # conftest is pytest's to import; its fixtures arrive as arguments
    from tests.bench.conftest import HubFolder

BYTE = ByteTokenizer()


def byte_ids(text: str) -> list[int]:
    return [b + 3 for b in text.encode()]


# ---------------------------------------------------------------------------------------------------
# Hub loaders, pointed at local folders laid out like the hub repositories


def test_c4_train_and_validation_from_a_hub_like_folder(c4_folder: HubFolder) -> None:
    spec = DatasetSpec(name="c4")
    paths = {"c4": str(c4_folder.path)}
    c4_text = {split: [r["text"] for r in rows] for split, rows in c4_folder.records.items()}
    train = load_train_data(spec, BYTE, seq_len=32, seed=0, dataset_paths=paths)
    text = BYTE.decode(torch.cat([ids for ids, _ in train.examples]).tolist())
    assert text.startswith(c4_text["train"][0]) and c4_text["train"][58] in text and "validation" not in text
    assert "train document 59" in text  # both shards were read (the last block's tail is dropped)
    evaluation = load_eval_data(
        EvalSpec(metric="perplexity", max_examples=4), spec, BYTE, 32, 0, dataset_paths=paths
    )
    assert evaluation.blocks.shape == (4, 32)
    assert BYTE.decode(evaluation.blocks.flatten().tolist()).startswith(c4_text["validation"][0])


def test_local_folder_dataset_reads_config_and_splits_like_the_hub(c4_folder: HubFolder) -> None:
    c4_text = {split: [r["text"] for r in rows] for split, rows in c4_folder.records.items()}
    spec = DatasetSpec(
        source="local", name=str(c4_folder.path), config="en", split="validation", eval_split="train"
    )
    train = load_train_data(spec, BYTE, seq_len=16, seed=0, max_examples=3)
    assert train.num_examples == 3
    assert BYTE.decode(train.examples[0][0].tolist()) == c4_text["validation"][0][:16]
    evaluation = load_eval_data(EvalSpec(metric="perplexity", max_examples=2), spec, BYTE, 16, 0)
    assert BYTE.decode(evaluation.blocks[0].tolist()) == c4_text["train"][0][:16]


def test_alpaca_holds_out_records_for_evaluation(alpaca_folder: HubFolder) -> None:
    paths = {"alpaca": str(alpaca_folder.path)}
    spec = DatasetSpec(name="alpaca")
    records = alpaca_folder.records["train"]
    held_out = [r for r in records if data._held_out(r)]
    assert 0 < len(held_out) < 30
    train = load_train_data(spec, BYTE, seq_len=512, seed=0, dataset_paths=paths)
    assert (train.kind, train.num_examples) == ("instruct", 200 - len(held_out))
    first_kept = next(r for r in records if not data._held_out(r))
    expected_ids, expected_labels = instruct_examples([first_kept], BYTE, 512)[0]
    assert torch.equal(train.examples[0][0], expected_ids) and torch.equal(
        train.examples[0][1], expected_labels
    )
    batch = next(train.batches(micro_batch=4, seed=0))
    assert ((batch["labels"] == IGNORE_INDEX) | (batch["labels"] == batch["input_ids"])).all()
    assert bool((batch["labels"][batch["attention_mask"] == 0] == IGNORE_INDEX).all())
    evaluation = load_eval_data(
        EvalSpec(metric="perplexity", max_examples=1000), spec, BYTE, 16, 0, dataset_paths=paths
    )
    # Exactly the held-out records, each as prompt + response + eos, packed into blocks of 16.
    expected = [
        t
        for r in held_out
        for t in BYTE.encode(alpaca_prompt(r["instruction"], r["input"]) + r["output"], add_eos=True)
    ]
    assert evaluation.blocks.flatten().tolist() == expected[: len(expected) // 16 * 16]


def test_mmlu_dev_shots_and_test_questions_from_a_hub_like_folder(mmlu_folder: HubFolder) -> None:
    paths = {"mmlu": str(mmlu_folder.path)}
    evaluation = load_eval_data(
        EvalSpec(metric="mc_accuracy", dataset=DatasetSpec(name="mmlu"), max_examples=5),
        DatasetSpec(name="alpaca"),
        BYTE,
        512,
        seed=0,
        dataset_paths=paths,
    )
    assert isinstance(evaluation, MCEvalData)
    assert len(evaluation.shots) == 10 and len(evaluation.questions) == 5
    row = mmlu_folder.records["dev"][5]  # the second subject's first exemplar
    assert evaluation.shots[5] == MCQuestion(
        row["question"], tuple(row["choices"]), row["answer"], "world religions"
    )
    tests = {
        MCQuestion(r["question"], tuple(r["choices"]), r["answer"], r["subject"].replace("_", " "))
        for r in mmlu_folder.records["test"]
    }
    assert set(evaluation.questions) <= tests
    train = load_train_data(DatasetSpec(name="mmlu"), BYTE, 512, 0, dataset_paths=paths)
    assert (train.kind, train.num_examples) == ("mc", 8)  # auxiliary_train


# ---------------------------------------------------------------------------------------------------
# Local files


def test_local_jsonl_text_and_separate_eval_file(tmp_path: Path) -> None:
    (tmp_path / "train.jsonl").write_text(
        "\n".join(json.dumps({"body": f"train line {i}"}) for i in range(20))
    )
    (tmp_path / "eval.jsonl").write_text(json.dumps({"body": "evaluation text " * 4}) + "\n")
    spec = DatasetSpec(
        source="local",
        name=str(tmp_path / "train.jsonl"),
        text_field="body",
        eval_split=str(tmp_path / "eval.jsonl"),
    )
    train = load_train_data(spec, BYTE, seq_len=8, seed=0)
    assert train.kind == "lm" and BYTE.decode(train.examples[0][0].tolist()) == "train li"
    evaluation = load_eval_data(EvalSpec(max_examples=2), spec, BYTE, 8, 0)
    assert BYTE.decode(evaluation.blocks.flatten().tolist()) == "evaluation text "


def test_local_text_file_paragraphs_and_local_alpaca(tmp_path: Path, alpaca_record_list) -> None:
    (tmp_path / "notes.txt").write_text("first paragraph\nstill first\n\n\nsecond")
    train = load_train_data(DatasetSpec(source="local", name=str(tmp_path / "notes.txt")), BYTE, 4, 0)
    packed = torch.cat([ids for ids, _ in train.examples]).tolist()
    # Two paragraphs, each followed by eos: 35 tokens, packed into 8 blocks of 4.
    assert packed == [*byte_ids("first paragraph\nstill first"), 2, *byte_ids("second"), 2][:32]
    (tmp_path / "alpaca.jsonl").write_text("\n".join(json.dumps(r) for r in alpaca_record_list(50)))
    instruct = load_train_data(DatasetSpec(source="local", name=str(tmp_path / "alpaca.jsonl")), BYTE, 512, 0)
    assert instruct.kind == "instruct" and instruct.num_examples == sum(
        not data._held_out(r) for r in alpaca_record_list(50)
    )
    (tmp_path / "bad.jsonl").write_text(json.dumps({"x": 1}) + "\n")
    with pytest.raises(ValueError, match="fields"):
        load_train_data(DatasetSpec(source="local", name=str(tmp_path / "bad.jsonl")), BYTE, 8, 0)


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (
            lambda d: Path("/etc/passwd"),
            r"/etc/passwd: line 1 is not JSON \(.*\); a local dataset is a JSON Lines",
        ),
        (lambda d: Path("/dev/zero"), "'/dev/zero' is not a regular file"),
        (lambda d: d / "missing.jsonl", "cannot be read: No such file or directory"),
        (lambda d: _fifo(d / "pipe.jsonl"), "is not a regular file"),
        (lambda d: _file(d / "list.jsonl", "[1, 2]\n"), "line 1 is a JSON list, not an object"),
        (lambda d: _file(d / "array.json", "[1]"), "item 0 is a JSON int, not an object"),
        (lambda d: _file(d / "binary.jsonl", b"\xff\xfe\x00"), "is not UTF-8 text"),
        (lambda d: _file(d / "ok.jsonl", '{"text": "a"}\n{"text": '), "line 2 is not JSON"),
    ],
)
def test_local_dataset_errors_name_the_file_and_the_problem(tmp_path: Path, make, message: str) -> None:
    spec = DatasetSpec(source="local", name=str(make(tmp_path)))
    with pytest.raises(ValueError, match=message):
        load_train_data(spec, BYTE, 8, 0)


def _file(path: Path, content: str | bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    return path


def _fifo(path: Path) -> Path:
    import os

    os.mkfifo(path)
    return path


def test_hub_dataset_id_that_names_a_folder_here_is_refused(tmp_path: Path, monkeypatch) -> None:
    # load_dataset("shadow") would read ./shadow instead of the hub repository.
    (tmp_path / "shadow").mkdir()
    (tmp_path / "shadow" / "train.jsonl").write_text('{"text": "a"}\n')
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ValueError, match=r"dataset.name 'shadow' is a hub id, but .*use source='local'"):
        dataset_records(DatasetSpec(source="hub", name="shadow"), "train", {})
