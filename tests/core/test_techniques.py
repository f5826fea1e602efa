"""The new bases (GaLore, LoRA-FA) and techniques (gradient checkpointing, 8-bit AdamW, offloading)
on a tiny LLaMA: each trains, and memory moves the way the technique says."""

from __future__ import annotations

import pytest
import torch

from velora_core.contract.spec import OptimizerSpec
from velora_core.memory.report import step_report
from velora_core.memory.saved_tensors import SavedTensorMeter, training_forward
from velora_core.memory.tensor_bytes import gradient_bytes
from velora_core.methods.optimizers import build_optimizer
from velora_core.methods.registry import prepare_model
from velora_core.models.loading import ModelSource

pytestmark = pytest.mark.slow  # ten tiny models, each trained for six steps

LORA = {"r": 4, "alpha": 8, "target_modules": ["v_proj", "down_proj"]}
GALORE = {"rank": 8, "update_proj_gap": 50, "scale": 0.25}
SETTINGS = {
    "full": {},
    "full+gc": {},
    "lora": {"lora": LORA},
    "lora+gc": {"lora": LORA},
    "lora-fa": {"lora": LORA},
    "galore": {"galore": GALORE},
    "full+8bit": {},
    "lora+8bit": {"lora": LORA},
    "velora+lora+gc": {"lora": LORA, "velora": {"num_groups": 8}},
    "velora+galore": {"galore": GALORE, "velora": {"num_groups": 8}},
}


def train(method: str, model_dir: str, batch: dict, steps: int = 6, offload=None):
    """``steps`` training steps as the trainer takes them; the first one measured."""
    torch.manual_seed(0)
    prepared = prepare_model(method, ModelSource(path=model_dir), SETTINGS.get(method, {}))
    prepared.model.train()
    hooks = offload or prepared.saved_tensors_hooks
    optimizer = build_optimizer(prepared, OptimizerSpec(lr=1e-2))
    losses, report = [], None
    for step in range(steps):
        meter = SavedTensorMeter(prepared.model, hooks and hooks()) if step == 0 else None
        with training_forward(prepared.model, hooks, meter):
            loss = prepared.model(**batch).loss
        loss.backward()
        grads = gradient_bytes(prepared.model)
        optimizer.step()
        if meter is not None:
            report = step_report(prepared.model, meter, grads, optimizer, torch.device("cpu"))
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.item())
    return prepared, optimizer, losses, report


@pytest.fixture(scope="module")
def results(tiny_llama_dir):
    gen = torch.Generator().manual_seed(1)
    ids = torch.randint(3, 96, (2, 24), generator=gen)
    batch = {"input_ids": ids, "labels": ids.clone()}
    return {m: train(m, tiny_llama_dir, batch) for m in SETTINGS}


@pytest.mark.parametrize("method", [m for m in SETTINGS if m not in ("full", "lora")])
def test_each_new_method_trains(results, method):
    losses = results[method][2]
    assert losses[-1] < losses[0] - 0.05, losses


@pytest.mark.parametrize("base", ["full", "lora"])
def test_checkpointing_keeps_only_layer_inputs_and_changes_no_number(results, base):
    _, _, plain_losses, plain = results[base]
    prepared, _, losses, checkpointed = results[f"{base}+gc"]
    assert prepared.checkpointed
    assert losses == pytest.approx(plain_losses, abs=1e-5)  # recomputation is exact
    assert checkpointed.gradient_bytes == plain.gradient_bytes
    assert checkpointed.activation_bytes < 0.25 * plain.activation_bytes
    # What autograd keeps is at least each decoder layer's (T, D) fp32 input: 2 layers of 2x24x64.
    assert checkpointed.activation_bytes >= 2 * (2 * 24 * 64 * 4)


def test_velora_inside_checkpointed_layers_predicts_what_it_keeps(results):
    prepared, _, _, report = results["velora+lora+gc"]
    assert prepared.velora_layers and prepared.checkpointed
    # Every wrapped layer sits in a checkpointed decoder layer: nothing of it is kept after forward.
    assert report.predicted_activation_bytes == report.velora_measured_bytes == 0
    assert report.activation_bytes == results["lora+gc"][3].activation_bytes


def _galore_expected_bytes(prepared) -> int:
    """Two moments of the projected size and the projection matrix, per projected weight
    (``proj_type="std"``: the smaller side is projected), and full AdamW state for the rest."""
    projected = {id(p) for p in prepared.galore_parameters}
    rank = prepared.galore.rank
    total = 0
    for param in prepared.trainable_parameters:
        if id(param) not in projected:
            total += 2 * param.numel() * 4
            continue
        rows, cols = param.shape
        moments = rows * rank if rows >= cols else rank * cols
        matrix = rank * cols if rows >= cols else rows * rank
        total += (2 * moments + matrix) * 4
    return total


def test_galore_optimizer_state_is_the_projected_moments_and_matrices(results):
    prepared, optimizer, _, report = results["galore"]
    full = results["full"][3]
    assert len(prepared.galore_parameters) == 2 * 7  # every projection of both decoder layers
    assert report.optimizer_bytes == _galore_expected_bytes(prepared)
    assert report.optimizer_bytes < 0.4 * full.optimizer_bytes
    assert report.gradient_bytes == full.gradient_bytes  # GaLore projects in the optimizer, not autograd
    assert any("projector" in state for state in optimizer.state.values())


def test_velora_composes_with_galore(results):
    prepared, _, _, report = results["velora+galore"]
    assert prepared.velora_layers and report.velora_measured_bytes == report.predicted_activation_bytes > 0
    assert report.activation_bytes < results["galore"][3].activation_bytes
    assert report.optimizer_bytes == results["galore"][3].optimizer_bytes


def test_lora_fa_trains_only_lora_b(results):
    prepared, _, _, report = results["lora-fa"]
    lora = results["lora"][3]
    names = [n for n, p in prepared.model.named_parameters() if p.requires_grad]
    assert names and all("lora_B" in n for n in names)
    assert report.gradient_bytes < lora.gradient_bytes
    assert report.gradient_bytes == sum(p.numel() * 4 for p in prepared.trainable_parameters)
    # lora_A's (T, D) input is no longer kept for its gradient.
    assert report.activation_bytes < lora.activation_bytes


def test_8bit_state_is_a_quarter_of_fp32(results):
    eight, full = results["full+8bit"][3], results["full"][3]
    optimizer = results["full+8bit"][1]
    dtypes = {v.dtype for s in optimizer.state.values() for v in s.values() if isinstance(v, torch.Tensor)}
    assert torch.uint8 in dtypes
    # Two uint8 moments per element, plus block scales; tensors under 4096 elements (norms) stay fp32.
    assert 0.24 * full.optimizer_bytes < eight.optimizer_bytes < 0.30 * full.optimizer_bytes
    assert results["lora+8bit"][3].optimizer_bytes < results["lora"][3].optimizer_bytes


def test_offload_needs_cuda(tiny_llama_dir):
    with pytest.raises(ValueError, match="'offload' needs a CUDA device, not 'cpu'"):
        prepare_model("lora+offload", ModelSource(path=tiny_llama_dir), {"lora": LORA})


def test_offloaded_tensors_count_as_host_bytes(results, tiny_llama_dir):
    """``save_on_cpu`` runs on the CPU too (its copy is then a no-op): the meter passes every saved
    tensor through it and counts host bytes, parameters included (it copies them), not device bytes."""
    gen = torch.Generator().manual_seed(1)
    ids = torch.randint(3, 96, (2, 24), generator=gen)
    batch = {"input_ids": ids, "labels": ids.clone()}
    _, _, losses, report = train(
        "lora", tiny_llama_dir, batch, offload=lambda: torch.autograd.graph.save_on_cpu(pin_memory=False)
    )
    plain = results["lora"][3]
    assert losses == pytest.approx(results["lora"][2], abs=1e-6)
    assert report.activation_bytes == 0
    assert report.host_activation_bytes >= plain.activation_bytes


@pytest.mark.skipif(not torch.cuda.is_available(), reason="offloading needs CUDA")
def test_offload_on_cuda_moves_saved_activations_to_the_host(tiny_llama_dir):
    gen = torch.Generator().manual_seed(1)
    ids = torch.randint(3, 96, (2, 24), generator=gen).cuda()
    batch = {"input_ids": ids, "labels": ids.clone()}
    torch.manual_seed(0)
    prepared = prepare_model("lora+offload", ModelSource(path=tiny_llama_dir, device="cuda"), {"lora": LORA})
    meter = SavedTensorMeter(prepared.model, prepared.saved_tensors_hooks())
    with training_forward(prepared.model, prepared.saved_tensors_hooks, meter):
        loss = prepared.model(**batch).loss
    loss.backward()
    assert meter.activation_bytes == 0 and meter.host_bytes > 0


def test_galore_refuses_projected_weights_that_are_not_trained(tiny_llama_dir):
    """A GaLore weight missing from the trainable parameters (a stale copy of it) is an error, not a
    silently unprojected AdamW step."""
    prepared = prepare_model("galore", ModelSource(path=tiny_llama_dir), SETTINGS["galore"])
    prepared.galore_parameters = [torch.nn.Parameter(p.detach().clone()) for p in prepared.galore_parameters]
    with pytest.raises(ValueError, match="GaLore's projected weights"):
        build_optimizer(prepared, OptimizerSpec(lr=1e-2))


@pytest.mark.parametrize("method", ["lora", "qlora", "lora-fa", "velora+lora"])
def test_a_lora_methods_own_learning_rate_wins_over_the_runs(tiny_llama_dir, method):
    settings = {"lora": {**LORA, "lr": 3e-3}}
    if method == "velora+lora":
        settings["velora"] = {"num_groups": 8}
    if method == "qlora":
        settings["quant"] = {"compute_dtype": "fp32"}
    prepared = prepare_model(method, ModelSource(path=tiny_llama_dir), settings)
    optimizer = build_optimizer(prepared, OptimizerSpec(lr=1e-4))
    assert {group["lr"] for group in optimizer.param_groups} == {3e-3}
    unset = prepare_model("lora", ModelSource(path=tiny_llama_dir), {"lora": LORA})
    assert {group["lr"] for group in build_optimizer(unset, OptimizerSpec(lr=1e-4)).param_groups} == {1e-4}


@pytest.mark.parametrize("method", ["full", "full+gc", "velora+full"])
def test_a_full_weight_methods_own_learning_rate_wins_over_the_runs(tiny_llama_dir, method):
    settings = {"full": {"lr": 2e-4}, **({"velora": {"num_groups": 8}} if "velora" in method else {})}
    prepared = prepare_model(method, ModelSource(path=tiny_llama_dir), settings)
    assert {group["lr"] for group in build_optimizer(prepared, OptimizerSpec(lr=1e-3)).param_groups} == {2e-4}
    unset = prepare_model("full", ModelSource(path=tiny_llama_dir), {})
    assert {group["lr"] for group in build_optimizer(unset, OptimizerSpec(lr=1e-3)).param_groups} == {1e-3}


def test_an_unset_lora_learning_rate_is_left_out_of_the_spec_and_its_hash():
    from velora_core.contract.method_configs import LoRASettings

    assert "lr" not in LoRASettings().model_dump(mode="json")
    assert LoRASettings(lr=2e-3).model_dump(mode="json")["lr"] == 2e-3
    with pytest.raises(ValueError, match="lr"):
        LoRASettings(lr=0)
