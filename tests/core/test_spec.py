"""RunSpec / ComparisonSpec: validation messages, JSON round trip, a stable hash, no torch needed."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from pydantic import ValidationError

from velora_core.contract.presets.comparisons import COMPARISON_PRESETS, comparison_preset
from velora_core.contract.spec import ComparisonSpec, RunSpec

BASE = {
    "workload": "pretrain",
    "model": {"source": "preset", "name": "tiny"},
    "dataset": {"source": "builtin", "name": "stdlib-corpus"},
}


def spec(**overrides) -> RunSpec:
    return RunSpec.model_validate({**BASE, **overrides})


def test_round_trips_through_json_with_a_stable_hash():
    original = spec(method="velora+lora", method_config={"velora": {"num_groups": 16}})
    again = RunSpec.model_validate(json.loads(original.model_dump_json()))
    assert again == original and again.spec_hash() == original.spec_hash()
    assert len(original.spec_hash()) == 16
    # Defaults are filled in, so an explicit default hashes the same as an omitted one.
    assert spec(seed=0).spec_hash() == spec().spec_hash()
    assert spec(seed=1).spec_hash() != spec().spec_hash()


def test_velora_hash_is_the_one_from_before_the_ema_decay_field():
    # Pre-trained artifacts are stored under the spec hash: a VeLoRA spec without ``ema`` keeps it.
    assert spec(method="velora+lora", method_config={"velora": {"num_groups": 16}}).spec_hash() == (
        "de530c733c8bdc7d"
    )


def test_old_ema_init_string_in_a_comparison_body_still_validates():
    comparison = ComparisonSpec.model_validate(
        {
            "base": BASE,
            "methods": ["velora+full"],
            "method_configs": {"velora+full": {"velora": {"init": "ema:0.9"}}},
        }
    )
    (run,) = comparison.runs()
    velora = run.method_config["velora"]
    assert (velora["init"], velora["ema_decay"]) == ("ema", 0.9)
    typed = comparison.model_copy(
        update={"method_configs": {"velora+full": {"velora": {"init": "ema", "ema_decay": 0.9}}}}
    )
    assert typed.runs()[0].spec_hash() == run.spec_hash()


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"method": "dora"}, "unknown method 'dora'"),
        ({"seq_len": 1024}, "beyond the model's limit of 512"),
        (
            {"method": "velora+full", "method_config": {"velora": {"num_groups": 200}}},
            "exceeds the layer's 128 input features",
        ),
        ({"method": "lora", "method_config": {"lora": {"r": 0}}}, "lora.r"),
        ({"method": "lora", "method_config": {"rank": 4}}, "rank: Extra inputs are not permitted"),
        ({"steps": None}, "exactly one of steps and epochs"),
        ({"steps": 10, "epochs": 1}, "exactly one of steps and epochs"),
        ({"micro_batch": 0}, "greater than or equal to 1"),
        ({"steps": 10**9}, "less than or equal to 1000000"),
        ({"device": "tpu"}, "pattern"),
        ({"model": {"source": "preset", "name": "nope"}}, "unknown model preset 'nope'"),
        ({"model": {"source": "hub"}}, "needs model.name"),
        ({"model": {"source": "artifact"}}, "needs model.pretrain"),
        ({"dataset": {"name": "imagenet"}}, "unknown built-in dataset 'imagenet'"),
        ({"workload": "finetune"}, "a finetune from a preset has no trained weights"),
        ({"typo_field": 1}, "Extra inputs are not permitted"),
        ({"optimizer": {"lr": float("nan")}}, "Input should be a finite number"),
        ({"optimizer": {"max_grad_norm": float("inf")}}, "Input should be a finite number"),
        ({"epochs": float("inf"), "steps": None}, "Input should be a finite number"),
        (
            {"method": "lora", "method_config": {"lora": {"alpha": float("nan")}}},
            "lora.alpha: Input should be a finite number",
        ),
        ({"eval": {"metric": "mc_accuracy"}}, "needs multiple-choice data; built-in dataset 'stdlib-corpus'"),
        ({"model": {"source": "hub", "name": "../../etc"}}, "is not a hub id"),
        ({"dataset": {"source": "hub", "name": "/data/c4"}}, "is not a hub id"),
        ({"dataset": {"source": "local", "name": "a\x00b"}}, "must not contain a NUL"),
        ({"model": {"source": "hub", "name": "o/m", "revision": "main; rm"}}, "pattern"),
    ],
)
def test_invalid_specs_say_what_is_wrong(overrides, message):
    with pytest.raises(ValidationError, match=message.replace("(", r"\(").replace(")", r"\)")):
        spec(**overrides)


def test_artifact_base_must_train_all_weights():
    with pytest.raises(ValidationError, match="must train all weights"):
        spec(workload="finetune", model={"source": "artifact", "pretrain": {**BASE, "method": "lora"}})


@pytest.mark.parametrize("name", ["gpt2", "huggyllama/llama-7b", "Org-1/model_v2.5"])
def test_hub_ids_of_the_hub_form_are_accepted(name):
    assert spec(workload="finetune", model={"source": "hub", "name": name}).model.name == name


def test_pretraining_is_one_level():
    pretrain = {**BASE, "method": "full"}
    one = spec(workload="finetune", model={"source": "artifact", "pretrain": pretrain})
    assert one.model.pretrain.model.source == "preset"
    two = {**BASE, "workload": "finetune", "model": {"source": "artifact", "pretrain": pretrain}}
    with pytest.raises(ValidationError, match="one level of pre-training"):
        spec(workload="finetune", model={"source": "artifact", "pretrain": two})


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"base": "x"}, "overrides.base must be an object"),
        ({"pretrain": [1]}, "overrides.pretrain must be an object"),
        ({"methods": 5}, "overrides.methods: Input should be a valid list"),
    ],
)
def test_malformed_preset_overrides_name_the_field(overrides, message):
    with pytest.raises(ValueError, match=message):
        comparison_preset("cpu-smoke", overrides)


def test_hashes_are_the_ones_from_before_the_harness_and_full_lr_fields():
    # Stored artifacts and results are keyed by the spec hash: specs that use neither keep theirs.
    assert spec().spec_hash() == "3d7676ac09648a34"
    assert spec(method="full+gc").spec_hash() == "3e91519596bc6598"
    mc = spec(eval={"metric": "mc_accuracy", "dataset": {"name": "stdlib-mc"}})
    assert mc.spec_hash() == "53c50190334d9328"
    assert (
        "harness_tasks" not in mc.model_dump()["eval"] and "full" not in spec().model_dump()["method_config"]
    )


def test_full_weight_methods_take_their_own_learning_rate():
    s = spec(method="velora+full", method_config={"full": {"lr": 1e-4}})
    assert s.method_config["full"] == {"lr": 1e-4} and s.spec_hash() != spec(method="velora+full").spec_hash()
    with pytest.raises(ValidationError, match="lr"):
        spec(method="full", method_config={"full": {"lr": 0}})
    with pytest.raises(ValidationError, match="full"):
        spec(method="lora", method_config={"full": {"lr": 1e-4}})


def test_harness_tasks_make_an_accuracy_run_by_the_harness():
    s = spec(eval={"harness_tasks": ["mmlu"], "num_fewshot": 5, "limit": 10})
    assert s.eval.metric == "mc_accuracy" and s.eval.model_dump()["harness_tasks"] == ["mmlu"]
    assert RunSpec.model_validate(json.loads(s.model_dump_json())).spec_hash() == s.spec_hash()


@pytest.mark.parametrize(
    ("eval_spec", "message"),
    [
        ({"num_fewshot": 5}, "only applies to eval.harness_tasks"),
        ({"harness_tasks": ["mmlu"], "metric": "perplexity"}, "must be 'mc_accuracy'"),
        ({"harness_tasks": ["mmlu"], "dataset": {"name": "mmlu"}}, "leave eval.dataset unset"),
        ({"harness_tasks": ["../etc"]}, "pattern"),
        ({"harness_tasks": ["mmlu"], "limit": 0}, "greater than or equal to 1"),
    ],
)
def test_invalid_harness_settings(eval_spec, message):
    with pytest.raises(ValidationError, match=message):
        spec(eval=eval_spec)


def test_memory_only_turns_evaluation_off():
    s = spec(workload="finetune", model={"source": "preset", "name": "tiny", "memory_only": True})
    assert s.eval.metric == "none"


def test_comparison_expands_methods_by_seeds():
    comparison = ComparisonSpec(base=spec(), methods=["full", "velora+full"], seeds=[0, 1])
    runs = comparison.runs()
    assert [(r.method, r.seed) for r in runs] == [
        ("full", 0),
        ("velora+full", 0),
        ("full", 1),
        ("velora+full", 1),
    ]
    assert len({r.spec_hash() for r in runs}) == 4


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"methods": []}, "at least 1 item"),
        ({"methods": ["full", "full"]}, "must not repeat"),
        ({"methods": ["full"], "method_configs": {"lora": {}}}, "not in the comparison"),
        (
            {"methods": ["velora+full"], "method_configs": {"velora+full": {"velora": {"num_groups": 999}}}},
            r"method 'velora\+full'",
        ),
    ],
)
def test_invalid_comparisons(data, message):
    with pytest.raises(ValidationError, match=message):
        ComparisonSpec.model_validate({"base": BASE, **data})


def test_every_preset_is_valid_and_overridable():
    for name in COMPARISON_PRESETS:
        assert comparison_preset(name).runs()
    smoke = comparison_preset(
        "cpu-smoke", {"steps": 3, "pretrain": {"steps": 4}, "methods": ["full", "lora"]}
    )
    assert [r.method for r in smoke.runs()] == ["full", "lora"]
    assert smoke.base.steps == 3 and smoke.base.model.pretrain.steps == 4
    with pytest.raises(KeyError, match="unknown preset"):
        comparison_preset("nope")
    with pytest.raises(ValueError, match="seq_len"):
        comparison_preset("cpu-smoke", {"seq_len": 100_000})


def test_spec_modules_import_without_torch():
    code = (
        "import sys, velora_core.contract.spec, velora_core.contract.presets.comparisons, velora_core.contract.table, velora_core.contract.result;"
        "assert 'torch' not in sys.modules, 'torch was imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_autocast_is_left_out_of_the_spec_when_unset_so_hashes_stay():
    assert "autocast" not in spec().model_dump(mode="json")
    assert spec().spec_hash() == "3d7676ac09648a34"  # the hash before the field existed
    mixed = spec(autocast="bf16")
    assert mixed.model_dump(mode="json")["autocast"] == "bf16" and mixed.spec_hash() != spec().spec_hash()
    assert RunSpec.model_validate(json.loads(mixed.model_dump_json())) == mixed


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"dtype": "bf16", "autocast": "bf16"}, "autocast='bf16' needs fp32 weights"),
        ({"dtype": "fp16", "autocast": "fp16"}, "autocast='fp16' needs fp32 weights"),
        ({"dtype": "fp16"}, "with AdamW and no loss scaling does not train"),
        ({"autocast": "fp8"}, "autocast"),
    ],
)
def test_precisions_that_cannot_train_are_refused_with_the_reason(overrides, message):
    with pytest.raises(ValidationError, match=message):
        spec(**overrides)


def test_pure_fp16_weights_are_allowed_for_memory_only_runs():
    run = spec(model={"source": "preset", "name": "tiny", "memory_only": True}, dtype="fp16")
    assert run.dtype == "fp16" and run.autocast is None


def test_qlora_compute_dtype_follows_autocast():
    plain = spec(method="qlora", method_config={"quant": {"compute_dtype": "fp32"}})
    assert plain.method_config["quant"]["compute_dtype"] == "fp32"
    for autocast in ("bf16", "fp16"):
        mixed = spec(method="velora+qlora", autocast=autocast, method_config=plain.method_config)
        assert mixed.method_config["quant"]["compute_dtype"] == autocast


def test_a_preset_takes_autocast_as_an_override():
    runs = comparison_preset("cpu-smoke", {"autocast": "bf16"}).runs()
    assert {r.autocast for r in runs} == {"bf16"}
    assert {r.method_config["quant"]["compute_dtype"] for r in runs if "quant" in r.method_config} == {"bf16"}
    assert [r.spec_hash() for r in comparison_preset("cpu-smoke").runs()][:3] == [
        "586667522522e202",  # the hashes before the field existed
        "4ac0d661724f7f62",
        "ad088b8825c01bb4",
    ]
