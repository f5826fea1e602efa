"""The memory tracker: components add up, known bytes come out exact, phases and frees are seen."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from velora_core.contract.result import PEAK_COMPONENTS, MemoryReport, headline_memory_bytes
from velora_core.memory.report import measure_training_step
from velora_core.memory.tracker import MemoryTracker
from velora_core.methods.registry import prepare_model
from velora_core.models.loading import ModelSource


def _step(model: nn.Module, optimizer: torch.optim.Optimizer, x: torch.Tensor) -> MemoryTracker:
    tracker = MemoryTracker(model, optimizer)
    with tracker:
        loss = model(x).square().mean()
        tracker.set_phase("backward")
        loss.backward()
        tracker.set_phase("optimizer")
        optimizer.step()
    return tracker


def test_components_add_up_to_the_peak_and_the_timeline_stays_under_it(tiny_llama_dir, token_batch):
    prepared = prepare_model("lora", ModelSource(path=tiny_llama_dir), {"lora": {"r": 4}})
    prepared.model.train()
    optimizer = torch.optim.AdamW(prepared.trainable_parameters, lr=1e-3)
    _, report = measure_training_step(prepared.model, token_batch, optimizer)
    assert set(report.peak_components) == set(PEAK_COMPONENTS)
    assert sum(report.peak_components.values()) == report.measured_peak_bytes
    assert report.temporary_bytes == report.peak_components["temporary"]
    totals = [sum(getattr(p, c) for c in PEAK_COMPONENTS) for p in report.timeline]
    assert max(totals) == report.measured_peak_bytes
    assert [p.event for p in report.timeline] == sorted(p.event for p in report.timeline)
    assert {p.phase for p in report.timeline} == {"forward", "backward", "optimizer"}
    # LoRA's frozen base is weights, its adapters trainable, and both known exactly.
    trainable = sum(p.numel() * p.element_size() for p in prepared.trainable_parameters)
    assert report.peak_components["trainable"] == trainable
    assert report.peak_components["weights"] >= report.weight_bytes
    assert headline_memory_bytes(report.model_dump()) == report.measured_peak_bytes


def test_adamw_state_is_two_fp32_tensors_per_parameter_exactly():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(32, 48), nn.ReLU(), nn.Linear(48, 8))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    x = torch.randn(5, 32)
    tracker = _step(model, optimizer, x)
    params = list(model.parameters())
    numel = sum(p.numel() for p in params)
    end = tracker.result().timeline[-1]
    # exp_avg and exp_avg_sq (fp32, the parameter's shape) plus one fp32 scalar ``step`` per parameter.
    assert end["optimizer"] == 2 * 4 * numel + 4 * len(params)
    assert end["trainable"] == 4 * numel
    assert end["gradients"] == 4 * numel
    # Backward freed what it saved, except the input, which the caller still holds.
    assert end["activations"] == x.numel() * 4


def test_galore_projection_matrix_is_optimizer_state_exactly():
    """GaLore's projector keeps its projection matrix across steps: optimizer state, not a temporary."""
    import galore_torch  # a dependency of the project: missing it is a failure, not a skip

    torch.manual_seed(0)
    model = nn.Linear(32, 48, bias=False)  # weight (48, 32): projected on the right, rank 4
    optimizer = galore_torch.GaLoreAdamW(
        [{"params": [model.weight], "rank": 4, "update_proj_gap": 10, "scale": 1.0, "proj_type": "std"}],
        lr=1e-3,
        no_deprecation_warning=True,
    )
    end = _step(model, optimizer, torch.randn(5, 32)).result().timeline[-1]
    matrix = optimizer.state[model.weight]["projector"].ortho_matrix  # (4, 32), a slice of the SVD's Vh
    moments = 2 * 4 * 48 * 4  # exp_avg and exp_avg_sq of the projected (48, 4) gradient, fp32
    assert matrix.shape == (4, 32)
    assert end["optimizer"] == moments + matrix.untyped_storage().nbytes()


def test_4bit_weight_counts_its_packed_bytes_and_quantisation_state_exactly():
    import bitsandbytes as bnb  # a dependency: missing it fails the test

    layer = bnb.nn.Linear4bit(128, 64, bias=False, compress_statistics=True, quant_type="nf4")
    layer.load_state_dict(nn.Linear(128, 64, bias=False).state_dict())
    layer = layer.to("cpu")  # quantises
    numel = 128 * 64
    expected = (
        numel // 2  # two 4-bit values per byte
        + numel // 64  # absmax per block of 64, itself quantised to uint8 (double quantisation)
        + 16 * 4  # the NF4 code (fp32)
        + 4  # the absmax offset (fp32)
        + -(-numel // 64 // 256) * 4  # the nested absmax per block of 256 (fp32)
        + 256 * 4  # the nested (dynamic) code (fp32)
    )
    tracker = MemoryTracker(layer)
    with tracker:
        pass
    assert tracker.result().peak_components["weights"] == expected


def test_peak_phase_and_frees_are_seen():
    model = nn.Linear(256, 256, bias=False)
    model.requires_grad_(False)
    tracker = MemoryTracker(model)
    with tracker:
        big = torch.ones(1024, 256)  # 1 MiB, freed before the next phase
        del big
        tracker.set_phase("backward")
        small = torch.ones(16, 256)
    result = tracker.result()
    assert result.peak_phase == "forward"
    assert result.peak_components["temporary"] == 1024 * 256 * 4
    assert result.phase_peaks["backward"] == 256 * 256 * 4 + small.numel() * 4
    with pytest.raises(ValueError, match="unknown phase"):
        tracker.set_phase("evaluation")


def test_old_memory_reports_validate_and_headline_falls_back():
    old = {"weight_bytes": 10, "activation_bytes": 5, "peak_bytes": 40}
    report = MemoryReport.model_validate(old)
    assert report.measured_peak_bytes is None and report.timeline == []
    assert report.tracked_step == "first" and report.first_step_peak_bytes is None  # before steady steps
    assert report.run_peak_allocated_bytes is None and report.warmup_steps == 0
    assert report.headline_bytes == 40
    assert MemoryReport(weight_bytes=10, activation_bytes=5).headline_bytes == 15
    assert MemoryReport(peak_bytes=40, measured_peak_bytes=30).headline_bytes == 30


def test_other_saved_tensor_hooks_run_through_the_trackers():
    """Offloading hooks (``save_on_cpu``) chained through the tracker: the saved tensors are still
    activations, and the gradients are those of a plain step."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 32), nn.Tanh(), nn.Linear(32, 4))
    x = torch.randn(8, 16)
    model(x).square().sum().backward()
    expected = [p.grad.clone() for p in model.parameters()]
    model.zero_grad(set_to_none=True)
    hooks = torch.autograd.graph.save_on_cpu(pin_memory=False)
    tracker = MemoryTracker(model)
    with tracker:
        with tracker.saving_through(hooks.pack_hook, hooks.unpack_hook):
            loss = model(x).square().sum()
        tracker.set_phase("backward")
        loss.backward()
    assert all(torch.equal(p.grad, e) for p, e in zip(model.parameters(), expected, strict=True))
    assert max(p["activations"] for p in tracker.result().timeline) > 0


def test_only_the_tracked_devices_memory_counts():
    model = nn.Linear(8, 8)
    tracker = MemoryTracker(model, device=torch.device("meta"))  # a device nothing below lives on
    with tracker:
        torch.ones(1024)
    assert tracker.result().peak_bytes == 0


def test_autocasts_copies_of_the_weights_are_their_own_component_exactly():
    """Under bf16 autocast a linear layer runs on bf16 copies of its fp32 weight and bias: those copies
    are ``autocast_copies`` (kept so while backward holds them), the input's cast is not."""
    torch.manual_seed(0)
    model = nn.Linear(64, 32)
    x = torch.randn(8, 64)
    tracker = MemoryTracker(model)
    with tracker:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = model(x).float().square().mean()
        copies = (64 * 32 + 32) * 2  # weight and bias in bf16
        tracker.set_phase("backward")
        loss.backward()
    result = tracker.result()
    assert max(p["autocast_copies"] for p in result.timeline) == copies
    assert result.timeline[-1]["autocast_copies"] == 0  # freed once backward used them
    assert model.weight.grad.dtype == torch.float32
