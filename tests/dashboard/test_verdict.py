"""The verdict at the top of Compare, what Launch refuses before sending, and "Will it fit?"'s model
input: pure functions of the API's rows and schemas."""

from __future__ import annotations

import pytest

from dashboard.fit_input import model_problem, parse_config
from dashboard.launch_checks import duration_estimate, field_range, request_problems
from dashboard.verdict import cheapest_sentence, config_diff, toy_banner, verdict_lines
from velora_core.contract.presets.comparisons import comparison_preset
from velora_core.contract.spec import ComparisonSpec

MIB = 1024**2


def row(method: str, peak: int, value: float, ci: tuple[float, float], **settings: object) -> dict:
    return {
        "method": method,
        "memory_bytes": peak * MIB,
        "metric": "accuracy",
        "value": value,
        "ci95": list(ci),
        "memory_vs_full": None,
        "completed": 1,
        "total_params": 3_500_000,
        "settings": {"techniques": [], "rank": None, "lr": 1e-3, **settings},
    }


ROWS = [
    row("full", 400, 0.62, (0.55, 0.69)),
    row("lora", 120, 0.60, (0.53, 0.67), rank=8),
    row("qlora", 90, 0.40, (0.33, 0.47), rank=8, techniques=["4bit"]),
]


def test_verdict_sorts_by_peak_colours_the_fit_and_names_the_cheapest_peer_of_the_best() -> None:
    lines = verdict_lines(ROWS, gpu_budget_bytes=256 * MIB)
    assert [line.split("**")[1] for line in lines] == ["qlora", "lora", "full"]
    assert lines[0].endswith(":green[fits 0.25 GiB]") and lines[2].endswith(":red[does not fit 0.25 GiB]")
    assert "Accuracy 60.0 % [53.0–67.0 %]" in lines[1]
    sentence = cheapest_sentence(ROWS)
    assert sentence.startswith(
        "lora is the cheapest method whose accuracy cannot be told from the best, full (62.0 %)"
    )


def test_the_banner_says_when_bytes_do_not_carry_over() -> None:
    comparison = {"spec": {"base": {"device": "cpu"}}}
    banner = toy_banner(comparison, ROWS, {})
    assert banner.startswith("These runs ran on a CPU and use a toy model (3.5 M parameters)")
    big = [dict(r, total_params=7_000_000_000) for r in ROWS]
    assert (
        toy_banner({"spec": {"base": {"device": "cuda"}}}, big, {"1": {"environment": {"device": "cuda:0"}}})
        is None
    )


def test_config_diff_shows_only_the_settings_that_differ() -> None:
    diff = config_diff(ROWS)
    assert diff == [
        {"Method": "full", "Techniques": "–", "Rank": "–"},
        {"Method": "lora", "Techniques": "–", "Rank": "8"},
        {"Method": "qlora", "Techniques": "4bit", "Rank": "8"},
    ]
    assert config_diff(ROWS[:1]) == []


def test_launch_checks_a_preset_request_against_the_schema_and_the_limits() -> None:
    schema = ComparisonSpec.model_json_schema()
    presets = {
        "schemas": {"ComparisonSpec": schema},
        "comparison_specs": {"cpu-smoke": comparison_preset("cpu-smoke").model_dump(mode="json")},
        "limits": {
            "max_steps": 1000,
            "max_micro_batch": 64,
            "max_seq_len": 2048,
            "max_runs_per_comparison": 50,
        },
    }
    assert request_problems({"preset": "cpu-smoke", "overrides": {"steps": 4}}, presets) == []
    assert (
        request_problems({"preset": "cpu-smoke", "overrides": {"methods": ["full", "lora"]}}, presets) == []
    )
    assert request_problems({"preset": "cpu-smoke", "overrides": {"steps": -5}}, presets) == [
        "base.steps: -5 is less than the minimum of 1"
    ]
    assert request_problems({"preset": "cpu-smoke", "overrides": {"pretrain": {"steps": 5000}}}, presets) == [
        "base.model.pretrain.steps: 5,000 exceeds this server's limit of 1,000"
    ]
    assert field_range(schema, "base", "seq_len", limit=2048) == (8, 2048)
    assert field_range(schema, "base", "eval", "max_examples") == (1, 100_000)


def test_duration_estimate_uses_the_median_pace_of_finished_runs() -> None:
    spec = {
        "base": {"steps": 10, "model": {"pretrain": {"steps": 20}}},
        "methods": ["full", "lora"],
        "seeds": [0],
    }
    finished = [
        {
            "status": "completed",
            "total_steps": 10,
            "started_at": "2026-01-01T00:00:00Z",
            "finished_at": "2026-01-01T00:00:20Z",
        },
        {
            "status": "completed",
            "total_steps": 10,
            "started_at": "2026-01-01T00:00:00Z",
            "finished_at": "2026-01-01T00:00:40Z",
        },
        {
            "status": "cancelled",
            "total_steps": 10,
            "started_at": "2026-01-01T00:00:00Z",
            "finished_at": "2026-01-01T00:09:00Z",
        },
    ]
    assert duration_estimate(spec, finished).startswith(
        "Estimated duration: about 2 min 00 s for 40 steps in 2 run(s)"
    )
    assert duration_estimate(spec, []).startswith("No finished runs on this server yet")


@pytest.mark.parametrize(
    ("name", "problem"),
    [
        ("llama-7b", None),
        ("huggyllama/llama-7b", None),
        ("gpt2", None),
        ("llama-7bb", "'llama-7bb' is not a preset: did you mean llama-7b? (a hub model is owner/name)"),
        ("../etc", "is not a hub id"),
    ],
)
def test_fit_model_input_suggests_the_nearest_preset_for_a_typo(name: str, problem: str | None) -> None:
    found = model_problem(name, ["tiny", "llama-7b", "llama-13b"])
    assert found == problem if problem is None or problem.startswith("'") else problem in found


def test_a_pasted_config_must_be_a_models_json_object() -> None:
    assert parse_config('{"hidden_size": 8, "num_hidden_layers": 2}') == (
        {"hidden_size": 8, "num_hidden_layers": 2},
        None,
    )
    assert "not valid JSON" in parse_config("{")[1]
    assert "no hidden_size" in parse_config('{"num_hidden_layers": 2}')[1]


def test_launch_checks_the_rules_across_fields_as_the_api_does() -> None:
    presets = {
        "schemas": {"ComparisonSpec": ComparisonSpec.model_json_schema()},
        "comparison_specs": {"cpu-smoke": comparison_preset("cpu-smoke").model_dump(mode="json")},
        "limits": {},
    }
    assert request_problems({"preset": "cpu-smoke", "overrides": {"seq_len": 131072}}, presets) == [
        "base: seq_len 131072 is beyond the model's limit of 512 positions"
    ]
