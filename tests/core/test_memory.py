"""Memory accounting: saved bytes against the formula, and the report's components."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from velora_core.memory.report import measure_training_step
from velora_core.memory.saved_tensors import SavedTensorMeter
from velora_core.memory.tensor_bytes import parameter_bytes
from velora_core.methods.registry import prepare_model
from velora_core.models.loading import ModelSource
from velora_core.velora.layer import VeLoRALinear


@pytest.mark.parametrize(
    ("tokens", "d", "g", "dtype"),
    [((4, 64), 256, 8, torch.float32), ((2, 33), 96, 32, torch.bfloat16), ((50,), 100, 7, torch.float16)],
)
def test_wrapped_layer_saves_t_times_g_elements_plus_v(tokens, d, g, dtype):
    layer = VeLoRALinear(nn.Linear(d, 16, dtype=dtype), num_groups=g)
    x = torch.randn(*tokens, d, dtype=dtype)  # input needs no gradient: nothing but z and v is needed
    meter = SavedTensorMeter(layer)
    with meter.measuring():
        y = layer(x)
    y.float().sum().backward()
    t = x.numel() // d
    element = torch.empty((), dtype=dtype).element_size()
    expected = t * g * element + layer.velora_v.numel() * layer.velora_v.element_size()
    assert meter.activation_bytes == pytest.approx(expected, rel=0.01)
    assert meter.velora_bytes == meter.activation_bytes
    # The plain layer saves the whole input: D / G times more.
    plain = nn.Linear(d, 16, dtype=dtype)
    plain_meter = SavedTensorMeter(plain)
    with plain_meter.measuring():
        plain(x).float().sum().backward()
    assert plain_meter.activation_bytes == t * d * element


def test_parameter_bytes_counts_frozen_trainable_and_dtypes():
    model = nn.Sequential(nn.Linear(10, 4), nn.Linear(4, 2, dtype=torch.bfloat16))
    model[1].requires_grad_(False)
    counts = parameter_bytes(model)
    assert counts["trainable_bytes"] == (10 * 4 + 4) * 4
    assert counts["weight_bytes"] == (4 * 2 + 2) * 2
    assert counts["weight_bytes_by_dtype"] == {"bfloat16": 20}
    assert counts["total_params"] == 44 + 10


def test_measure_training_step_components(tiny_llama_dir, token_batch):
    prepared = prepare_model("lora", ModelSource(path=tiny_llama_dir), {"lora": {"r": 4}})
    model = prepared.model
    model.train()
    optimizer = torch.optim.AdamW(prepared.trainable_parameters, lr=1e-3)
    _, report = measure_training_step(model, token_batch, optimizer)
    trainable = sum(p.numel() * 4 for p in prepared.trainable_parameters)
    assert report.trainable_bytes == trainable
    assert report.gradient_bytes == trainable
    assert report.optimizer_bytes == 2 * trainable + 4 * len(
        prepared.trainable_parameters
    )  # exp_avg, exp_avg_sq, step
    assert report.weight_bytes == sum(p.numel() * 4 for p in model.parameters() if not p.requires_grad)
    assert report.activation_bytes > 0 and report.peak_bytes is None
    assert report.predicted_activation_bytes == 0
    assert all(p.grad is None for p in prepared.trainable_parameters)
