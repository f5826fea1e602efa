"""Layer extrapolation: two short traces extended along the line equal the whole model's trace."""

from __future__ import annotations

import pytest

from velora_core.bench.step_prediction import TRACED_LAYERS, StepPredictor, repeated_layers
from velora_core.contract.fit_request import FitRequest, fit_run
from velora_core.contract.method_settings import NAMED_METHODS
from velora_core.contract.presets import model_shapes
from velora_core.contract.presets.model_shapes import ModelPreset

#: LLaMA-7B's depth (32 layers) at the width of llama-60m: the whole trace stays quick on a CPU.
NARROW_7B = ModelPreset(512, 1376, 8, 32, description="32 layers of llama-60m's width (tests)")
WORKSPACE = 32 * 1024**2
TRACED_WHOLE = {"lora-fa"}
#: Reserved bytes come in segments: one small-pool segment is the least they can be off by.
SEGMENT = 2 * 1024**2


@pytest.fixture
def narrow(monkeypatch):
    monkeypatch.setitem(model_shapes.MODEL_PRESETS, "narrow-32", NARROW_7B)
    return "narrow-32"


def _spec(model: str, method: str, **fields):
    request = FitRequest(model=model, methods=[method], micro_batch=2, seq_len=64, dtype="bf16", **fields)
    return fit_run(request.runs()[0])


@pytest.mark.slow
@pytest.mark.parametrize("method", sorted(NAMED_METHODS))
def test_extrapolation_equals_the_whole_trace(narrow, method):
    """Every method, every phase's peak, every component at the peak and the reserved bytes: the line
    through 2 and 3 layers, extended to 32 (and the 3-layer log repeated to 32 layers for the
    reserved bytes), within 0.5 % of tracing all 32."""
    spec = _spec(narrow, method)
    predictor = StepPredictor(spec, WORKSPACE)
    line = predictor.at(spec.micro_batch)
    # LoRA-FA's optimizer interleaves untagged temporaries (its projections' products) with each
    # parameter's: its repeated log misses the line's peak, so it is traced whole (slower, exact).
    assert line.traced_layers == ([] if method in TRACED_WHOLE else list(TRACED_LAYERS))
    whole = StepPredictor(spec, WORKSPACE, whole=True).at(spec.micro_batch)
    assert line.peak_phase == whole.peak_phase
    assert line.peak_bytes == pytest.approx(whole.peak_bytes, rel=0.005)
    for phase, peak in whole.phase_peaks.items():
        assert line.phase_peaks[phase] == pytest.approx(peak, rel=0.005), phase
    for name, value in whole.peak_components.items():
        assert line.peak_components[name] == pytest.approx(value, rel=0.005, abs=whole.peak_bytes * 0.001), (
            name
        )
    assert line.reserved_bytes == pytest.approx(whole.reserved_bytes, rel=0.005, abs=SEGMENT)
    # The repeated log the reserved bytes are replayed from holds, phase by phase, the whole model's
    # live bytes (the optimizer's loops over parameters included).
    repeated = predictor.reserved_at(spec.micro_batch).phase_peaks
    for phase, peak in whole.phase_peaks.items():
        assert repeated[phase] == pytest.approx(peak, rel=0.001), phase


def test_a_method_that_names_a_layer_is_traced_whole(narrow):
    spec = _spec(
        narrow, "lora", method_configs={"lora": {"lora": {"target_modules": ["layers.0.self_attn.q_proj"]}}}
    )
    import torch

    from velora_core.bench.engine import model_source

    config = model_source(spec, torch.device("meta"), None).config
    assert repeated_layers(spec, config) is None
    assert repeated_layers(_spec(narrow, "lora"), config) == 32


def test_layers_that_differ_are_traced_whole():
    from transformers import Qwen2Config

    config = Qwen2Config(num_hidden_layers=8, use_sliding_window=True, max_window_layers=4)
    spec = _spec("tiny", "full")
    assert (len(set(config.layer_types)) > 1) and repeated_layers(spec, config) is None
