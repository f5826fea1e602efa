"""Compare against the live service: one comparison table (for a two-seed comparison the CLI, the API
and the dashboard show the same numbers), the verdict at the top, what differs between methods, and
states that tell the truth."""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.backend.harness import wait_until
from tests.dashboard.conftest import LiveService
from tests.dashboard.test_pages import OpenPage, texts
from velora_core.cli.table_output import print_table
from velora_core.contract.result import RunResult
from velora_core.contract.table import MethodRow, comparison_table
from velora_core.contract.table_format import format_bytes, format_delta, format_metric, format_ratio


def test_cli_api_and_dashboard_show_the_same_numbers_for_a_two_seed_comparison(
    open_page: OpenPage,
    live_service: LiveService,
    smoke_comparison: dict[str, Any],
    capsys: pytest.CaptureFixture[str],
) -> None:
    comparison_id = smoke_comparison["id"]
    detail = live_service.get(f"/comparisons/{comparison_id}", include="results")
    api_rows = [MethodRow.model_validate(row) for row in detail["table"]]
    assert [row.method for row in api_rows] == detail["spec"]["methods"]
    assert all(row.seeds == [0, 1] and len(row.per_seed) == 2 for row in api_rows)

    # `velora-bench compare` holds the runs' results and computes the same rows.
    runs = [run for run in detail["runs"] if run["role"] == "method"]
    results = [RunResult.model_validate(detail["results"][str(run["id"])]) for run in runs]
    assert comparison_table(results, detail["spec"]["methods"], [run["id"] for run in runs]) == api_rows
    print_table(api_rows)
    cli = capsys.readouterr().out

    # The API's CSV download is the same table.
    csv_text = live_service.client.get(f"/api/v1/comparisons/{comparison_id}/table").text
    assert csv_text.splitlines()[0].startswith("method,techniques,rank,alpha,targets,groups,lr,seeds")

    at = open_page("views/compare.py", comparison=comparison_id)
    shown = at.table[0].value.set_index("Method")
    for row in api_rows:
        expected = {
            "Peak memory": format_bytes(row.memory_bytes),
            "vs full": format_ratio(row.memory_vs_full),
            "Accuracy": format_metric(row.metric, row.value, row.value_spread),
            "Δ vs full": format_delta(row.metric, row.delta_vs_full),
        }
        assert {column: shown.loc[row.method, column] for column in expected} == expected
        line = next(line for line in cli.splitlines() if line.startswith(f"│ {row.method} "))
        assert all(text in line for text in expected.values()), (line, expected)
        assert f",{row.memory_bytes}," in next(
            line for line in csv_text.splitlines() if line.startswith(f"{row.method},")
        )


def test_compare_answers_at_a_glance_with_context_verdict_and_banner(
    open_page: OpenPage, smoke_comparison: dict[str, Any]
) -> None:
    """Issue 20, item 1: what was run, the methods by measured peak with accuracy, interval, memory
    against full and the card, the cheapest method not distinguishable from the best, and a banner."""
    at = open_page("views/compare.py", comparison=smoke_comparison["id"], gpu_gib=0.5)
    words = texts(at.markdown)
    context = next(w for w in words if " parameters · " in w)
    assert context.startswith("tiny · ") and "· cpu" in context and "· fp32 ·" in context
    assert "· 4 steps · micro-batch 4 × 64 tokens ·" in context and context.endswith("seeds 0, 1")
    rows = [MethodRow.model_validate(r) for r in smoke_comparison["table"]]
    by_peak = sorted(rows, key=lambda r: r.memory_bytes)
    verdict = next(w for w in words if w.startswith("1. **"))
    lines = verdict.splitlines()
    assert [line.split("**")[1] for line in lines] == [r.method for r in by_peak]
    assert all(line.endswith(":green[fits 0.5 GiB]") for line in lines)
    assert f"{format_bytes(by_peak[0].memory_bytes)} · Accuracy " in lines[0]
    (sentence,) = texts(at.success)
    assert "cheapest method whose accuracy cannot be told from the best" in sentence.lower()
    assert any("ran on a CPU and use a toy model" in w for w in texts(at.info))


def test_compare_counts_methods_apart_from_the_base_and_shows_what_differs(
    open_page: OpenPage, smoke_comparison: dict[str, Any]
) -> None:
    """Items 3 and 4: "N of N methods completed · base ✓"; a table of the settings that differ."""
    methods = smoke_comparison["spec"]["methods"]
    at = open_page("views/compare.py", comparison=smoke_comparison["id"])
    assert f"**Completed · {len(methods)} of {len(methods)} methods completed · base ✓**" in texts(
        at.markdown
    )
    diff = at.table[1].value.set_index("Method")
    assert list(diff.index) == methods
    assert {"Techniques", "Rank"} <= set(diff.columns)
    assert "Learning rate" not in diff.columns  # the same for every method: not a difference
    assert diff.loc["velora+lora", "Techniques"] == "velora" and diff.loc["full", "Rank"] == "–"
    # Loss at every step (4 steps: 4 points; was steps 1 and 4 only).
    loss = json.loads(at.get("plotly_chart")[-1].proto.spec)
    assert {len(trace["x"]) for trace in loss["data"]} == {4}


def test_a_failed_run_shows_its_error_and_nothing_that_was_not_measured(
    open_page: OpenPage, live_service: LiveService, smoke_comparison: dict[str, Any]
) -> None:
    run = live_service.post(
        "/runs",
        {
            "workload": "pretrain",
            "model": {"source": "hub", "name": "velora-tests/no-such-model"},
            "dataset": {"source": "builtin", "name": "stdlib-corpus"},
            "seq_len": 32,
            "micro_batch": 2,
            "steps": 3,
            "device": "cpu",
            "eval": {"metric": "none"},
            "save_artifact": False,
        },
    )
    path = f"/runs/{run['id']}"
    wait_until(lambda: live_service.get(path)["status"] == "failed", timeout=120, message=live_service.logs)
    at = open_page("views/run_detail.py", run=run["id"])
    (error,) = texts(at.error)
    assert error.startswith("Failed: OSError: ")  # the run's own error
    assert not at.metric  # no "Peak memory 0.00 MiB" of a step that never ran
    assert any(t.startswith("Nothing was measured: the run ended failed") for t in texts(at.info))
    assert not at.get("plotly_chart")
