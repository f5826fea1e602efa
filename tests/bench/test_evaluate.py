"""Perplexity and multiple-choice accuracy against hand-computable models, and on a real tiny LLaMA."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
from torch import Tensor, nn
from transformers import LlamaConfig, LlamaForCausalLM

from velora_core.bench.data import (
    MCQuestion,
    answer_tokens,
    build_kshot_prompt,
    encode_mc_prompt,
    select_shots,
)
from velora_core.bench.evaluate.causal_lm import mc_accuracy, perplexity
from velora_core.contract.intervals import perplexity_interval, wilson
from velora_core.models.tokenizers import ByteTokenizer

BYTE = ByteTokenizer()
VOCAB = 320


class UniformLM(nn.Module):
    """Equal logits for every token: each prediction costs exactly log V nats."""

    def __init__(self, vocab: int = VOCAB) -> None:
        super().__init__()
        self.vocab = vocab
        self.weight = nn.Parameter(torch.zeros(()))  # gives the model a device

    def forward(self, input_ids: Tensor, attention_mask: Tensor | None = None) -> SimpleNamespace:
        return SimpleNamespace(logits=torch.zeros(*input_ids.shape, self.vocab) + self.weight)


class RepeatLM(nn.Module):
    """Logit ``c`` on the current token, 0 elsewhere: repeating costs ``log(e^c + V - 1) - c``."""

    def __init__(self, boost: float, vocab: int = VOCAB) -> None:
        super().__init__()
        self.boost, self.vocab = boost, vocab
        self.weight = nn.Parameter(torch.zeros(()))

    def forward(self, input_ids: Tensor, attention_mask: Tensor | None = None) -> SimpleNamespace:
        return SimpleNamespace(logits=nn.functional.one_hot(input_ids, self.vocab).float() * self.boost)


class PositionLetterLM(nn.Module):
    """At position ``t`` favours answer letter ``t % 4``; padding would show as wrong letters."""

    def __init__(self, letter_ids: list[int]) -> None:
        super().__init__()
        self.letter_ids = letter_ids
        self.weight = nn.Parameter(torch.zeros(()))

    def forward(self, input_ids: Tensor, attention_mask: Tensor | None = None) -> SimpleNamespace:
        batch, length = input_ids.shape
        logits = torch.zeros(batch, length, VOCAB)
        for t in range(length):
            logits[:, t, self.letter_ids[t % 4]] = 5.0
        return SimpleNamespace(logits=logits)


def tiny_llama() -> LlamaForCausalLM:
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=256,
    )
    return LlamaForCausalLM(config)


# ---------------------------------------------------------------------------------------------------
# Perplexity


def test_uniform_logits_have_perplexity_equal_to_the_vocabulary() -> None:
    blocks = torch.randint(0, VOCAB, (5, 12))
    result = perplexity(UniformLM(), blocks, batch_size=2)
    assert result.metric == "perplexity" and result.chance is None and result.num_examples == 5
    assert result.value == pytest.approx(VOCAB, rel=1e-6)
    assert result.details["tokens"] == 5 * 11


def test_perplexity_weights_tokens_not_batches() -> None:
    boost = 3.0
    repeat_nll = math.log(math.exp(boost) + VOCAB - 1) - boost  # target equals the current token
    change_nll = math.log(math.exp(boost) + VOCAB - 1)  # target differs
    blocks = torch.tensor([[7, 7, 7, 7, 7], [1, 2, 3, 0, 0]])
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]])
    # Row 0: four repeats; row 1: two changes (the padded tail is not predicted).
    expected = math.exp((4 * repeat_nll + 2 * change_nll) / 6)
    for batch_size in (1, 2):
        result = perplexity(RepeatLM(boost), blocks, batch_size=batch_size, attention_mask=mask)
        assert result.value == pytest.approx(expected, rel=1e-5)
        assert result.details["tokens"] == 6
    # The mean of per-row means would be different: the test tells the two apart.
    assert math.exp((repeat_nll + change_nll) / 2) != pytest.approx(expected, rel=1e-3)
    # The interval is over the blocks, each by its own mean NLL, in any batching.
    assert result.ci95 == pytest.approx(perplexity_interval([repeat_nll, change_nll]), rel=1e-4)


def test_one_block_has_no_interval_and_equal_blocks_a_point() -> None:
    assert perplexity(UniformLM(), torch.randint(0, VOCAB, (1, 12)), batch_size=1).ci95 is None
    ci = perplexity(UniformLM(), torch.randint(0, VOCAB, (4, 12)), batch_size=3).ci95
    assert ci == pytest.approx((VOCAB, VOCAB), rel=1e-6)  # every block costs log V: no spread


def test_perplexity_of_tiny_llama_matches_its_own_loss_and_restores_training_mode() -> None:
    model = tiny_llama()
    model.train()
    blocks = torch.randint(0, VOCAB, (5, 16), generator=torch.Generator().manual_seed(1))
    result = perplexity(model, blocks, batch_size=2)
    with torch.no_grad():
        loss = model.eval()(input_ids=blocks, labels=blocks).loss  # mean over all 5 x 15 predictions
    model.train()
    assert result.value == pytest.approx(math.exp(loss.item()), rel=1e-5)
    assert 1 < result.value < 2 * VOCAB
    assert model.training and all(p.grad is None for p in model.parameters())


def test_perplexity_rejects_blocks_without_predictions() -> None:
    with pytest.raises(ValueError, match="no token to predict"):
        perplexity(UniformLM(), torch.zeros((2, 1), dtype=torch.long), batch_size=1)


# ---------------------------------------------------------------------------------------------------
# Multiple-choice accuracy


def questions(count: int, subject: str = "") -> list[MCQuestion]:
    # Question texts of different lengths, so prompts differ in length and batches need padding.
    return [
        MCQuestion("Which one? " + "x" * i, ("alpha", "beta", "gamma", "delta"), i % 4, subject)
        for i in range(count)
    ]


def test_uniform_model_answers_a_and_scores_the_share_of_a() -> None:
    qs = questions(10)  # answers 0,1,2,3,0,... : three of ten are A
    result = mc_accuracy(UniformLM(), BYTE, [], qs, num_shots=0, batch_size=4)
    assert result.metric == "mc_accuracy" and result.num_examples == 10
    assert result.value == pytest.approx(0.3) and result.chance == pytest.approx(0.25)
    assert result.details["predicted_letters"] == {"A": 10}
    suffix, letters = answer_tokens(BYTE, 4)
    assert result.details["letter_token_ids"] == letters and result.details["suffix_token_ids"] == suffix
    # Each choice's log-likelihood is that of " X" (two bytes) under uniform logits.
    assert result.items.loglikelihoods[0] == [pytest.approx(-2 * math.log(VOCAB), abs=1e-5)] * 4
    assert result.items.correct == [q.answer == 0 for q in qs] and result.items.choice == [0] * 10


@pytest.mark.parametrize("batch_size", [1, 3, 16])
def test_letters_are_read_at_each_rows_last_real_token(batch_size: int) -> None:
    suffix, letters = answer_tokens(BYTE, 4)
    shots = questions(3)
    qs = []
    for q in questions(12):
        prompt = build_kshot_prompt(select_shots(shots, q, 2), q)
        length = len(encode_mc_prompt(BYTE, prompt, suffix, None)[0])
        # The answer letter does not change the prompt's length: make it the letter read at the last token.
        qs.append(MCQuestion(q.question, q.choices, (length - 1) % 4))
    assert len({q.answer for q in qs}) == 4  # all four letters occur
    result = mc_accuracy(PositionLetterLM(letters), BYTE, shots, qs, num_shots=2, batch_size=batch_size)
    assert result.value == 1.0 and result.details["questions_with_fewer_shots"] == 0
    assert result.details["shots_used"] == {"min": 2, "max": 2, "mean": 2.0}


def test_long_prompts_lose_their_first_tokens_as_in_the_harness() -> None:
    suffix, letters = answer_tokens(BYTE, 4)
    shots, qs = questions(5), questions(6)
    full = [encode_mc_prompt(BYTE, build_kshot_prompt(shots, q), suffix, None)[0] for q in qs]
    limit = min(map(len, full)) - 7
    result = mc_accuracy(
        PositionLetterLM(letters), BYTE, shots, qs, num_shots=5, batch_size=4, max_length=limit
    )
    # Every exemplar stays in the prompt; its first tokens (bos, the oldest exemplar's start) go.
    assert result.details["shots_used"] == {"min": 5, "max": 5, "mean": 5.0}
    assert result.details["questions_cut"] == 6 and result.details["mean_prompt_tokens"] == limit
    assert result.items.extra["tokens_cut"] == [len(ids) - limit for ids in full]
    # The letter read is the one at the last kept position: the model sees the left-cut prompt.
    assert result.items.choice == [(limit - 1) % 4] * 6


def test_a_question_with_fewer_exemplars_of_its_subject_says_so() -> None:
    shots = [*questions(3, "algebra"), *questions(5, "logic")]
    qs = [*questions(2, "algebra"), *questions(2, "logic")]
    result = mc_accuracy(UniformLM(), BYTE, shots, qs, num_shots=4, batch_size=4)
    assert result.items.extra["shots"] == [3, 3, 4, 4]
    assert result.details["questions_with_fewer_shots"] == 2


def test_accuracy_carries_its_wilson_interval() -> None:
    result = mc_accuracy(UniformLM(), BYTE, [], questions(10), num_shots=0, batch_size=4)
    assert result.ci95 == pytest.approx(wilson(3, 10))


def test_accuracy_by_subject_and_chance_with_unequal_choice_counts() -> None:
    qs = [*questions(4, "algebra"), MCQuestion("Two?", ("yes", "no"), 0, "logic")]
    result = mc_accuracy(UniformLM(), BYTE, questions(2, "algebra"), qs, num_shots=1, batch_size=2)
    assert {s: v["acc"] for s, v in result.details["by_subject"].items()} == {"algebra": 0.25, "logic": 1.0}
    assert result.details["by_subject"]["logic"]["ci95"] == pytest.approx(wilson(1, 1))
    assert result.details["mean_over_subjects"] == pytest.approx((0.25 + 1.0) / 2)
    assert result.details["mean_over_questions"] == pytest.approx(2 / 5) == result.value
    assert result.chance == pytest.approx((4 * 0.25 + 0.5) / 5)


def test_tiny_llama_mc_accuracy_does_not_depend_on_batching() -> None:
    model = tiny_llama()
    shots, qs = questions(3), questions(9)
    one = mc_accuracy(model, BYTE, shots, qs, num_shots=2, batch_size=1)
    batched = mc_accuracy(model, BYTE, shots, qs, num_shots=2, batch_size=4)
    assert 0.0 <= one.value <= 1.0
    assert one.value == batched.value
    assert one.details["predicted_letters"] == batched.details["predicted_letters"]
    assert model.training  # restored
