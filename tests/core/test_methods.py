"""The six original methods on a tiny LLaMA: each trains, and the memory reports order as expected."""

from __future__ import annotations

import pytest
import torch

from velora_core.contract.method_parts import BASES, TECHNIQUES
from velora_core.contract.method_settings import METHOD_CONFIGS
from velora_core.memory.report import measure_training_step
from velora_core.methods.optimizers import OPTIMIZERS
from velora_core.methods.registry import apply_step, prepare_model
from velora_core.models.loading import ModelSource

LORA = {"r": 4, "alpha": 8, "target_modules": ["v_proj", "down_proj"]}
VELORA = {"num_groups": 8, "scale": 1.0}
SETTINGS = {
    "full": {},
    "lora": {"lora": LORA},
    "qlora": {"lora": LORA, "quant": {"compute_dtype": "fp32"}},
    # In full training q/k/v_proj share one input tensor: all three must be wrapped to free it.
    "velora+full": {"velora": {**VELORA, "target_modules": ["q_proj", "k_proj", "v_proj", "down_proj"]}},
    "velora+lora": {"lora": LORA, "velora": VELORA},
    "velora+qlora": {"lora": LORA, "quant": {"compute_dtype": "fp32"}, "velora": VELORA},
}


METHODS = list(SETTINGS)


def test_registry_has_one_entry_per_part_and_the_six_names_are_still_offered():
    assert list(BASES) == ["full", "lora", "qlora", "galore", "lora-fa"]
    assert list(TECHNIQUES) == ["velora", "gc", "8bit", "offload"]
    assert list(METHOD_CONFIGS)[:6] == METHODS


def test_every_part_names_code_that_resolves_and_every_base_a_registered_optimizer():
    for part in [*BASES.values(), *TECHNIQUES.values()]:
        assert callable(apply_step(part)), part.name
    assert {b.name: b.optimizer for b in BASES.values()} == {
        "full": "adamw",
        "lora": "adamw",
        "qlora": "adamw",
        "galore": "galore",
        "lora-fa": "lorafa",
    }
    assert all(b.optimizer in OPTIMIZERS for b in BASES.values())
    assert all(k.eight_bit is None or k.eight_bit in OPTIMIZERS for k in OPTIMIZERS.values())


def test_a_part_naming_missing_code_is_a_lookup_error():
    from velora_core.contract.method_parts import MethodPart

    with pytest.raises(LookupError, match="bases:prepare_nothing"):
        apply_step(MethodPart("nothing", "no code", "bases:prepare_nothing", optimizer="adamw"))


def train(method: str, model_dir: str, batch: dict, steps: int = 6, lr: float = 1e-2):
    torch.manual_seed(0)
    prepared = prepare_model(method, ModelSource(path=model_dir), SETTINGS[method])
    model = prepared.model
    model.train()
    optimizer = torch.optim.AdamW(prepared.trainable_parameters, lr=lr)
    first, report = measure_training_step(model, batch, optimizer)
    losses = [first.item()]
    for _ in range(steps - 1):
        loss = model(**batch).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    return prepared, losses, report


@pytest.fixture(scope="module")
def results(tiny_llama_dir):
    gen = torch.Generator().manual_seed(1)
    ids = torch.randint(3, 96, (2, 24), generator=gen)
    batch = {"input_ids": ids, "labels": ids.clone()}
    return {m: train(m, tiny_llama_dir, batch) for m in METHODS}


@pytest.mark.parametrize("method", list(SETTINGS))
def test_each_method_trains(results, method):
    _, losses, _ = results[method]
    assert losses[-1] < losses[0] - 0.05, losses


def test_qlora_stores_fewer_weight_bytes_than_lora(results):
    lora, qlora = results["lora"][2], results["qlora"][2]
    assert "nf4" in qlora.weight_bytes_by_dtype
    assert qlora.weight_bytes < lora.weight_bytes
    # Only the attention/MLP projections are quantised; their share shrinks about 8x (fp32 -> 4 bit + state).
    assert qlora.weight_bytes_by_dtype["nf4"] < lora.weight_bytes * 0.2


@pytest.mark.parametrize(
    ("plain", "velora"), [("full", "velora+full"), ("lora", "velora+lora"), ("qlora", "velora+qlora")]
)
def test_velora_saves_the_predicted_activation_bytes(results, plain, velora):
    prepared, _, with_velora = results[velora]
    _, _, without = results[plain]
    assert prepared.velora_layers
    assert with_velora.predicted_activation_bytes > 0
    assert with_velora.velora_measured_bytes == with_velora.predicted_activation_bytes
    # Each wrapped layer no longer keeps its (T, D) fp32 input, only T·G projections plus v.
    tokens = 2 * 24
    # q/k/v_proj of one block read the same tensor: it is freed once.
    freed_inputs = {
        name.split(".self_attn.")[0] if ".self_attn." in name else name: prepared.model.get_submodule(
            name
        ).in_features
        for name in prepared.velora_layers
    }
    inputs = sum(tokens * width * 4 for width in freed_inputs.values())
    predicted_saving = inputs - with_velora.predicted_activation_bytes
    assert without.activation_bytes - with_velora.activation_bytes == pytest.approx(
        predicted_saving, rel=0.01
    )


def test_velora_on_v_proj_alone_frees_nothing_of_its_input_in_full_training(tiny_llama_dir, token_batch):
    """q_proj and k_proj still keep the tensor v_proj reads, so only down_proj's input is freed."""
    torch.manual_seed(0)
    prepared = prepare_model("velora+full", ModelSource(path=tiny_llama_dir), {"velora": VELORA})
    optimizer = torch.optim.AdamW(prepared.trainable_parameters, lr=1e-3)
    _, with_velora = measure_training_step(prepared.model, token_batch, optimizer)
    plain = prepare_model("full", ModelSource(path=tiny_llama_dir))
    _, without = measure_training_step(
        plain.model, token_batch, torch.optim.AdamW(plain.trainable_parameters)
    )
    down = [n for n in prepared.velora_layers if n.endswith("down_proj")]
    freed = sum(2 * 24 * prepared.model.get_submodule(n).in_features * 4 for n in down)
    assert (
        without.activation_bytes - with_velora.activation_bytes
        == freed - with_velora.predicted_activation_bytes
    )
