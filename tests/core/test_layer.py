"""VeLoRALinear and apply_velora: injection, v initialisation modes, evaluation behaviour, errors."""

from __future__ import annotations

import pytest
import torch
from peft import LoraConfig, get_peft_model
from torch import nn
from transformers import (
    LlamaForCausalLM,
    RobertaConfig,
    RobertaForSequenceClassification,
    ViTConfig,
    ViTModel,
)

from velora_core.contract.method_configs import VeLoRAConfig
from velora_core.velora.layer import VeLoRALinear, apply_velora, remove_velora
from velora_core.velora.projection import normalise, sub_token_mean

from .conftest import tiny_llama_config


def test_batch_average_once_sets_normalised_first_batch_mean_then_freezes():
    layer = VeLoRALinear(nn.Linear(12, 3), num_groups=3, init="batch_average_once")
    first, second = torch.randn(5, 12) + 1.0, torch.randn(5, 12) - 4.0
    layer(first).sum().backward()
    expected = first.reshape(-1, 4).mean(0)
    torch.testing.assert_close(layer.velora_v, expected / expected.norm())
    layer(second).sum().backward()
    torch.testing.assert_close(layer.velora_v, expected / expected.norm())  # frozen after the first batch
    assert bool(layer.velora_initialised)


def test_batch_average_follows_every_batch():
    layer = VeLoRALinear(nn.Linear(8, 2), num_groups=2, init="batch_average")
    for _ in range(2):
        x = torch.randn(6, 8) * 3
        layer(x).sum().backward()
        torch.testing.assert_close(layer.velora_v, normalise(sub_token_mean(x, 2)))


def test_ema_is_running_average_of_batch_means():
    layer = VeLoRALinear(nn.Linear(8, 2), num_groups=2, init="ema", ema_decay=0.75)
    a, b = torch.randn(4, 8) + 2, torch.randn(4, 8) - 1
    layer(a).sum().backward()
    layer(b).sum().backward()
    running = 0.75 * sub_token_mean(a, 2) + 0.25 * sub_token_mean(b, 2)
    torch.testing.assert_close(layer.velora_v, normalise(running))


def test_random_init_is_unit_and_fixed():
    torch.manual_seed(0)
    layer = VeLoRALinear(nn.Linear(8, 2), num_groups=4, init="random")
    before = layer.velora_v.clone()
    layer(torch.randn(3, 8)).sum().backward()
    torch.testing.assert_close(layer.velora_v, before)
    assert layer.velora_v.norm().item() == pytest.approx(1.0, abs=1e-6)


def test_eval_mode_and_no_grad_run_the_plain_layer():
    layer = VeLoRALinear(nn.Linear(8, 2), num_groups=4)
    x = torch.randn(3, 8)
    with torch.no_grad():
        out = layer(x)
    assert not bool(layer.velora_initialised)  # no_grad: v untouched
    torch.testing.assert_close(out, layer.base_layer(x))
    layer.eval()
    y = layer(x)
    assert y.grad_fn is not None and "VeLoRA" not in type(y.grad_fn).__name__
    assert not bool(layer.velora_initialised)


def test_apply_velora_on_trainable_linears_of_llama():
    model = LlamaForCausalLM(tiny_llama_config())
    names = apply_velora(model, VeLoRAConfig(num_groups=8))
    assert names == [
        "model.layers.0.self_attn.v_proj",
        "model.layers.0.mlp.down_proj",
        "model.layers.1.self_attn.v_proj",
        "model.layers.1.mlp.down_proj",
    ]
    assert isinstance(model.model.layers[0].mlp.down_proj, VeLoRALinear)
    ids = torch.randint(0, 96, (2, 10))
    model(input_ids=ids, labels=ids).loss.backward()
    assert model.model.layers[0].mlp.down_proj.weight.grad is not None
    assert remove_velora(model) == names
    assert type(model.model.layers[0].mlp.down_proj) is nn.Linear


def test_apply_velora_on_lora_wraps_lora_a():
    model = get_peft_model(
        LlamaForCausalLM(tiny_llama_config()),
        LoraConfig(r=4, target_modules=["v_proj", "down_proj", "q_proj"]),
    )
    names = apply_velora(model, VeLoRAConfig(num_groups=4, target_modules=["v_proj", "down_proj"]))
    assert len(names) == 4 and all(n.endswith(".lora_A.default") for n in names)
    assert not any("q_proj" in n for n in names)
    wrapped = model.base_model.model.model.layers[0].self_attn.v_proj.lora_A["default"]
    assert isinstance(wrapped, VeLoRALinear) and wrapped.num_groups == 4


def test_sub_token_size_sets_groups_per_layer():
    model = LlamaForCausalLM(tiny_llama_config())
    apply_velora(model, VeLoRAConfig(sub_token_size=16))
    assert model.model.layers[0].self_attn.v_proj.num_groups == 64 // 16
    assert model.model.layers[0].mlp.down_proj.num_groups == -(-176 // 16)


def test_roberta_and_vit_linear_layers():
    roberta = RobertaForSequenceClassification(
        RobertaConfig(
            hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64, vocab_size=50
        )
    )
    names = apply_velora(roberta, VeLoRAConfig(num_groups=4, target_modules=["value", r".*output\.dense"]))
    assert "roberta.encoder.layer.0.attention.self.value" in names
    out = roberta(input_ids=torch.randint(0, 50, (2, 7)), labels=torch.tensor([0, 1]))
    out.loss.backward()

    vit = ViTModel(
        ViTConfig(
            hidden_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            intermediate_size=64,
            image_size=16,
            patch_size=8,
        )
    )
    # The value projection's name differs across transformers versions; a regex covers both.
    names = apply_velora(vit, VeLoRAConfig(num_groups=8, target_modules=[r".*attention\.(value|v_proj)"]))
    assert len(names) == 1 and names[0].endswith(("value", "v_proj"))
    vit(pixel_values=torch.randn(2, 3, 16, 16)).last_hidden_state.sum().backward()


def test_matching_nothing_lists_available_names():
    model = LlamaForCausalLM(tiny_llama_config())
    with pytest.raises(ValueError, match=r"match no module.*'down_proj'.*'v_proj'"):
        apply_velora(model, VeLoRAConfig(target_modules=["value"]))


def test_unsupported_or_frozen_targets_are_named():
    model = LlamaForCausalLM(tiny_llama_config())
    with pytest.raises(ValueError, match=r"'model.embed_tokens' of type Embedding"):
        apply_velora(model, VeLoRAConfig(target_modules=["embed_tokens"]))
    model.requires_grad_(False)
    with pytest.raises(ValueError, match=r"frozen nn.Linear"):
        apply_velora(model, VeLoRAConfig(num_groups=8))


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"num_groups": 0}, "greater than or equal to 1"),
        ({"num_groups": 4, "sub_token_size": 8}, "exactly one of num_groups and sub_token_size"),
        ({"init": "svd"}, "Input should be 'batch_average_once', 'batch_average', 'ema' or 'random'"),
        ({"init": "ema:1.5"}, "ema_decay\n  Input should be less than 1"),
        ({"init": "ema:x"}, "the decay after 'ema:' must be a number"),
        ({"init": "ema"}, "init 'ema' needs ema_decay"),
        ({"init": "ema", "ema_decay": 0}, "ema_decay\n  Input should be greater than 0"),
        ({"init": "random", "ema_decay": 0.9}, "ema_decay is only used with init 'ema', not 'random'"),
        ({"init": "ema:0.9", "ema_decay": 0.8}, "give only ema_decay"),
        ({"scale": -1}, "greater than 0"),
        ({"target_modules": ["("]}, "not a regular expression this server accepts"),
        ({"target_modules": []}, "at least 1 item"),
    ],
)
def test_config_rejects_bad_values(settings, message):
    with pytest.raises(ValueError, match=message):
        VeLoRAConfig(**settings)


def test_old_ema_string_is_read_as_typed_init_and_decay():
    old = VeLoRAConfig.model_validate({"init": "ema:0.9"})
    assert (old.init, old.ema_decay) == ("ema", 0.9)
    assert old == VeLoRAConfig(init="ema", ema_decay=0.9)
    assert old.model_dump()["init"] == "ema" and old.model_dump()["ema_decay"] == 0.9


def test_config_without_ema_serialises_as_before_the_decay_field():
    # Specs (and their hashes, which name pre-trained artifacts) keep their old JSON.
    assert "ema_decay" not in VeLoRAConfig().model_dump(mode="json")
    assert VeLoRAConfig.model_validate(VeLoRAConfig().model_dump(mode="json")) == VeLoRAConfig()


def test_apply_velora_passes_the_ema_decay_to_each_layer():
    model = LlamaForCausalLM(tiny_llama_config())
    apply_velora(model, VeLoRAConfig(num_groups=8, init="ema", ema_decay=0.6))
    layers = [m for m in model.modules() if isinstance(m, VeLoRALinear)]
    assert layers and {(m.init, m.ema_decay) for m in layers} == {("ema", 0.6)}


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"init": "ema"}, "init 'ema' needs ema_decay"),
        ({"init": "ema:0.9"}, "unknown init 'ema:0.9'"),
        ({"init": "batch_average", "ema_decay": 0.5}, "only used with init 'ema'"),
        ({"init": "ema", "ema_decay": 1.0}, "strictly between 0 and 1"),
    ],
)
def test_layer_rejects_an_init_and_decay_that_do_not_fit(kwargs, message):
    with pytest.raises(ValueError, match=message):
        VeLoRALinear(nn.Linear(8, 2), num_groups=2, **kwargs)


def test_too_many_groups_for_a_layer():
    with pytest.raises(ValueError, match="exceeds the layer's 64 input features"):
        apply_velora(LlamaForCausalLM(tiny_llama_config()), VeLoRAConfig(num_groups=65))


def test_loaded_state_keeps_the_frozen_projection():
    trained = VeLoRALinear(nn.Linear(8, 2), num_groups=2)
    trained(torch.randn(4, 8) + 3).sum().backward()
    fresh = VeLoRALinear(nn.Linear(8, 2), num_groups=2)
    fresh.load_state_dict(trained.state_dict())
    fresh(torch.randn(4, 8) - 5).sum().backward()  # must not re-initialise v from this batch
    torch.testing.assert_close(fresh.velora_v, trained.velora_v)
