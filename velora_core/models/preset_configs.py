"""The transformers config of each built-in shape (``contract/presets/model_shapes.py``): LLaMA,
ViT or RoBERTa, for a model with random weights."""

from __future__ import annotations

from transformers import LlamaConfig, PretrainedConfig, RobertaConfig, ViTConfig

from velora_core.contract.presets.model_shapes import ModelPreset, RobertaPreset, ViTPreset


def llama_config(preset: ModelPreset) -> LlamaConfig:
    """A ``LlamaConfig`` of a preset's shape."""
    return LlamaConfig(
        hidden_size=preset.hidden_size,
        intermediate_size=preset.intermediate_size,
        num_attention_heads=preset.num_attention_heads,
        num_key_value_heads=preset.num_key_value_heads or preset.num_attention_heads,
        num_hidden_layers=preset.num_hidden_layers,
        vocab_size=preset.vocab_size,
        max_position_embeddings=preset.max_position_embeddings,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
        tie_word_embeddings=preset.tie_word_embeddings,
    )


def vit_config(preset: ViTPreset) -> ViTConfig:
    """A ``ViTConfig`` of a preset's shape."""
    return ViTConfig(
        hidden_size=preset.hidden_size,
        intermediate_size=preset.intermediate_size,
        num_attention_heads=preset.num_attention_heads,
        num_hidden_layers=preset.num_hidden_layers,
        image_size=preset.image_size,
        patch_size=preset.patch_size,
        num_channels=preset.num_channels,
    )


def roberta_config(preset: RobertaPreset) -> RobertaConfig:
    """A ``RobertaConfig`` of a preset's shape."""
    # RoBERTa numbers positions from pad_token_id + 1, hence the two extra position embeddings.
    return RobertaConfig(
        hidden_size=preset.hidden_size,
        intermediate_size=preset.intermediate_size,
        num_attention_heads=preset.num_attention_heads,
        num_hidden_layers=preset.num_hidden_layers,
        vocab_size=preset.vocab_size,
        max_position_embeddings=preset.max_position_embeddings + 2,
        hidden_dropout_prob=preset.dropout,
        attention_probs_dropout_prob=preset.dropout,
        type_vocab_size=1,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
    )


def preset_config(preset: ModelPreset | ViTPreset | RobertaPreset) -> PretrainedConfig:
    """The transformers config of a built-in shape."""
    if isinstance(preset, ViTPreset):
        return vit_config(preset)
    if isinstance(preset, RobertaPreset):
        return roberta_config(preset)
    return llama_config(preset)
