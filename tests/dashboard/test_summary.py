"""The numbers Compare and Runs show, from API-shaped data: means and spread over seeds, deltas,
the Pareto front, progress and ETA, error words, downloads, seeds and request bodies."""

from __future__ import annotations

import csv
import io
import json
from datetime import UTC, datetime, timedelta

import pytest

from dashboard.api import describe_error
from dashboard.formatting import format_metric, metric_help, query_number
from dashboard.forms import parse_seeds
from dashboard.run_status import (
    COMPARISON_STATUS_WORDS,
    base_run_words,
    comparison_status_words,
    eta_seconds,
    progress_fraction,
    run_rows,
    split_roles,
    status_words,
)
from dashboard.run_tables import metric_rows, run_facts
from dashboard.summary import chance_words, display_table, front_places, rows_csv
from velora_core.contract.result import ComparisonStatus, RunResult
from velora_core.contract.table import comparison_table


def run_record(run: dict, detail: dict | None) -> RunResult:
    """A run as the API's table reads it: its result, else its status and error."""
    found = (detail or {}).get("result")
    if found:
        return RunResult.model_validate(
            {"method": run["method"], "status": run["status"], "spec": {"seed": run["seed"]}} | found
        )
    return RunResult(
        method=run["method"], status=run["status"], error=run.get("error"), spec={"seed": run["seed"]}
    )


def method_rows(records: list[RunResult], methods: list[str]) -> list[dict]:
    """The rows the API sends in ``table`` (JSON), for these results."""
    return [row.model_dump(mode="json") for row in comparison_table(records, methods)]


def run(run_id: int, method: str, seed: int, status: str = "completed", **fields: object) -> dict:
    return {"id": run_id, "method": method, "seed": seed, "status": status, "error": None} | fields


def result(weights: int, activations: int, accuracy: float | None, *, peak: int | None = None) -> dict:
    return {
        "result": {
            "memory": {
                "weight_bytes": weights,
                "trainable_bytes": 100,
                "gradient_bytes": 100,
                "optimizer_bytes": 200,
                "activation_bytes": activations,
                "peak_bytes": peak,
                "predicted_activation_bytes": 0,
                "velora_measured_bytes": 0,
            },
            "eval": {"metric": "mc_accuracy", "value": accuracy, "chance": 0.25},
            "throughput": {"tokens_per_s": 1000.0},
            "loss_curve": [{"step": 1, "loss": 2.0, "lr": 0.1}],
        }
    }


def test_method_rows_average_seeds_and_compare_with_full_and_chance() -> None:
    records = [
        run_record(run(1, "full", 0), result(0, 1000, 0.50)),
        run_record(run(2, "full", 1), result(0, 1000, 0.30)),
        run_record(run(3, "lora", 0), result(400, 600, 0.45)),
        run_record(run(4, "lora", 1), result(400, 600, 0.35)),
        run_record(run(5, "qlora", 0, "failed", error="CUDA out of memory"), None),
    ]
    full, lora, qlora = method_rows(records, ["full", "lora", "qlora"])
    assert full["total_bytes"] == 1400 and lora["total_bytes"] == 1400
    assert full["value"] == pytest.approx(0.40)
    assert full["value_spread"] == pytest.approx(0.1414213, rel=1e-5)  # sample standard deviation
    assert lora["delta_vs_full"] == pytest.approx(0.0)
    assert lora["delta_vs_chance"] == pytest.approx(15.0)  # points
    assert lora["memory_vs_full"] == pytest.approx(1.0)
    assert qlora["completed"] == 0 and qlora["value"] is None and qlora["error"] == "CUDA out of memory"

    table = display_table([full, lora, qlora], measured_peak=False, gpu_budget_bytes=1024**3)
    assert table[0]["Accuracy"] == "40.0 % ± 14.1"
    assert table[1]["Δ vs chance"] == "+15.0 pts"
    assert table[2]["Memory (analytic)"] == "–" and table[2]["Status"] == "failed"
    assert [row["Fits 1 GiB"] for row in table] == ["yes", "yes", "–"]


def test_measured_peak_is_preferred_over_the_analytic_total() -> None:
    records = [
        run_record(run(1, "full", 0), result(0, 1000, 0.5, peak=4000)),
        run_record(run(2, "velora+full", 0), result(0, 200, 0.5, peak=2000)),
    ]
    full, velora = method_rows(records, ["full", "velora+full"])
    assert (full["memory_bytes"], velora["memory_bytes"]) == (4000, 2000)
    assert velora["memory_vs_full"] == pytest.approx(0.5)
    assert "Peak memory" in display_table([full, velora], measured_peak=True)[0]


def with_ci(record: RunResult, ci: tuple[float, float]) -> RunResult:
    return record.model_copy(update={"eval": record.eval.model_copy(update={"ci95": ci})})


def test_front_places_and_chance_words_read_the_intervals() -> None:
    records = [
        with_ci(run_record(run(1, "full", 0), result(0, 1000, 0.44)), (0.40, 0.48)),
        with_ci(run_record(run(2, "lora", 0), result(0, 600, 0.41)), (0.37, 0.45)),
        with_ci(run_record(run(3, "qlora", 0), result(0, 300, 0.27)), (0.23, 0.31)),
    ]
    rows = method_rows(records, ["full", "lora", "qlora"])
    places = front_places(rows)
    # full is dearer than lora and cannot be told from it: not on the front, and the chart says why.
    assert [p.on_front for p in places] == [False, True, True]
    assert places[0].not_distinguishable_from == (1,)
    assert chance_words(rows) == (
        "Above chance (25.0 %) by more than the 95 % interval: full, lora; "
        "not distinguishable from chance: qlora."
    )


def test_several_seeds_give_the_envelope_of_their_intervals() -> None:
    records = [
        with_ci(run_record(run(1, "full", 0), result(0, 1000, 0.50)), (0.45, 0.55)),
        with_ci(run_record(run(2, "full", 1), result(0, 1000, 0.40)), (0.35, 0.45)),
    ]
    (full,) = method_rows(records, ["full"])
    assert full["ci95"] == [0.35, 0.55]
    assert display_table([full], measured_peak=False)[0]["95 % interval"] == "35.0–55.0 %"


def test_progress_and_eta_of_a_running_run() -> None:
    now = datetime(2026, 1, 1, 12, 0, 40, tzinfo=UTC)
    running = run(
        1, "lora", 0, "running", step=20, total_steps=100, phase="train", started_at="2026-01-01T12:00:00Z"
    )
    assert progress_fraction(running) == pytest.approx(0.2)
    assert eta_seconds(running, now) == pytest.approx(160.0)  # 40 s for 20 steps, 80 to go
    assert status_words(running) == "Running (train, step 20 of 100)"
    done = run(1, "lora", 0, "completed", step=100, total_steps=0)
    assert progress_fraction(done) == 1.0 and eta_seconds(done, now + timedelta(days=1)) is None
    assert progress_fraction(run(1, "lora", 0, "queued", step=0, total_steps=0)) == 0.0


def test_base_runs_are_shown_apart_from_the_methods() -> None:
    base = run(1, "full", 0, "running", role="base", depends_on=[], step=30, total_steps=200, phase="train")
    waiting = run(2, "lora", 0, "waiting", role="method", depends_on=[1])
    methods, bases = split_roles([base, waiting, run(3, "qlora", 0, "waiting", depends_on=[1])])
    assert [r["id"] for r in methods] == [2, 3] and bases == [base]
    assert status_words(waiting) == "Waiting for its base model (run 1)"
    assert base_run_words(base, None) == "Run 1: pre-training full · Running (train, step 30 of 200)"
    finished = {
        "eval": {"metric": "perplexity", "value": 12.345},
        "throughput": {"train_time_s": 75.0},
        "environment": {"reused_artifact": "/a/b"},
    }
    assert base_run_words(run(1, "full", 0, role="base"), finished) == (
        "Run 1: pre-training full · Completed · Perplexity 12.35 · 1 min 15 s training"
        " · reused the model an earlier run saved"
    )
    assert [row["Method"] for row in run_rows([base, waiting])] == ["full (base model)", "lora"]
    failed = run(2, "lora", 0, "failed", error="its base model's pre-training, run 1 (full), failed: boom")
    assert status_words(failed) == "Failed: its base model's pre-training, run 1 (full), failed: boom"


def test_failures_are_told_in_words() -> None:
    assert (
        status_words(run(1, "qlora", 0, "out_of_memory", error="needs 80 GiB"))
        == "Out of memory: needs 80 GiB"
    )
    assert status_words(run(1, "full", 0, "queued")) == "Waiting for a worker"
    assert describe_error(404, {"detail": "Run not found"}) == "Run not found"
    body = {
        "detail": [{"loc": ["body", "base", "steps"], "msg": "Input should be greater than or equal to 1"}]
    }
    assert (
        describe_error(422, body)
        == "The API rejected the request: base.steps: Input should be greater than or equal to 1"
    )
    assert describe_error(401, {"detail": "Invalid or revoked API token"}).startswith(
        "The API needs a token: Invalid or revoked API token."
    )


def test_csv_download_has_one_row_per_method_with_raw_numbers() -> None:
    rows = method_rows([run_record(run(1, "full", 0), result(0, 1000, 0.5))], ["full"])
    (line,) = list(csv.DictReader(io.StringIO(rows_csv(rows))))
    assert (line["method"], line["total_bytes"], line["value"]) == ("full", "1400", "0.5")  # integer bytes
    json.loads(json.dumps(rows))  # the JSON download serialises the same rows


def test_parse_seeds() -> None:
    assert parse_seeds("0, 1 2") == [0, 1, 2]
    assert parse_seeds("") == []
    for bad, message in (("0, -1", "whole numbers"), ("1, 1", "repeat"), ("x", "whole numbers")):
        with pytest.raises(ValueError, match=message):
            parse_seeds(bad)


def test_comparison_status_words_count_methods_apart_from_the_base_run() -> None:
    assert set(COMPARISON_STATUS_WORDS) == set(ComparisonStatus)
    base = run(1, "full", 0, "completed", role="base")
    methods = [run(2, "full", 0), run(3, "lora", 0), run(4, "qlora", 0, "cancelled")]
    partial = {"status": "partial", "runs": [base, *methods]}
    assert comparison_status_words(partial) == "Partly completed · 2 of 3 methods completed · base ✓"
    cancelled = {
        "status": "cancelled",
        "runs": [run(1, "full", 0, "cancelled", role="base"), run(2, "lora", 0, "cancelled")],
    }
    assert comparison_status_words(cancelled) == "Cancelled · 0 of 1 method completed · base cancelled"
    two_seeds = {"status": "running", "runs": [run(2, "lora", 0), run(3, "lora", 1, "running")]}
    assert (
        comparison_status_words(two_seeds) == "Running · 0 of 1 method completed"
    )  # a seed is still running


def test_a_cancelled_run_shows_the_steps_it_did() -> None:
    cancelled = run(1, "lora", 0, "cancelled", step=6, total_steps=10)
    assert progress_fraction(cancelled) == pytest.approx(0.6)  # was a full bar
    starting = run(
        1,
        "lora",
        0,
        "running",
        step=0,
        total_steps=10,
        phase="setup",
        message="loading the model (tiny) on cpu",
    )
    assert status_words(starting) == "Running (setup: loading the model (tiny) on cpu, step 0 of 10)"


def test_query_number_parses_or_explains() -> None:
    gib = {"minimum": 0.5, "maximum": 1e6, "what": "GiB"}
    assert query_number({"gpu_gib": "24"}, "gpu_gib", **gib) == (24.0, None)
    assert query_number({}, "gpu_gib", **gib) == (None, None)
    for bad in ("abc", "0.1", "nan", "inf", "1e9"):
        value, message = query_number({"gpu_gib": bad}, "gpu_gib", **gib)
        assert value is None and message == (
            f"Ignored gpu_gib={bad!r} in the address: expected GiB. Showing the default instead."
        )
    ids = {"minimum": 1, "maximum": 2**53 - 1, "integer": True, "what": "a run id"}
    assert query_number({"run": "7"}, "run", **ids) == (7, None)
    assert all(query_number({"run": bad}, "run", **ids)[0] is None for bad in ("0", "1.5", "x", str(2**53)))


def test_metric_rows_have_readable_names_and_no_empty_column() -> None:
    points = [
        {
            "step": 1,
            "loss": 2.0,
            "lr": 1e-3,
            "tokens_per_s": 10.0,
            "step_time_s": None,
            "memory_allocated_bytes": None,
        },
        {
            "step": 2,
            "loss": 1.5,
            "lr": 1e-3,
            "tokens_per_s": None,
            "step_time_s": 0.2,
            "memory_allocated_bytes": None,
        },
    ]
    assert metric_rows(points) == [
        {"Step": 1, "Loss": 2.0, "Learning rate": 1e-3, "Tokens/s": 10.0, "Step time (s)": None},
        {"Step": 2, "Loss": 1.5, "Learning rate": 1e-3, "Tokens/s": None, "Step time (s)": 0.2},
    ]
    assert metric_rows([]) == []


def test_classification_metrics_read_as_percentages_with_their_interval():
    assert format_metric("accuracy", 0.886) == "88.6 %"
    assert format_metric("matthews", 0.5123) == "0.512"
    evaluation = {
        "metric": "accuracy",
        "value": 0.886,
        "ci95": [0.85, 0.915],
        "num_examples": 369,
        "chance": 0.122,
    }
    assert metric_help(evaluation) == "95% interval 85.0 % to 91.5 %; 369 examples; chance 12.2 %"
    assert metric_help({"metric": "perplexity", "value": 3.0}) is None
    facts = run_facts({"spec": {"workload": "image-classification"}, "result": {"eval": evaluation}})
    assert {"Fact": "Workload", "Value": "image-classification"} in facts
    assert {"Fact": "Metric", "Value": "Accuracy"} in facts
