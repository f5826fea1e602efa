"""``velora-bench fit``: the fake-tensor prediction against the tracker's measurement of a real step."""

from __future__ import annotations

import json

import pytest

from velora_core.bench.engine import execute
from velora_core.bench.fit_estimate import estimate
from velora_core.bench.fit_prediction import FOUR_BIT_NOTE, materialise
from velora_core.bench.step_prediction import predict_step
from velora_core.cli.main import main
from velora_core.contract.cards import CARD_FAMILIES
from velora_core.contract.fit_request import GIB, FitEstimate, FitRequest, fit_run
from velora_core.contract.method_settings import NAMED_METHODS as METHODS
from velora_core.contract.result import PEAK_COMPONENTS

SHAPE = {"micro_batch": 2, "seq_len": 32}


def _request(method: str, **extra) -> FitRequest:
    return FitRequest(model="tiny", methods=[method], **{"dtype": "fp32", **SHAPE, **extra})


#: The precisions every method is checked in: fp32, pure bf16, and bf16 autocast on fp32 weights.
PRECISIONS = {"fp32": {"dtype": "fp32"}, "bf16": {"dtype": "bf16"}, "autocast-bf16": {"autocast": "bf16"}}
#: Every named method, and the 8-bit optimizer technique (offloading needs CUDA).
STEADY_METHODS = [*sorted(METHODS), "full+8bit"]


def fit_spec(request: FitRequest, method: str, micro_batch: int):
    """The run fit steps for ``method`` of ``request`` at ``micro_batch``."""
    run = next(r for r in request.runs() if r.method == method)
    return fit_run(run).model_copy(update={"micro_batch": micro_batch})


@pytest.mark.slow
@pytest.mark.parametrize("precision", list(PRECISIONS))
@pytest.mark.parametrize("method", STEADY_METHODS)
def test_fit_predicts_the_measured_steady_peak_of_a_real_step(method, precision):
    """Every method in every precision: the real run's tracked step is a steady one (a one-step run
    takes a warm-up step first), its peak holds the trainable parameters, the optimizer state and the
    saved activations at once, and the fake steady step predicts it within 2 %, in the same phase,
    with the same trainable bytes and optimizer state."""
    request = _request(method, **PRECISIONS[precision])
    spec = fit_spec(request, method, SHAPE["micro_batch"])
    measured = execute(spec).memory
    assert (measured.tracked_step, measured.warmup_steps) == ("steady", 1)
    assert measured.first_step_peak_bytes is not None
    held = measured.trainable_bytes + measured.optimizer_bytes + measured.activation_bytes
    assert measured.measured_peak_bytes >= held
    assert measured.peak_components["optimizer"] == measured.optimizer_bytes > 0
    predicted = estimate(request)[0]
    assert predicted.tracked_step == "steady" and predicted.first_step_peak_bytes is not None
    assert predicted.peak_bytes == pytest.approx(measured.measured_peak_bytes, rel=0.02)
    assert predicted.peak_phase == measured.peak_phase
    assert sum(predicted.components().values()) == predicted.peak_bytes
    for name in ("trainable", "gradients", "optimizer"):
        assert predicted.components()[name] == measured.peak_components[name], name
    assert predicted.weights == pytest.approx(measured.peak_components["weights"], abs=1024)
    copies = predicted.autocast_copies
    assert copies == measured.peak_components["autocast_copies"]
    assert (copies > 0) == (precision == "autocast-bf16" and predicted.peak_phase != "optimizer")


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


def test_largest_micro_batch_fits_beside_one_that_does_not():
    """On reserved bytes plus the CUDA context: the size found fits and the next does not."""
    request = _request("lora", gpu_gib=0.6)
    workspace = CARD_FAMILIES[request.card_family].cublas_workspace_bytes
    row = estimate(request)[0]
    assert row.fits is True and row.max_micro_batch is not None

    def needed(micro_batch: int) -> int:
        return (
            predict_step(fit_spec(request, "lora", micro_batch), workspace).reserved_bytes + row.context_bytes
        )

    assert needed(row.max_micro_batch) <= row.gpu_bytes < needed(row.max_micro_batch + 1)
    too_small = estimate(_request("lora", gpu_gib=(row.context_bytes + 1024) / GIB))[0]
    assert too_small.fits is False and too_small.max_micro_batch is None


def test_the_card_holds_reserved_bytes_and_the_context():
    row = estimate(_request("full", context_mib=100))[0]
    assert row.context_bytes == 100 * 1024**2
    assert row.reserved_bytes >= row.peak_bytes  # the allocator holds at least the live tensors
    assert row.card_bytes_needed == row.reserved_bytes + row.context_bytes
    hopper = estimate(_request("full", card_family="hopper"))[0]
    ampere = estimate(_request("full", card_family="ampere"))[0]
    assert hopper.reserved_bytes > ampere.reserved_bytes  # two 32 MiB cuBLAS workspaces, not 8 MiB ones


def test_fit_reads_a_spec_and_its_overrides(tmp_path, capsys):
    """--spec FILE with --set: the method's own settings change the prediction as they would the run."""
    spec = tmp_path / "run.yaml"
    spec.write_text(
        "workload: finetune\nmodel: {source: preset, name: tiny, memory_only: true}\n"
        "dataset: {name: stdlib-corpus}\nmethod: lora\nmethod_config: {lora: {r: 4}}\n"
        "seq_len: 32\nmicro_batch: 2\nsteps: 5\ndtype: fp32\n"
    )
    rows = {}
    for rank in (4, 64):
        assert main(["fit", "--spec", str(spec), "--set", f"method_config.lora.r={rank}", "--json"]) == 0
        rows[rank] = json.loads(capsys.readouterr().out)[0]
    assert rows[64]["trainable"] == 16 * rows[4]["trainable"]  # LoRA's bytes are linear in the rank
    assert rows[4]["micro_batch"] == 2 and rows[4]["seq_len"] == 32


def test_fit_reads_a_comparison_spec_once_per_method():
    comparison = {
        "base": {
            "workload": "finetune",
            "model": {"source": "preset", "name": "tiny", "memory_only": True},
            "dataset": {"name": "stdlib-corpus"},
            "seq_len": 16,
            "micro_batch": 1,
            "grad_accum": 2,
            "dtype": "fp32",
        },
        "methods": ["lora", "full"],
        "seeds": [0, 1],
    }
    request = FitRequest(spec=comparison)
    assert [r.method for r in request.runs()] == ["lora", "full"]
    assert all(r.grad_accum == 2 for r in request.runs())


@pytest.mark.parametrize(
    ("fields", "words"),
    [
        ({"spec": {"methods": ["lora"]}, "model": "tiny"}, "give either spec or model"),
        ({"spec": {"workload": "finetune"}}, "invalid RunSpec"),
        ({}, "give model and methods"),
    ],
)
def test_a_fit_request_says_what_is_wrong(fields, words):
    with pytest.raises(ValueError, match=words):
        FitRequest(**fields)


def test_fit_cli_json_has_the_documented_fields(capsys):
    argv = ["fit", "--model", "tiny", "--methods", "lora", "velora+lora", "--micro-batch", "1"]
    assert main([*argv, "--seq-len", "16", "--gpu-gib", "1", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["method"] for r in rows] == ["lora", "velora+lora"]
    for row in rows:
        assert set(row) == set(FitEstimate.model_fields)
        assert {"peak_bytes", "peak_phase", "fits", "max_micro_batch", *PEAK_COMPONENTS} <= set(row)
        assert row["fits"] is True and row["max_micro_batch"] >= 1
    assert main([*argv, "--seq-len", "16", "--gpu-gib", "1"]) == 0
    out = capsys.readouterr().out
    assert "alloc MiB" in out and "reserved MiB" in out and "card MiB" in out


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--micro-batch", "0"], "micro_batch"),
        (["--methods", "nope"], "unknown method"),
        (["--dtype", "int3"], "dtype"),
        (["--gpu-gib", "-1"], "gpu_gib"),
        (["--set", "steps=2"], "give --spec FILE"),
        (["--spec", "missing.yaml"], "leave out --methods/--model"),
        (["--dtype", "bf16", "--autocast", "bf16"], "needs fp32 weights"),
        (["--dtype", "fp32", "--autocast", "fp8"], "autocast"),
        (["--jobs", "0"], "--jobs"),
        (["--jobs", "many"], "--jobs"),
    ],
)
def test_fit_cli_bad_input_is_one_line_and_exit_2(capsys, flags, message):
    argv = ["fit", "--model", "tiny", "--methods", "lora", *flags]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1


def test_methods_predicted_at_once_are_the_methods_predicted_in_turn():
    """--jobs: each method in a process of its own gives, field for field, what one process gives."""
    request = FitRequest(model="tiny", methods=["full", "lora", "qlora"], dtype="fp32", gpu_gib=0.5, **SHAPE)

    def rows(jobs: int) -> list[dict]:
        return [row.model_dump(exclude={"seconds"}) for row in estimate(request, jobs=jobs)]

    in_turn = rows(1)
    assert [row["method"] for row in in_turn] == ["full", "lora", "qlora"]
    assert rows(3) == in_turn
