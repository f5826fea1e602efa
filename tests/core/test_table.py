"""The comparison table's paired columns: a method against full on the items both scored."""

from __future__ import annotations

import pytest

from velora_core.contract.intervals import paired_difference, wilson
from velora_core.contract.result import EvalResult, ItemRecords, RunResult, RunStatus
from velora_core.contract.table import COLUMNS, summary_rows


def run(method: str, correct: list[bool]) -> RunResult:
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
    full = [True] * 440 + [False] * 300 + [True] * 20 + [False] * 40
    lora = [True] * 440 + [False] * 300 + [False] * 20 + [True] * 40
    rows = {row["method"]: row for row in summary_rows([run("full", full), run("lora", lora)])}
    _, (low, high) = paired_difference(lora, full)
    assert rows["lora"]["paired_items"] == 800
    assert (rows["lora"]["paired_delta_ci95_low"], rows["lora"]["paired_delta_ci95_high"]) == pytest.approx(
        (low, high)
    )
    # The separate intervals overlap; the paired one excludes 0, so the two are told apart.
    assert rows["lora"]["distinguishable_from_full"] is True
    assert rows["full"]["paired_items"] is None and set(rows["lora"]) == set(COLUMNS)
