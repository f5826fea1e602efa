"""Training and evaluation data: the offline built-ins, hub-like folders and local files."""

from __future__ import annotations

import itertools
import re
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
import torch

from velora_core.bench import data
from velora_core.bench.data import (
    IGNORE_INDEX,
    LMEvalData,
    MCEvalData,
    MCQuestion,
    TrainData,
    alpaca_prompt,
    answer_tokens,
    build_kshot_prompt,
    encode_mc_prompt,
    format_mc_question,
    instruct_examples,
    lm_blocks,
    load_eval_data,
    load_train_data,
    mc_examples,
    pad_collate,
    select_shots,
    source_corpus,
    stdlib_documents,
    stdlib_mc,
)
from velora_core.contract.spec import DatasetSpec, EvalSpec
from velora_core.models.tokenizers import ByteTokenizer, HFTokenizer

if TYPE_CHECKING:  # conftest is pytest's to import; its fixtures arrive as arguments
    pass

BYTE = ByteTokenizer()


def byte_ids(text: str) -> list[int]:
    return [b + 3 for b in text.encode()]


# ---------------------------------------------------------------------------------------------------
# Standard-library corpus


def _write(path: Path, text: str | bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(text if isinstance(text, bytes) else text.encode())


def test_source_corpus_skips_tests_packages_huge_and_non_utf8_files(tmp_path: Path) -> None:
    for relative in (
        "os.py",
        "json/decoder.py",
        "json/tests/t.py",
        "test/test_os.py",
        "idlelib/idle_test/x.py",
        "site-packages/pkg/m.py",
        "lib2to3/tests/data.py",
    ):
        _write(tmp_path / relative, "x = 1\n")
    _write(tmp_path / "huge.py", "#" * 1000)
    _write(tmp_path / "latin1.py", b"s = '\xe9'\n")
    corpus = source_corpus(str(tmp_path), max_file_bytes=999)
    assert [f.path for f in corpus.files] == ["json/decoder.py", "os.py"]


def test_source_corpus_fingerprint_follows_content(tmp_path: Path) -> None:
    for name in ("a", "b"):
        _write(tmp_path / name / "m.py", "x = 1\n")
    _write(tmp_path / "c" / "m.py", "x = 2\n")
    a, b, c = (source_corpus(str(tmp_path / name)) for name in "abc")
    assert a.fingerprint == b.fingerprint != c.fingerprint
    assert len(a.fingerprint) == 16


def test_stdlib_corpus_is_split_by_file() -> None:
    corpus = source_corpus()
    paths = [f.path for f in corpus.files]
    assert paths == sorted(paths) and len(paths) > 300
    assert not [p for p in paths if {"test", "tests", "idle_test", "site-packages"} & set(p.split("/"))]
    assert "os.py" in paths and "json/decoder.py" in paths
    train, validation = corpus.split("train"), corpus.split("validation")
    assert len(train) + len(validation) == len(paths)
    assert not {f.path for f in train} & {f.path for f in validation}
    assert 0.02 < len(validation) / len(paths) < 0.10
    assert source_corpus() is corpus  # parsed once per process


def test_stdlib_documents_respects_the_byte_budget() -> None:
    files = stdlib_documents("train", max_bytes=200_000)
    assert 0 < sum(len(f.text.encode()) for f in files) <= 200_000
    # A fixed mixed order: the budget does not just take the alphabetically first modules.
    assert files == stdlib_documents("train", max_bytes=200_000)
    assert [f.path for f in files] != sorted(f.path for f in files)


# ---------------------------------------------------------------------------------------------------
# stdlib-mc


def test_stdlib_mc_sizes_and_question_shape() -> None:
    task = stdlib_mc(0)
    sizes = {split: len(qs) for split, qs in task.items()}
    assert sizes["train"] > 3000 and sizes["dev"] >= 25 and sizes["test"] >= 200
    for q in itertools.chain(*task.values()):
        assert len(q.choices) == 4 and len(set(q.choices)) == 4 and 0 <= q.answer < 4
        assert not re.search(rf"\b{re.escape(q.choices[q.answer])}\b", q.question, re.IGNORECASE)
        assert len(q.question) <= data.MAX_QUESTION_CHARS + 4
    # The answer's position is uniform: each letter about a quarter of the training answers.
    counts = Counter(q.answer for q in task["train"])
    assert all(0.2 < counts[k] / sizes["train"] < 0.3 for k in range(4))


def test_stdlib_mc_splits_are_disjoint_and_test_is_the_corpus_validation() -> None:
    task = stdlib_mc(0)
    texts = {split: {q.question for q in qs} for split, qs in task.items()}
    assert not texts["train"] & texts["test"] and not texts["train"] & texts["dev"]
    assert not texts["dev"] & texts["test"]
    for f in source_corpus().files:
        assert (data._mc_split(f.path) == "test") == (data.stdlib_split(f.path) == "validation")


def test_stdlib_mc_is_deterministic_given_the_seed() -> None:
    rebuilt = stdlib_mc.__wrapped__(0)  # bypass the cache: build it again
    assert rebuilt == stdlib_mc(0)
    other = stdlib_mc(1)
    assert {q.question for q in other["test"]} == {q.question for q in rebuilt["test"]}
    assert [q.choices for q in other["test"]] != [q.choices for q in rebuilt["test"]]


# ---------------------------------------------------------------------------------------------------
# Multiple-choice formatting and answer letters

QUESTION = MCQuestion("What is 2 + 2?", ("3", "4", "5", "22"), 1)


def test_format_mc_question_is_the_harness_mmlu_layout_without_a_prefix() -> None:
    assert (
        format_mc_question(QUESTION, with_answer=False) == "What is 2 + 2?\nA. 3\nB. 4\nC. 5\nD. 22\nAnswer:"
    )
    assert format_mc_question(QUESTION, with_answer=True).endswith("\nD. 22\nAnswer: B")


def test_build_kshot_prompt_joins_answered_shots_and_adds_the_subject_header() -> None:
    shot = MCQuestion("1 + 1?", ("2", "3"), 0)
    assert build_kshot_prompt([shot], QUESTION) == (
        "1 + 1?\nA. 2\nB. 3\nAnswer: A\n\nWhat is 2 + 2?\nA. 3\nB. 4\nC. 5\nD. 22\nAnswer:"
    )
    with_subject = MCQuestion("q?", ("a", "b"), 0, subject="world religions")
    assert build_kshot_prompt([], with_subject) == (
        "The following are multiple choice questions (with answers) about world religions.\n\n"
        "q?\nA. a\nB. b\nAnswer:"
    )


def test_select_shots_takes_only_the_same_subject() -> None:
    shots = [MCQuestion(f"s{i}", ("a", "b"), 0, subject="x" if i % 2 else "y") for i in range(6)]
    assert [s.question for s in select_shots(shots, MCQuestion("q", ("a", "b"), 0, "x"), 2)] == ["s1", "s3"]
    # Fewer of its subject than asked: what there is, never another subject's.
    assert [s.question for s in select_shots(shots, MCQuestion("q", ("a", "b"), 0, "x"), 5)] == [
        "s1",
        "s3",
        "s5",
    ]
    assert select_shots(shots, MCQuestion("q", ("a", "b"), 0, "z"), 2) == []
    assert [s.question for s in select_shots(shots, QUESTION, 3)] == ["s0", "s1", "s2"]
    assert select_shots(shots, QUESTION, 0) == []


def test_answer_tokens_for_the_byte_tokenizer_are_space_then_letter() -> None:
    suffix, letters = answer_tokens(BYTE, 4)
    assert suffix == byte_ids(" ")
    assert letters == [byte_ids(letter)[0] for letter in "ABCD"]


def test_answer_tokens_for_a_bpe_tokenizer_decode_to_the_letters(hf_tokenizer_dir: Path) -> None:
    tok = HFTokenizer(hf_tokenizer_dir)
    suffix, letters = answer_tokens(tok, 4)
    assert [tok.decode([*suffix, letter]) for letter in letters] == [" A", " B", " C", " D"]
    prompt = format_mc_question(QUESTION, with_answer=False)
    ids, _ = encode_mc_prompt(tok, prompt, suffix, None)
    # GPT-2-like: the tokenizer adds no bos of its own, so neither does the prompt (as in the harness).
    assert not tok.adds_bos and tok.decode(ids) == prompt + tok.decode(suffix)


def test_answer_tokens_reject_letters_split_unevenly(tmp_path: Path, bpe_tokenizer_factory) -> None:
    # Trained so that " A" is one token but " B" is two: the letters cannot be compared token for token.
    tok = HFTokenizer(bpe_tokenizer_factory(tmp_path, ["Answer: A"] * 20 + ["B C D"]))
    with pytest.raises(ValueError, match="one distinct token"):
        answer_tokens(tok, 4)


def test_encode_mc_prompt_cuts_from_the_left_like_the_harness() -> None:
    ids, cut = encode_mc_prompt(BYTE, "abcdef", [35], max_length=4)
    assert (ids, cut) == (byte_ids("def "), 4)  # bos, "a", "b", "c" go
    ids, cut = encode_mc_prompt(BYTE, "ab", [35], max_length=10)
    assert (ids, cut) == ([1, *byte_ids("ab ")], 0)


# ---------------------------------------------------------------------------------------------------
# Tokenised examples


def test_lm_blocks_pack_documents_with_eos_and_drop_the_remainder() -> None:
    blocks = lm_blocks(["ab", "cde", "f"], BYTE, seq_len=3)
    a, b, c, d, e, f = byte_ids("abcdef")
    assert blocks.dtype == torch.long
    # ids: a b eos c d e eos f eos -> three full blocks, nothing left over
    assert blocks.tolist() == [[a, b, 2], [c, d, e], [2, f, 2]]
    assert lm_blocks(["ab", "cde", "f"], BYTE, seq_len=4).tolist() == [[a, b, 2, c], [d, e, 2, f]]
    assert lm_blocks(["a"], BYTE, seq_len=8).shape == (0, 8)


def test_lm_blocks_stop_reading_at_max_blocks() -> None:
    read = []

    def stream() -> Iterator[str]:
        for i in itertools.count():
            read.append(i)
            yield "x" * 9  # 10 tokens with eos

    blocks = lm_blocks(stream(), BYTE, seq_len=5, max_blocks=3)
    assert blocks.shape == (3, 5)
    assert read == [0, 1]  # 20 tokens cover 15: the stream was not read further


def test_instruct_examples_mask_the_prompt() -> None:
    record = {"instruction": "Say hi.", "input": "", "output": "hi"}
    ((ids, labels),) = instruct_examples([record], BYTE, seq_len=512)
    prompt = [1, *byte_ids(alpaca_prompt("Say hi."))]
    assert ids.tolist() == [*prompt, *byte_ids("hi"), 2]
    assert labels.tolist() == [IGNORE_INDEX] * len(prompt) + [*byte_ids("hi"), 2]
    assert "### Input:" not in alpaca_prompt("Say hi.") and "### Input:\nctx\n\n" in alpaca_prompt(
        "Say hi.", "ctx"
    )
    # Cut to seq_len; a prompt that fills seq_len leaves nothing to learn and is skipped.
    ((ids, labels),) = instruct_examples([record], BYTE, seq_len=len(prompt) + 1)
    assert labels.tolist()[-1] == byte_ids("h")[0] and len(ids) == len(prompt) + 1
    assert instruct_examples([record], BYTE, seq_len=len(prompt)) == []


def test_mc_examples_train_only_the_answer_letter() -> None:
    ((ids, labels),) = mc_examples([QUESTION], BYTE, seq_len=512)
    text = format_mc_question(QUESTION, with_answer=True)  # "... Answer: B"
    assert ids.tolist() == [1, *byte_ids(text)]
    assert labels.tolist() == [IGNORE_INDEX] * (len(ids) - 1) + byte_ids("B")
    ((short, _),) = mc_examples([QUESTION], BYTE, seq_len=16)
    assert len(short) == 16 and short[0] != 1 and BYTE.decode(short.tolist()).endswith("Answer: B")


def test_pad_collate_right_pads() -> None:
    batch = pad_collate(
        [(torch.tensor([5, 6, 7]), torch.tensor([-100, 6, 7])), (torch.tensor([8]), torch.tensor([8]))], 0
    )
    assert batch["input_ids"].tolist() == [[5, 6, 7], [8, 0, 0]]
    assert batch["labels"].tolist() == [[-100, 6, 7], [8, -100, -100]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]


def _numbered(n: int) -> TrainData:
    examples = [(torch.tensor([i, i]), torch.tensor([i, i])) for i in range(n)]
    return TrainData(examples, 0, "lm", "f", "numbered")


def test_train_batches_visit_every_example_once_per_epoch_and_run_on() -> None:
    stream = _numbered(10).batches(micro_batch=4, seed=3)
    seen = [row[0] for batch in itertools.islice(stream, 5) for row in batch["input_ids"].tolist()]
    assert sorted(seen[:10]) == list(range(10)) and sorted(seen[10:20]) == list(range(10))
    assert seen[:10] != seen[10:20]  # each epoch has its own order
    again = [
        row[0]
        for batch in itertools.islice(_numbered(10).batches(4, 3), 5)
        for row in batch["input_ids"].tolist()
    ]
    assert again == seen
    other = [
        row[0]
        for batch in itertools.islice(_numbered(10).batches(4, 4), 5)
        for row in batch["input_ids"].tolist()
    ]
    assert other != seen
    # More rows per batch than examples: still full batches.
    assert next(_numbered(3).batches(micro_batch=8, seed=0))["input_ids"].shape == (8, 2)


# ---------------------------------------------------------------------------------------------------
# load_train_data / load_eval_data on the offline built-ins


def test_load_train_data_stdlib_corpus_packs_blocks() -> None:
    spec = DatasetSpec(name="stdlib-corpus", max_examples=64)
    train = load_train_data(spec, BYTE, seq_len=128, seed=0)
    assert (train.kind, train.num_examples, train.tokens_per_epoch) == ("lm", 64, 64 * 128)
    batch = next(train.batches(micro_batch=8, seed=0))
    assert batch["input_ids"].shape == (8, 128) and batch["input_ids"].dtype == torch.long
    assert torch.equal(batch["labels"], batch["input_ids"]) and bool(batch["attention_mask"].all())
    assert load_train_data(spec, BYTE, seq_len=128, seed=1).fingerprint == train.fingerprint
    assert load_train_data(spec, BYTE, seq_len=64, seed=0).fingerprint != train.fingerprint
    # The engine's bound and the spec's: the smaller wins.
    assert load_train_data(spec, BYTE, seq_len=128, seed=0, max_examples=10).num_examples == 10
    assert "standard library" in train.description


def test_load_train_data_stdlib_mc_trains_the_letter() -> None:
    train = load_train_data(DatasetSpec(name="stdlib-mc", max_examples=50), BYTE, seq_len=256, seed=0)
    assert (train.kind, train.num_examples) == ("mc", 50)
    batch = next(train.batches(micro_batch=4, seed=0))
    assert batch["input_ids"].shape[1] <= 256
    letters = set(answer_tokens(BYTE, 4)[1])
    for labels in batch["labels"]:
        trained = labels[labels != IGNORE_INDEX].tolist()
        assert len(trained) == 1 and trained[0] in letters


def test_load_eval_data_stdlib_perplexity_uses_validation_files() -> None:
    spec = DatasetSpec(name="stdlib-corpus")
    evaluation = load_eval_data(
        EvalSpec(metric="perplexity", max_examples=20), spec, BYTE, seq_len=64, seed=0
    )
    assert isinstance(evaluation, LMEvalData) and evaluation.blocks.shape == (20, 64)
    first = source_corpus().split("validation")[0].text
    assert BYTE.decode(evaluation.blocks[0].tolist()) == first.encode()[:64].decode(errors="replace")
    assert load_eval_data(EvalSpec(metric="none"), spec, BYTE, 64, 0) is None


def test_load_eval_data_stdlib_mc_samples_test_questions() -> None:
    spec = DatasetSpec(name="stdlib-mc")
    evaluation = load_eval_data(EvalSpec(metric="mc_accuracy", max_examples=100), spec, BYTE, 256, seed=0)
    assert isinstance(evaluation, MCEvalData)
    assert len(evaluation.questions) == 100 and set(evaluation.questions) <= set(stdlib_mc(0)["test"])
    assert evaluation.shots == list(stdlib_mc(0)["dev"])
    again = load_eval_data(EvalSpec(metric="mc_accuracy", max_examples=100), spec, BYTE, 256, seed=0)
    assert again.questions == evaluation.questions and again.fingerprint == evaluation.fingerprint
    with pytest.raises(ValueError, match="multiple-choice"):
        load_eval_data(EvalSpec(metric="mc_accuracy"), DatasetSpec(name="stdlib-corpus"), BYTE, 256, 0)
