"""The comparison table (velora_core.contract.table): one row per method over seeds, per-seed
detail, deltas in points, integer bytes and the settings in the one CSV schema."""

from __future__ import annotations

import csv
import io
import json

import pytest

from velora_core.contract.result import RunResult
from velora_core.contract.table import CSV_COLUMNS, comparison_table, points, table_csv, table_json

MIB = 1024**2


def result(
    method: str, seed: int, value: float | None, peak: int, *, status: str = "completed", **spec
) -> RunResult:
    return RunResult(
        method=method,
        status=status,
        error=None if status == "completed" else "boom",
        steps_done=4,
        memory={
            "weight_bytes": 3 * MIB,
            "activation_bytes": MIB + seed,
            "measured_peak_bytes": peak,
            "peak_components": {"weights": 3 * MIB, "temporary": peak - 3 * MIB},
        },
        eval={"metric": "mc_accuracy", "value": value, "chance": 0.25, "ci95": (value - 0.1, value + 0.1)}
        if value is not None
        else {"metric": "mc_accuracy"},
        spec={"seed": seed, "optimizer": {"lr": 1e-3}, **spec},
    )


LORA = {"method_config": {"lora": {"r": 8, "alpha": 16.0, "target_modules": ["q_proj", "v_proj"]}}}


def test_two_seeds_make_one_row_per_method_with_deltas_in_points_and_per_seed_detail() -> None:
    results = [
        result("full", 0, 0.50, 10 * MIB),
        result("full", 1, 0.30, 12 * MIB),
        result("lora", 0, 0.45, 5 * MIB, **LORA),
        result("lora", 1, 0.35, 6 * MIB + 1, **LORA),
        result("qlora", 0, None, 0, status="failed"),
    ]
    full, lora, qlora = comparison_table(results, ["full", "lora", "qlora"])
    assert (full.seeds, full.completed, full.value) == ([0, 1], 2, pytest.approx(0.40))
    assert full.value_spread == pytest.approx(0.1414213, rel=1e-5)
    assert full.ci95 == pytest.approx((0.2, 0.6))  # the envelope of the seeds' intervals
    assert lora.memory_bytes == 5.5 * MIB and isinstance(lora.memory_bytes, int)
    assert lora.memory_vs_full == pytest.approx(0.5)
    assert lora.delta_vs_full == pytest.approx(0.0) and lora.delta_vs_chance == pytest.approx(15.0)
    assert lora.distinguishable_from_full is False
    assert [d.delta_vs_full for d in lora.per_seed] == [
        pytest.approx(-5.0),
        pytest.approx(5.0),
    ]  # same seed's full
    assert [d.memory_vs_full for d in lora.per_seed] == [
        pytest.approx(0.5),
        pytest.approx((6 * MIB + 1) / (12 * MIB), abs=1e-4),
    ]
    assert (
        lora.settings.rank == 8 and lora.settings.targets == ["q_proj", "v_proj"] and lora.settings.lr == 1e-3
    )
    # A failed run shows its status and error and no number.
    assert (qlora.completed, qlora.value, qlora.memory_bytes, qlora.error) == (0, None, None, "boom")
    assert qlora.status == "failed" and qlora.per_seed[0].value is None


def test_csv_has_integer_bytes_settings_and_points_and_json_the_per_seed_detail() -> None:
    rows = comparison_table(
        [result("full", 0, 0.5, 10 * MIB), result("velora+lora", 0, 0.6, 4 * MIB, **LORA)]
    )
    lines = list(csv.DictReader(io.StringIO(table_csv(rows))))
    assert list(lines[0]) == CSV_COLUMNS
    velora = lines[1]
    assert velora["measured_peak_bytes"] == str(4 * MIB) and velora["peak_temporary_bytes"] == str(MIB)
    assert velora["activation_bytes"] == str(MIB)
    assert (velora["techniques"], velora["rank"], velora["targets"]) == ("velora", "8", "q_proj v_proj")
    assert float(velora["delta_vs_full_pts"]) == pytest.approx(10.0)
    assert velora["values_by_seed"] == "0=0.6"
    body = json.loads(table_json(rows, name="x"))
    assert body["name"] == "x" and body["table"][1]["per_seed"][0]["delta_vs_full"] == pytest.approx(10.0)


def test_points_are_percentage_points_only_for_percentage_metrics() -> None:
    assert points("accuracy", 0.05) == pytest.approx(5.0)
    assert points("perplexity", 0.05) == 0.05 and points("accuracy", None) is None


def scored(method: str, correct: list[bool]) -> RunResult:
    """A completed run with per-item records (the same prompts for every method)."""
    from velora_core.contract.intervals import wilson
    from velora_core.contract.result import EvalResult, ItemRecords, RunStatus

    n = len(correct)
    items = ItemRecords(
        prompt_hash=[f"p{i}" for i in range(n)],
        loglikelihoods=[[0.0, -1.0]] * n,
        choice=[0 if ok else 1 for ok in correct],
        answer=[0] * n,
        correct=correct,
    )
    evaluation = EvalResult(
        metric="mc_accuracy",
        value=sum(correct) / n,
        ci95=wilson(sum(correct), n),
        num_examples=n,
        items=items,
    )
    return RunResult(method=method, status=RunStatus.COMPLETED, eval=evaluation, spec={"seed": 0})


def test_a_method_sharing_items_with_full_gets_the_paired_interval():
    from velora_core.contract.intervals import paired_difference

    full = [True] * 440 + [False] * 300 + [True] * 20 + [False] * 40
    lora = [True] * 440 + [False] * 300 + [False] * 20 + [True] * 40
    rows = {row.method: row for row in comparison_table([scored("full", full), scored("lora", lora)])}
    _, (low, high) = paired_difference(lora, full)
    assert rows["lora"].paired_items == 800
    assert rows["lora"].paired_delta_ci95 == pytest.approx((100 * low, 100 * high))
    # The separate intervals overlap; the paired one excludes 0, so the two are told apart.
    assert rows["lora"].distinguishable_from_full is True
    assert rows["full"].paired_items is None
    record = next(
        r for r in csv.DictReader(io.StringIO(table_csv(list(rows.values())))) if r["method"] == "lora"
    )
    assert record["paired_items"] == "800" and float(record["paired_delta_ci95_low_pts"]) == pytest.approx(
        100 * low
    )
