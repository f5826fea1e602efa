"""A comparison's results as a table: rows with deltas against full fine-tuning, JSON and CSV.

No torch: the backend builds the same summary table for ``GET /comparisons/{id}``.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from velora_core.contract.result import RunResult, full_reference, memory_vs_full

MB = 1024 * 1024

COLUMNS = [
    "method",
    "seed",
    "status",
    "peak_mb",
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
    "chance",
    "delta_vs_full",
    "memory_vs_full",
    "tokens_per_s",
    "error",
]


def _mb(value: int | None) -> float | None:
    return None if value is None else round(value / MB, 3)


def summary_rows(results: Sequence[RunResult]) -> list[dict[str, Any]]:
    """One row per result. ``delta_vs_full`` is the metric minus full fine-tuning's (same seed when
    there is one); ``memory_vs_full`` is :func:`velora_core.contract.result.memory_vs_full` (the measured peak
    where there is one, else the total, over full's)."""
    full = {(r.spec or {}).get("seed"): r for r in results if r.method == "full" and r.status == "completed"}
    rows = []
    for r in results:
        seed = (r.spec or {}).get("seed")
        mem = r.memory
        total = mem.total_bytes
        base = full_reference(full, seed)
        delta = memory_ratio = None
        if base is not None and r.status == "completed":
            if r.eval.value is not None and base.eval.value is not None:
                delta = r.eval.value - base.eval.value
            memory_ratio = memory_vs_full(mem.headline_bytes, base.memory.headline_bytes)
        rows.append(
            {
                "method": r.method,
                "seed": seed,
                "status": str(r.status),
                "peak_mb": _mb(mem.peak_bytes),
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
                "chance": r.eval.chance,
                "delta_vs_full": delta,
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
