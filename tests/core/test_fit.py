"""``velora-bench fit``: the fake-tensor prediction against the tracker's measurement of a real step."""

from __future__ import annotations

import json

import pytest

from velora_core.bench.engine import execute
from velora_core.bench.fit_prediction import FOUR_BIT_NOTE, estimate, fake_step, fit_spec, materialise
from velora_core.cli.main import main
from velora_core.contract.fit_request import GIB, FitEstimate, FitRequest
from velora_core.contract.method_settings import NAMED_METHODS as METHODS
from velora_core.contract.result import PEAK_COMPONENTS

SHAPE = {"micro_batch": 2, "seq_len": 32}


def _request(method: str, **extra) -> FitRequest:
    return FitRequest(model="tiny", methods=[method], dtype="fp32", **SHAPE, **extra)


@pytest.mark.slow
@pytest.mark.parametrize("method", sorted(METHODS))
def test_fit_predicts_the_measured_peak_of_a_real_step(method):
    """Every registered method: the fake step's peak is the real first step's (tracked by the
    trainer) within 2 %, in the same phase, with the same weights, trainable bytes and optimizer state."""
    spec = fit_spec(_request(method), method, SHAPE["micro_batch"])
    measured = execute(spec).memory
    assert measured.measured_peak_bytes, "the trainer tracks its first step"
    predicted = estimate(_request(method))[0]
    assert predicted.peak_bytes == pytest.approx(measured.measured_peak_bytes, rel=0.02)
    assert predicted.peak_phase == measured.peak_phase
    assert sum(predicted.components().values()) == predicted.peak_bytes
    for name in ("trainable", "gradients", "optimizer"):
        assert predicted.components()[name] == measured.peak_components[name], name
    assert predicted.weights == pytest.approx(measured.peak_components["weights"], abs=1024)


def test_fake_4bit_weights_take_the_bytes_bitsandbytes_stores():
    """Each fake 4-bit weight and its quantisation state have exactly the bytes of a real one."""
    import bitsandbytes as bnb  # a dependency: missing it fails the test
    import torch
    from torch._subclasses.fake_tensor import FakeTensorMode

    from velora_core.bench.engine import model_source
    from velora_core.memory.tensor_bytes import quant_state_tensors
    from velora_core.methods.registry import prepare_model

    spec = fit_spec(_request("qlora"), "qlora", 1)
    prepared = prepare_model("qlora", model_source(spec, torch.device("meta"), None), spec.method_config)
    _, notes = materialise(prepared.model, FakeTensorMode(allow_non_fake_inputs=True), torch.float32)
    assert notes == [FOUR_BIT_NOTE]
    layer = prepared.model.get_submodule("base_model.model.model.layers.0.mlp.down_proj.base_layer")
    real = bnb.nn.Linear4bit(352, 128, bias=False, compress_statistics=True, quant_type="nf4").to("cpu")

    def sizes(weight):
        return [t.untyped_storage().nbytes() for t in [weight, *quant_state_tensors(weight)]]

    assert sizes(layer.weight) == sizes(real.weight)
    assert sizes(layer.weight)[0] == 352 * 128 // 2


def test_largest_micro_batch_is_the_largest_that_fits():
    spec = fit_spec(_request("lora"), "lora", 3)
    card = fake_step(spec)[0].peak_bytes  # exactly the step at micro-batch 3
    row = estimate(_request("lora", gpu_gib=card / GIB))[0]
    assert row.fits is True and row.max_micro_batch == 3
    too_small = estimate(_request("lora", gpu_gib=1024 / GIB))[0]
    assert too_small.fits is False and too_small.max_micro_batch is None


def test_fit_cli_json_has_the_documented_fields(capsys):
    argv = ["fit", "--model", "tiny", "--methods", "lora", "velora+lora", "--micro-batch", "1"]
    assert main([*argv, "--seq-len", "16", "--gpu-gib", "1", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["method"] for r in rows] == ["lora", "velora+lora"]
    for row in rows:
        assert set(row) == set(FitEstimate.model_fields)
        assert {"peak_bytes", "peak_phase", "fits", "max_micro_batch", *PEAK_COMPONENTS} <= set(row)
        assert row["fits"] is True and row["max_micro_batch"] >= 1
    assert main([*argv, "--seq-len", "16"]) == 0
    assert "peak MiB" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--micro-batch", "0"], "micro_batch"),
        (["--methods", "nope"], "unknown method"),
        (["--dtype", "int3"], "dtype"),
        (["--gpu-gib", "-1"], "gpu_gib"),
    ],
)
def test_fit_cli_bad_input_is_one_line_and_exit_2(capsys, flags, message):
    argv = ["fit", "--model", "tiny", "--methods", "lora", *flags]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1
