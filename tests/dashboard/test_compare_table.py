"""One comparison table: for a two-seed comparison the CLI, the API and the dashboard show the same
numbers (velora_core.contract.table computes them, in the API; the views only format them)."""

from __future__ import annotations

from typing import Any

import pytest

from tests.dashboard.conftest import LiveService
from tests.dashboard.test_pages import OpenPage
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
