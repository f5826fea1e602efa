"""Tiny models for the core tests, built and saved locally (no downloads)."""

from __future__ import annotations

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM


def tiny_llama_config(**overrides) -> LlamaConfig:
    params = dict(
        hidden_size=64,
        intermediate_size=176,
        num_attention_heads=4,
        num_hidden_layers=2,
        vocab_size=96,
        max_position_embeddings=128,
        tie_word_embeddings=False,
    )
    params.update(overrides)
    return LlamaConfig(**params)


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory) -> str:
    """A tiny LLaMA with fixed random weights saved with save_pretrained."""
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("tiny-llama")
    LlamaForCausalLM(tiny_llama_config()).save_pretrained(path)
    return str(path)


@pytest.fixture
def token_batch() -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(1)
    ids = torch.randint(3, 96, (2, 24), generator=gen)
    return {"input_ids": ids, "labels": ids.clone()}
