"""Methods as a base plus techniques: canonical names, composition errors, the settings of each
composition, and the six original names unchanged (no torch needed)."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from velora_core.contract.method_parts import BASES, TECHNIQUES, canonical_method, parse_method
from velora_core.contract.method_settings import METHOD_CONFIGS, method_config_for, settings_class
from velora_core.contract.presets.comparisons import PRESETS, comparison_preset
from velora_core.contract.spec import ComparisonSpec, RunSpec

BASE = {
    "workload": "pretrain",
    "model": {"source": "preset", "name": "tiny"},
    "dataset": {"source": "builtin", "name": "stdlib-corpus"},
}
SIX = ["full", "lora", "qlora", "velora+full", "velora+lora", "velora+qlora"]


@pytest.mark.parametrize("name", SIX)
def test_the_six_names_are_canonical_and_keep_their_sections(name):
    assert canonical_method(name) == name
    sections = set(settings_class(name)().model_dump())
    expected = {"full": set(), "lora": {"lora"}, "qlora": {"lora", "quant"}}
    base = name.removeprefix("velora+")
    assert sections == expected[base] | ({"velora"} if name.startswith("velora+") else set())


def test_velora_keeps_its_default_scale_per_base():
    assert method_config_for("velora+full", {}).velora.scale == 1.0
    assert method_config_for("velora+galore", {}).velora.scale == 1.0
    for name in ("velora+lora", "velora+qlora", "velora+lora+gc"):
        assert method_config_for(name, {}).velora.scale == 0.1


@pytest.mark.parametrize(
    ("spelling", "canonical"),
    [
        ("lora+velora", "velora+lora"),
        ("gc+lora+velora", "velora+lora+gc"),
        ("offload+8bit+gc+full", "full+gc+8bit+offload"),
        ("8bit+galore", "galore+8bit"),
        ("gc+velora+qlora", "velora+qlora+gc"),
        ("lora-fa+gc", "lora-fa+gc"),
    ],
)
def test_order_does_not_change_the_method(spelling, canonical):
    assert canonical_method(spelling) == canonical
    assert settings_class(spelling) is settings_class(canonical)
    assert RunSpec.model_validate({**BASE, "method": spelling}).method == canonical


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("dora", "unknown method 'dora'; a method is a base (full, lora, qlora, galore, lora-fa)"),
        ("lora+magic", "(unknown part(s) ['magic'])"),
        ("lora+gc+gc", "repeats the technique(s) ['gc']"),
        ("lora+qlora", "needs exactly one base"),
        ("velora+gc", "needs exactly one base (full, lora, qlora, galore, lora-fa), got none"),
        ("lora++gc", "has an empty part"),
        ("lora-fa+velora", "LoRA-FA freezes lora_A, whose input is what VeLoRA compresses"),
        ("lora-fa+8bit", "LoRA-FA brings its own optimizer"),
    ],
)
def test_composition_errors_are_clear(name, message):
    with pytest.raises(ValueError) as info:
        parse_method(name)
    assert message in str(info.value)
    with pytest.raises(ValidationError) as spec_error:
        RunSpec.model_validate({**BASE, "method": name})
    assert message in str(spec_error.value)


def test_a_technique_that_needs_cuda_is_refused_on_the_cpu_and_says_so():
    with pytest.raises(ValidationError, match=r"needs a CUDA device, not 'cpu'.*'offload'"):
        RunSpec.model_validate({**BASE, "method": "lora+offload", "device": "cpu"})
    with pytest.raises(ValidationError, match="galore-torch's 8-bit GaLore optimizer"):
        RunSpec.model_validate({**BASE, "method": "galore+8bit", "device": "cpu"})
    # ``auto`` and CUDA are left to the worker, which knows its device.
    assert (
        RunSpec.model_validate({**BASE, "method": "offload+lora", "device": "cuda"}).method == "lora+offload"
    )
    assert RunSpec.model_validate({**BASE, "method": "lora+offload"}).device == "auto"


def test_settings_of_each_part_validate_with_their_field_named():
    with pytest.raises(ValueError, match=r"galore\.rank"):
        method_config_for("galore", {"galore": {"rank": 0}})
    with pytest.raises(ValueError, match="velora: Extra inputs"):
        method_config_for("lora+gc", {"velora": {}})  # no VeLoRA in this method
    with pytest.raises(ValueError, match=r"adam8bit\.min_8bit_size"):
        method_config_for("full+8bit", {"adam8bit": {"min_8bit_size": -1}})
    with pytest.raises(ValidationError, match=r"galore\.target_modules .* match no linear layer"):
        RunSpec.model_validate(
            {**BASE, "method": "galore", "method_config": {"galore": {"target_modules": ["nope"]}}}
        )
    with pytest.raises(ValueError, match=r"velora\.init 'ema' does not combine with gc"):
        method_config_for("velora+lora+gc", {"velora": {"init": "ema", "ema_decay": 0.9}})
    assert (
        method_config_for("velora+lora", {"velora": {"init": "ema", "ema_decay": 0.9}}).velora.init == "ema"
    )
    with pytest.raises(ValidationError, match="exceeds the layer's 128 input features"):
        RunSpec.model_validate(
            {**BASE, "method": "gc+velora+full", "method_config": {"velora": {"num_groups": 200}}}
        )


def test_comparisons_store_canonical_names_and_refuse_two_spellings_of_one_method():
    spec = ComparisonSpec.model_validate(
        {
            "base": BASE,
            "methods": ["lora+velora", "gc+full"],
            "method_configs": {"lora+velora": {"velora": {"num_groups": 16}}},
        }
    )
    assert spec.methods == ["velora+lora", "full+gc"]
    assert spec.method_configs == {"velora+lora": {"velora": {"num_groups": 16}}}
    assert [r.method for r in spec.runs()] == ["velora+lora", "full+gc"]
    with pytest.raises(ValidationError, match=r"methods must not repeat .*'velora\+lora': \['lora\+velora'"):
        ComparisonSpec.model_validate({"base": BASE, "methods": ["lora+velora", "velora+lora"]})
    with pytest.raises(ValidationError, match=r"unknown method\(s\) \['dora'\]"):
        ComparisonSpec.model_validate({"base": BASE, "methods": ["full", "dora"]})


def test_registry_has_one_entry_per_part_and_named_methods_are_canonical():
    assert list(BASES) == ["full", "lora", "qlora", "galore", "lora-fa"]
    assert list(TECHNIQUES) == ["velora", "gc", "8bit", "offload"]
    assert list(METHOD_CONFIGS)[:6] == SIX
    assert all(canonical_method(m) == m for m in METHOD_CONFIGS)


def test_presets_offer_the_new_methods_with_the_paper_settings():
    for name in ("cpu-smoke", "demo"):
        methods = comparison_preset(name).methods
        assert methods[:6] == SIX and set(methods[6:]) == {"full+gc", "lora+gc", "galore", "lora-fa"}
    for name, rank in (("c4-60m", 128), ("c4-130m", 256)):
        galore = next(r for r in comparison_preset(name).runs() if r.method == "galore")
        assert galore.method_config["galore"] == {
            "rank": rank,
            "update_proj_gap": 200,
            "scale": 0.25,
            "proj_type": "std",
            "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
            "lr": 0.01,
        }
    for size in ("60m", "130m", "7b", "13b"):
        spec = comparison_preset(f"table7-{size}")
        assert spec.methods == ["full", "full+gc", "velora+full"] and spec.base.micro_batch == 1
        assert spec.base.model.memory_only == (size in ("7b", "13b"))
    assert all(comparison_preset(name) for name in PRESETS)


def test_a_preset_keeps_its_settings_for_a_method_spelled_another_way():
    spec = comparison_preset("cpu-smoke", {"methods": ["lora+velora", "gc+lora"]})
    assert spec.methods == ["velora+lora", "lora+gc"]
    assert spec.method_configs["velora+lora"]["velora"]["num_groups"] == 16
    assert spec.method_configs["lora+gc"]["lora"]["r"] == 8


def test_a_registered_technique_composes_in_registration_order(monkeypatch):
    from velora_core.contract import method_parts

    monkeypatch.setattr(method_parts, "TECHNIQUES", dict(TECHNIQUES))
    try:
        method_parts.register_method_part(
            method_parts.MethodPart("noop", "does nothing", "techniques:apply_noop"), base=False
        )
        assert canonical_method("noop+lora+gc+velora") == "velora+lora+gc+noop"
        assert method_parts.canonical_order()[-1] == "noop"
        with pytest.raises(ValueError, match="already registered"):
            method_parts.register_method_part(method_parts.MethodPart("gc", "again", "x:y"), base=False)
        with pytest.raises(ValueError, match="must name its optimizer"):
            method_parts.register_method_part(method_parts.MethodPart("sgd", "no opt", "x:y"), base=True)
    finally:
        method_parts.parse_method.cache_clear()  # forget the compositions that named 'noop'
