"""A comparison's results as a table: rows with deltas against full fine-tuning, JSON and CSV.

No torch: the backend builds the same summary table for ``GET /comparisons/{id}``.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from velora_core.contract.intervals import distinguishable, mean_and_spread, paired_difference, shared_items
from velora_core.contract.result import RunResult, full_reference, measured_peak_bytes, memory_vs_full

MB = 1024 * 1024

COLUMNS = [
    "method",
    "seed",
    "status",
    "peak_mb",
    "measured_peak_mb",
    "peak_phase",
    "temporary_mb",
    "cuda_reserved_mb",
    "weight_mb",
    "trainable_mb",
    "gradient_mb",
    "optimizer_mb",
    "activation_mb",
    "predicted_velora_mb",
    "total_mb",
    "workload",
    "metric",
    "value",
    "ci95_low",
    "ci95_high",
    "num_examples",
    "seeds_mean",
    "seeds_spread",
    "chance",
    "delta_vs_full",
    "distinguishable_from_full",
    "paired_items",
    "paired_delta_ci95_low",
    "paired_delta_ci95_high",
    "memory_vs_full",
    "tokens_per_s",
    "error",
]


def _mb(value: int | float | None) -> float | None:
    return None if value is None else round(value / MB, 3)


def summary_rows(results: Sequence[RunResult]) -> list[dict[str, Any]]:
    """One row per result. ``delta_vs_full`` is the metric minus full fine-tuning's (same seed when
    there is one), and ``distinguishable_from_full`` whether their 95 % intervals are disjoint
    (:func:`velora_core.contract.intervals.distinguishable`); ``ci95_low``/``ci95_high`` the metric's
    interval over ``num_examples``; with several seeds of a method, ``seeds_mean`` and
    ``seeds_spread`` (standard deviation) of its completed runs; ``memory_vs_full`` is
    :func:`velora_core.contract.result.memory_vs_full` (the measured peak where there is one, else the
    total, over full's). Where the run and full's scored the same items (per-item records matched by
    prompt hash), ``paired_items`` counts them, ``paired_delta_ci95_low``/``_high`` is the interval of
    the difference on them (:func:`velora_core.contract.intervals.paired_difference`, much narrower
    than the two separate intervals) and ``distinguishable_from_full`` says whether it excludes 0."""
    full = {(r.spec or {}).get("seed"): r for r in results if r.method == "full" and r.status == "completed"}
    over_seeds = {
        method: mean_and_spread(
            [r.eval.value for r in results if r.method == method and r.status == "completed"]
        )
        for method in {r.method for r in results}
    }
    rows = []
    for r in results:
        seed = (r.spec or {}).get("seed")
        mem = r.memory
        total = mem.total_bytes
        base = full_reference(full, seed)
        delta = memory_ratio = apart = paired = None
        mine: list[bool] = []
        if base is not None and r.status == "completed":
            if r.eval.value is not None and base.eval.value is not None:
                delta = r.eval.value - base.eval.value
                apart = distinguishable(r.eval.ci95, base.eval.ci95) if r is not base else None
            if r is not base and r.eval.items is not None and base.eval.items is not None:
                mine, theirs = shared_items(r.eval.items.model_dump(), base.eval.items.model_dump())
                if mine:
                    _, paired = paired_difference(mine, theirs)
                    apart = paired[0] > 0 or paired[1] < 0
            memory_ratio = memory_vs_full(mem.headline_bytes, base.memory.headline_bytes)
        rows.append(
            {
                "method": r.method,
                "seed": seed,
                "status": str(r.status),
                "peak_mb": _mb(mem.peak_bytes),
                "measured_peak_mb": _mb(measured_peak_bytes(vars(mem))),
                "peak_phase": mem.peak_phase,
                "temporary_mb": _mb(mem.temporary_bytes),
                "cuda_reserved_mb": _mb(mem.cuda_reserved_bytes),
                "weight_mb": _mb(mem.weight_bytes),
                "trainable_mb": _mb(mem.trainable_bytes),
                "gradient_mb": _mb(mem.gradient_bytes),
                "optimizer_mb": _mb(mem.optimizer_bytes),
                "activation_mb": _mb(mem.activation_bytes),
                "predicted_velora_mb": _mb(mem.predicted_activation_bytes),
                "total_mb": _mb(total),
                "workload": (r.spec or {}).get("workload"),
                "metric": r.eval.metric,
                "value": r.eval.value,
                "ci95_low": r.eval.ci95[0] if r.eval.ci95 else None,
                "ci95_high": r.eval.ci95[1] if r.eval.ci95 else None,
                "num_examples": r.eval.num_examples or None,
                "seeds_mean": over_seeds[r.method][0] if over_seeds[r.method][1] is not None else None,
                "seeds_spread": over_seeds[r.method][1],
                "chance": r.eval.chance,
                "delta_vs_full": delta,
                "distinguishable_from_full": apart,
                "paired_items": len(mine) or None,
                "paired_delta_ci95_low": paired[0] if paired else None,
                "paired_delta_ci95_high": paired[1] if paired else None,
                "memory_vs_full": memory_ratio,
                "tokens_per_s": round(r.throughput.tokens_per_s, 1),
                "error": r.error,
            }
        )
    return rows


def write_outputs(results: Sequence[RunResult], out_dir: str | Path) -> tuple[Path, Path]:
    """Write ``comparison.json`` (the list of RunResults) and ``comparison.csv`` (the summary)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    json_path, csv_path = out / "comparison.json", out / "comparison.csv"
    json_path.write_text(json.dumps([r.model_dump(mode="json") for r in results], indent=2))
    with csv_path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(summary_rows(results))
    return json_path, csv_path
