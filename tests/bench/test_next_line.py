"""The stdlib-next-line task: deterministic, split by file with nothing pre-training read in its test
items, four distinct endings; scored by continuation log-likelihood, where a tiny LLaMA trained for a
few seconds on a corpus whose lines depend on their file beats chance, and items are never cut."""

from __future__ import annotations

import random

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from velora_core.bench.data import ContinuationItem, continuation_examples, source_corpus, stdlib_next_line
from velora_core.bench.data.examples import pad_collate
from velora_core.bench.data.next_line import MAX_ITEMS_PER_FILE
from velora_core.bench.data.sources import stdlib_split
from velora_core.bench.evaluate.continuation import (
    _loglikelihoods,
    _shared_context_loglikelihoods,
    continuation_accuracy,
)
from velora_core.contract.intervals import wilson
from velora_core.models.tokenizers import ByteTokenizer

BYTE = ByteTokenizer()


def _names(split: str, count: int) -> list[str]:
    names = (f"pkg/mod_{i}.py" for i in range(10_000))
    return [n for n in names if stdlib_split(n) == split][:count]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> str:
    """Twelve files, each of lines of one letter (four letters, each in two training files and one
    held-out file): a line after a context is told from lines of other files only by the context."""
    root = tmp_path_factory.mktemp("corpus")
    for index, name in enumerate(_names("train", 8) + _names("validation", 4)):
        rng = random.Random(name)
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("".join("abcd"[index % 4] * rng.randint(6, 12) + "\n" for _ in range(100)))
    return str(root)


def test_items_are_deterministic_and_the_seed_changes_only_the_distractors(corpus: str) -> None:
    first = stdlib_next_line("test", 0, corpus)
    stdlib_next_line.cache_clear()
    assert stdlib_next_line("test", 0, corpus) == first
    other = stdlib_next_line("test", 1, corpus)
    assert {(i.context, i.endings[i.answer]) for i in other} == {
        (i.context, i.endings[i.answer]) for i in first
    }
    assert [i.endings for i in other] != [i.endings for i in first]


def test_test_items_come_from_held_out_files_with_distractors_from_elsewhere(corpus: str) -> None:
    test, train = stdlib_next_line("test", 0, corpus), stdlib_next_line("train", 0, corpus)
    validation = {f.path for f in source_corpus(corpus).split("validation")}
    assert test and {i.source for i in test} <= validation
    assert train and not {i.source for i in train} & validation
    assert len(test) <= MAX_ITEMS_PER_FILE * len(validation)
    lines_of = {f.path: set(f.text.split("\n")) for f in source_corpus(corpus).files}
    for item in test:
        assert len(item.endings) == len(set(item.endings)) == 4
        assert item.context.endswith("\n") and all(e.endswith("\n") for e in item.endings)
        assert item.endings[item.answer][:-1] in lines_of[item.source]
        for k, ending in enumerate(item.endings):
            if k != item.answer:
                assert any(ending[:-1] in lines for path, lines in lines_of.items() if path != item.source)


def test_the_real_test_split_holds_nothing_pre_training_reads() -> None:
    test = stdlib_next_line("test")
    assert len(test) >= 800  # the demo's 800 items, without repeats
    validation = {f.path for f in source_corpus().split("validation")}
    assert {i.source for i in test} <= validation
    train = {(i.context, i.endings[i.answer]) for i in stdlib_next_line("train")}
    assert not train & {(i.context, i.endings[i.answer]) for i in test}
    assert abs(sum(i.answer == 0 for i in test) / len(test) - 0.25) < 0.05


@pytest.mark.slow
def test_a_tiny_llama_trained_briefly_beats_chance(corpus: str) -> None:
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=320,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        max_position_embeddings=256,
    )
    model = LlamaForCausalLM(config)
    examples = continuation_examples(stdlib_next_line("train", 0, corpus), BYTE, seq_len=256)
    assert examples and all(int((labels != -100).sum()) >= 7 for _, labels in examples)  # the line and \n
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    rng = random.Random(0)
    for _ in range(60):
        batch = pad_collate(rng.sample(examples, 16), BYTE.pad_token_id)
        loss = model(**batch).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    test = list(stdlib_next_line("test", 0, corpus))
    result = continuation_accuracy(model, BYTE, test, batch_size=32)
    assert result.chance == pytest.approx(0.25) and result.num_examples == len(test)
    assert result.ci95 == pytest.approx(wilson(result.details["correct"], len(test)))
    assert result.ci95[0] > 0.25, result  # above chance by more than the interval's half-width


class _Uniform(torch.nn.Module):
    """Equal logits everywhere: every ending of equal length scores the same, ties go to the first."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(()))
        self.config = type("Config", (), {"max_position_embeddings": 24})()

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> object:
        return type("Out", (), {"logits": torch.zeros(*input_ids.shape, 320) + self.weight})()


def test_ties_go_to_the_first_ending_and_long_items_are_refused() -> None:
    items = [
        ContinuationItem("x = 1\n", ("aaaa\n", "bbbb\n", "cccc\n", "dddd\n"), answer) for answer in range(4)
    ]
    result = continuation_accuracy(_Uniform(), BYTE, items, batch_size=3)
    assert result.value == 0.25 and result.details["predicted_positions"] == {"0": 4}
    long = [ContinuationItem("y" * 30 + "\n", ("aaaa\n", "bbbb\n"), 0)]
    with pytest.raises(ValueError, match="longer than the model's 24 positions; it would have to be cut"):
        continuation_accuracy(_Uniform(), BYTE, long, batch_size=1)


def test_training_examples_lose_old_context_but_never_the_line() -> None:
    item = ContinuationItem("a" * 50 + "\n", ("bbbbbbbb\n", "cccccccc\n"), 0)
    (full,) = continuation_examples([item], BYTE, seq_len=100)
    assert len(full[0]) == 1 + 51 + 9 and int((full[1] != -100).sum()) == 9
    (cut,) = continuation_examples([item], BYTE, seq_len=20)
    assert len(cut[0]) == 20 and cut[0][0] == BYTE.bos_token_id
    assert BYTE.decode(cut[0][-9:].tolist()) == "bbbbbbbb\n" and int((cut[1] != -100).sum()) == 9
    assert continuation_examples([item], BYTE, seq_len=10) == []  # the line alone does not fit


def test_scoring_on_a_shared_context_cache_equals_scoring_each_row_whole() -> None:
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=320,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        max_position_embeddings=256,
    )
    model = LlamaForCausalLM(config).eval()
    items = list(stdlib_next_line("test"))[:9]  # contexts and endings of different lengths
    grouped = [(BYTE.encode(i.context, add_bos=True), [BYTE.encode(e) for e in i.endings]) for i in items]
    rows = [(context, ending) for context, endings in grouped for ending in endings]
    with torch.no_grad():
        whole = _loglikelihoods(model, rows, BYTE.pad_token_id, batch_size=5)
        shared = _shared_context_loglikelihoods(model, grouped, BYTE.pad_token_id, batch_size=4)
    assert shared == pytest.approx(whole, abs=1e-4)
