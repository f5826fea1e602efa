"""Target checks before queueing agree with what the worker's model preparation does.

``RunSpec`` checks the method's targets against a preset's known layers (no torch); the worker
builds the model and injects the method. For each pattern below both must accept or both refuse.
"""

from __future__ import annotations

import time

import pytest
from pydantic import ValidationError

from velora_core.contract.presets.model_shapes import MODEL_PRESETS
from velora_core.contract.spec import RunSpec
from velora_core.methods.registry import prepare_model
from velora_core.models.loading import ModelSource
from velora_core.models.preset_configs import llama_config

TINY = MODEL_PRESETS["tiny"]  # hidden 128, intermediate 352, 2 layers


def test_preset_linear_layers_are_the_models_linear_layers() -> None:
    from torch import nn

    model = prepare_model("full", ModelSource(config=llama_config(TINY), device="cpu")).model
    actual = {n: m.in_features for n, m in model.named_modules() if isinstance(m, nn.Linear)}
    assert TINY.linear_layers() == actual


def _settings(method: str, targets: list[str], groups: int, lora_targets: list[str] | None) -> dict:
    settings: dict = {"velora": {"num_groups": groups, "target_modules": targets}}
    if "lora" in method:
        settings["lora"] = {"r": 4, **({"target_modules": lora_targets} if lora_targets else {})}
    if method == "velora+qlora":
        settings["quant"] = {"compute_dtype": "fp32"}
    return settings


CASES = [
    # (method, velora targets, num_groups, lora targets)
    ("velora+full", [r".*\.down_proj"], 4000, None),  # regex: 4000 groups > 352 features
    ("velora+full", [r"model\.layers\.\d+\.self_attn\.v_proj"], 200, None),  # > 128 features
    ("velora+full", [r"model\.layers\.\d+\.self_attn\.v_proj"], 64, None),
    ("velora+full", ["lm_head"], 16, None),
    ("velora+full", ["nothing_here"], 16, None),
    ("velora+full", [r".*proj"], 128, None),
    ("velora+full", [r".*proj"], 129, None),
    ("velora+lora", [r".*\.down_proj"], 4000, None),
    ("velora+lora", [r".*\.v_proj"], 16, None),
    ("velora+lora", ["v_proj"], 16, ["q_proj"]),  # v_proj has no adapter: frozen
    ("velora+lora", [r".*lora_A\.default"], 16, None),
    ("velora+lora", [r".*lora_B\.default"], 16, None),  # lora_B's input is r=4 wide
    ("velora+lora", ["down_proj"], 16, ["nope"]),  # LoRA targets match nothing
    ("velora+qlora", [r".*\.v_proj"], 16, None),
    ("velora+qlora", [r".*\.v_proj"], 4000, None),
]


@pytest.mark.parametrize(("method", "targets", "groups", "lora_targets"), CASES)
def test_spec_check_agrees_with_model_preparation(method, targets, groups, lora_targets) -> None:
    settings = _settings(method, targets, groups, lora_targets)
    try:
        RunSpec.model_validate(
            {
                "workload": "pretrain",
                "model": {"source": "preset", "name": "tiny"},
                "dataset": {"name": "stdlib-corpus"},
                "method": method,
                "method_config": settings,
            }
        )
        spec_error = None
    except ValidationError as exc:
        spec_error = str(exc)
    try:
        prepare_model(method, ModelSource(config=llama_config(TINY), device="cpu"), settings)
        worker_error = None
    except ValueError as exc:
        worker_error = str(exc)
    assert (spec_error is None) == (worker_error is None), (spec_error, worker_error)


def test_regex_targets_get_the_width_check() -> None:
    with pytest.raises(ValidationError, match=r"model.layers.0.mlp.down_proj.*num_groups=4000 exceeds"):
        RunSpec.model_validate(
            {
                "workload": "pretrain",
                "model": {"source": "preset", "name": "tiny"},
                "dataset": {"name": "stdlib-corpus"},
                "method": "velora+full",
                "method_config": {"velora": {"num_groups": 4000, "target_modules": [r".*\.down_proj"]}},
            }
        )


def _velora_spec(pattern: str) -> dict:
    return {
        "workload": "pretrain",
        "model": {"source": "preset", "name": "tiny"},
        "dataset": {"name": "stdlib-corpus"},
        "method": "velora+full",
        "method_config": {"velora": {"num_groups": 4, "target_modules": [pattern, "down_proj"]}},
    }


@pytest.mark.parametrize(
    "pattern", [r"(a+)+", r"(.*)*x", r"(vv|qq)*_proj", "(?:.*.*.*.*.*.*.*.*.*.*.*.*)X", "(.*){1,100}X"]
)
def test_patterns_that_backtrack_catastrophically_in_python_re_match_in_linear_time(pattern: str) -> None:
    """Issue 22.1: `(?:.*.*.*.*.*.*.*.*.*)X` took 20 s to check against the tiny model under Python's
    re (104 s per name with 12 `.*`); RE2 matches every name in time linear in its length."""
    started = time.perf_counter()
    RunSpec.model_validate(_velora_spec(pattern))
    assert time.perf_counter() - started < 1.0


@pytest.mark.parametrize(
    ("pattern", "why"),
    [
        (r"(v)\1_proj", "invalid escape"),
        (r"(?=v)v_proj", "invalid perl operator"),
        ("(x{1,1000}){1,1000}", ""),
    ],
)
def test_patterns_outside_re2_syntax_are_refused_naming_the_entry(pattern: str, why: str) -> None:
    with pytest.raises(
        ValidationError, match=r"not a regular expression this server accepts \(RE2 syntax"
    ) as info:
        RunSpec.model_validate(_velora_spec(pattern))
    assert repr(pattern) in str(info.value) and why in str(info.value)
