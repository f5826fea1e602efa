"""The comparison table, defined once: one row per method over its seeds, with each seed's detail.

A :class:`MethodRow` holds what a method cost (bytes, integer means over the seeds that completed),
what it achieved (the metric's mean, spread and 95 % interval over seeds), its settings (what differs
between methods) and how it stands against full fine-tuning and chance. Deltas are in points for a
percentage metric (``100 · (method − reference)``) and in the metric's own units otherwise, always the
method minus the reference: ``+2.0`` is two points above full, and for perplexity a positive delta
is worse.

The API computes the table once, in ``GET /comparisons/{id}`` (``table``); the CLI table, the CSV and
JSON downloads and the dashboard only format these rows (:func:`table_csv`, :func:`table_json`). No
torch: the backend and the dashboard import this.
"""

from __future__ import annotations

import csv
import io
import json
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field

from velora_core.contract.intervals import (
    distinguishable,
    mean_and_spread,
    paired_difference,
    seeds_interval,
    shared_items,
)
from velora_core.contract.method_parts import parse_method
from velora_core.contract.result import (
    MEMORY_COMPONENTS,
    PEAK_COMPONENTS,
    RunResult,
    RunStatus,
    full_reference,
    memory_vs_full,
)
from velora_core.contract.workload_registry import PERCENT_METRICS

#: The reference every delta and ratio is taken against.
REFERENCE = "full"


def points(metric: str | None, difference: float | None) -> float | None:
    """A difference of two values of ``metric`` in the table's unit: points (×100) for a percentage,
    the metric's own units otherwise."""
    if difference is None:
        return None
    return 100.0 * difference if metric in PERCENT_METRICS else difference


class MethodSettingsRow(BaseModel):
    """What a method was run with, as the config-diff table and the CSV show it (None: not used)."""

    techniques: list[str] = Field(default_factory=list, description="Memory techniques on its base.")
    rank: int | None = Field(default=None, description="LoRA's r or GaLore's rank.")
    alpha: float | None = Field(default=None, description="LoRA's alpha or GaLore's scale.")
    targets: list[str] | None = Field(default=None, description="Modules LoRA or GaLore adapt.")
    groups: int | None = Field(default=None, description="VeLoRA's sub-tokens per token (num_groups).")
    velora_targets: list[str] | None = Field(default=None, description="Modules VeLoRA compresses.")
    lr: float | None = Field(default=None, description="The learning rate the method trains with.")


def method_settings(method: str, spec: dict[str, Any] | None) -> MethodSettingsRow:
    """The settings of ``method`` as a run's spec (a RunSpec dump) records them."""
    spec = spec or {}
    config = spec.get("method_config") or {}
    lora, galore, velora = (config.get(k) or {} for k in ("lora", "galore", "velora"))
    adapted = lora or galore
    try:
        techniques = list(parse_method(method).techniques)
    except ValueError:
        techniques = []
    lr = lora.get("lr") or galore.get("lr") or (spec.get("optimizer") or {}).get("lr")
    return MethodSettingsRow(
        techniques=techniques,
        rank=lora.get("r", galore.get("rank")),
        alpha=lora.get("alpha", galore.get("scale")),
        targets=adapted.get("target_modules"),
        groups=velora.get("num_groups"),
        velora_targets=velora.get("target_modules"),
        lr=lr,
    )


class SeedDetail(BaseModel):
    """One run of a method: its seed's own numbers, against the same seed's full fine-tuning."""

    run_id: int | None = None
    seed: int | None = None
    status: RunStatus
    steps_done: int = 0
    value: float | None = None
    ci95: tuple[float, float] | None = None
    memory_bytes: int | None = Field(default=None, description="Its headline memory (measured peak).")
    memory_vs_full: float | None = None
    delta_vs_full: float | None = Field(default=None, description="Points (or units) against full's seed.")
    paired_items: int | None = Field(default=None, description="Items this run and full's seed both scored.")
    paired_delta_ci95: tuple[float, float] | None = Field(
        default=None, description="Newcombe's 95 % interval of the difference on those items (points)."
    )
    error: str | None = None


class MethodRow(BaseModel):
    """One line of the comparison table: a method over its seeds (means of the completed runs)."""

    method: str
    seeds: list[int | None]
    runs: int
    completed: int = Field(description="Runs that completed (their numbers make the row).")
    status: str = Field(description="The runs' status, or their statuses joined by ', '.")
    settings: MethodSettingsRow
    weight_bytes: int | None = None
    trainable_bytes: int | None = None
    gradient_bytes: int | None = None
    optimizer_bytes: int | None = None
    activation_bytes: int | None = None
    total_bytes: int | None = Field(default=None, description="The analytic sum of the five components.")
    measured_peak_bytes: int | None = Field(default=None, description="The memory tracker's peak.")
    peak_phase: str | None = None
    peak_components: dict[str, int] = Field(
        default_factory=dict, description="Bytes at the measured peak by the tracker's categories."
    )
    temporary_bytes: int | None = None
    cuda_peak_bytes: int | None = Field(default=None, description="CUDA's max_memory_allocated.")
    cuda_reserved_bytes: int | None = None
    predicted_activation_bytes: int | None = Field(
        default=None, description="VeLoRA's analytic bytes saved for backward."
    )
    velora_measured_bytes: int | None = None
    memory_bytes: int | None = Field(default=None, description="The headline memory: peak, else total.")
    memory_vs_full: float | None = None
    trainable_params: int | None = None
    total_params: int | None = None
    metric: str | None = None
    value: float | None = None
    value_spread: float | None = Field(default=None, description="Sample standard deviation over seeds.")
    ci95: tuple[float, float] | None = Field(default=None, description="Envelope of the seeds' intervals.")
    num_examples: int | None = None
    chance: float | None = None
    delta_vs_full: float | None = Field(default=None, description="Points (or units), method − full.")
    distinguishable_from_full: bool | None = Field(
        default=None,
        description="Whether the method's accuracy can be told from full's: the paired interval over the "
        "items both scored excludes 0 (one seed with item records), else the 95 % intervals are disjoint.",
    )
    paired_items: int | None = Field(default=None, description="Items the method and full both scored.")
    paired_delta_ci95: tuple[float, float] | None = Field(
        default=None, description="The paired 95 % interval of method − full on those items (points)."
    )
    delta_vs_chance: float | None = Field(default=None, description="Points (or units), method − chance.")
    tokens_per_s: float | None = None
    train_time_s: float | None = None
    error: str | None = None
    per_seed: list[SeedDetail] = Field(default_factory=list)


def _int_mean(values: Sequence[int | float | None]) -> int | None:
    present = [v for v in values if v is not None]
    return round(statistics.fmean(present)) if present else None


def _float_mean(values: Sequence[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return statistics.fmean(present) if present else None


def _seed(result: RunResult) -> int | None:
    return (result.spec or {}).get("seed")


def _measured(result: RunResult) -> bool:
    return result.status == RunStatus.COMPLETED


def comparison_table(
    results: Sequence[RunResult],
    methods: Sequence[str] | None = None,
    run_ids: Sequence[int | None] | None = None,
) -> list[MethodRow]:
    """The table of a comparison's method runs (base runs excluded), one row per method in
    ``methods``' order (else first appearance). A run that did not complete contributes its status,
    error and steps, never a number."""
    ids = list(run_ids) if run_ids is not None else [None] * len(results)
    order = list(methods) if methods is not None else list(dict.fromkeys(r.method for r in results))
    order += [m for m in dict.fromkeys(r.method for r in results) if m not in order]
    full_by_seed = {_seed(r): r for r in results if r.method == REFERENCE and _measured(r)}
    rows = [_method_row(m, results, ids, full_by_seed) for m in order]
    full = next((row for row in rows if row.method == REFERENCE and row.completed), None)
    for row in rows:
        if full is None:
            continue
        row.memory_vs_full = memory_vs_full(row.memory_bytes, full.memory_bytes)
        if full.metric == row.metric and row.value is not None and full.value is not None:
            row.delta_vs_full = points(row.metric, row.value - full.value)
            row.distinguishable_from_full = (
                distinguishable(row.ci95, full.ci95) if row.method != REFERENCE else None
            )
        paired = [d for d in row.per_seed if d.paired_delta_ci95 is not None]
        if row.method != REFERENCE and len(row.per_seed) == 1 and paired:  # one seed: its paired test
            low, high = row.paired_delta_ci95 = paired[0].paired_delta_ci95 or (0.0, 0.0)
            row.paired_items = paired[0].paired_items
            row.distinguishable_from_full = low > 0 or high < 0
    return rows


def _method_row(
    method: str,
    results: Sequence[RunResult],
    ids: Sequence[int | None],
    full_by_seed: dict[Any, RunResult],
) -> MethodRow:
    own = [(i, r) for i, r in zip(ids, results, strict=True) if r.method == method]
    done = [r for _, r in own if _measured(r)]
    memories = [r.memory for r in done]
    statuses = list(dict.fromkeys(str(r.status) for _, r in own))
    values = [r.eval.value for r in done]
    value, spread = mean_and_spread(values)
    metric = next((r.eval.metric for r in done if r.eval.metric), None)
    chance = _float_mean([r.eval.chance for r in done])
    categories = sorted({k for m in memories for k in m.peak_components}, key=_category_order)
    row = MethodRow(
        method=method,
        seeds=[_seed(r) for _, r in own],
        runs=len(own),
        completed=len(done),
        status=", ".join(statuses) if statuses else "",
        settings=method_settings(method, next((r.spec for _, r in own if r.spec), None)),
        weight_bytes=_int_mean([m.weight_bytes for m in memories]),
        trainable_bytes=_int_mean([m.trainable_bytes for m in memories]),
        gradient_bytes=_int_mean([m.gradient_bytes for m in memories]),
        optimizer_bytes=_int_mean([m.optimizer_bytes for m in memories]),
        activation_bytes=_int_mean([m.activation_bytes for m in memories]),
        total_bytes=_int_mean([m.total_bytes for m in memories]),
        measured_peak_bytes=_int_mean([m.measured_peak_bytes for m in memories]),
        peak_phase=next((m.peak_phase for m in memories if m.peak_phase), None),
        peak_components={
            c: _int_mean([m.peak_components.get(c, 0) for m in memories]) or 0 for c in categories
        },
        temporary_bytes=_int_mean([m.temporary_bytes for m in memories]),
        cuda_peak_bytes=_int_mean([m.peak_bytes for m in memories]),
        cuda_reserved_bytes=_int_mean([m.cuda_reserved_bytes for m in memories]),
        predicted_activation_bytes=_int_mean([m.predicted_activation_bytes or None for m in memories]),
        velora_measured_bytes=_int_mean([m.velora_measured_bytes or None for m in memories]),
        memory_bytes=_int_mean([m.headline_bytes for m in memories]),
        trainable_params=_int_mean([m.trainable_params or None for m in memories]),
        total_params=_int_mean([m.total_params or None for m in memories]),
        metric=metric if done else None,
        value=value,
        value_spread=spread,
        ci95=seeds_interval([r.eval.ci95 for r in done if r.eval.value is not None]),
        num_examples=_int_mean([r.eval.num_examples or None for r in done]),
        chance=chance,
        delta_vs_chance=points(metric, value - chance) if value is not None and chance is not None else None,
        tokens_per_s=_float_mean([r.throughput.tokens_per_s for r in done]),
        train_time_s=_float_mean([r.throughput.train_time_s for r in done]),
        error=next((r.error for _, r in own if r.error), None),
    )
    row.per_seed = [_seed_detail(i, r, full_by_seed) for i, r in own]
    return row


def _category_order(category: str) -> int:
    return PEAK_COMPONENTS.index(category) if category in PEAK_COMPONENTS else len(PEAK_COMPONENTS)


def _seed_detail(run_id: int | None, r: RunResult, full_by_seed: dict[Any, RunResult]) -> SeedDetail:
    detail = SeedDetail(run_id=run_id, seed=_seed(r), status=r.status, steps_done=r.steps_done, error=r.error)
    if not _measured(r):
        return detail
    detail.value, detail.ci95 = r.eval.value, r.eval.ci95
    detail.memory_bytes = _int_mean([r.memory.headline_bytes])
    base = full_reference(full_by_seed, detail.seed)
    if base is not None:
        detail.memory_vs_full = memory_vs_full(detail.memory_bytes, base.memory.headline_bytes)
        if r.eval.value is not None and base.eval.value is not None and base.eval.metric == r.eval.metric:
            detail.delta_vs_full = points(r.eval.metric, r.eval.value - base.eval.value)
        if r is not base and r.eval.items is not None and base.eval.items is not None:
            mine, theirs = shared_items(r.eval.items.model_dump(), base.eval.items.model_dump())
            if mine:
                _, (low, high) = paired_difference(mine, theirs)
                detail.paired_items = len(mine)
                unit = 100.0 if r.eval.metric in PERCENT_METRICS else 1.0  # points, as every delta
                detail.paired_delta_ci95 = (unit * low, unit * high)
    return detail


# --- formats: CSV and JSON ------------------------------------------------------------------------

#: The one CSV schema (the CLI's ``comparison.csv``, the API's and the dashboard's downloads): byte
#: counts as integers, deltas in points, the settings that differ between methods.
CSV_COLUMNS = [
    "method",
    "techniques",
    "rank",
    "alpha",
    "targets",
    "groups",
    "lr",
    "seeds",
    "runs",
    "completed",
    "status",
    "measured_peak_bytes",
    "peak_phase",
    *(f"peak_{c}_bytes" for c in PEAK_COMPONENTS),
    *MEMORY_COMPONENTS,
    "total_bytes",
    "predicted_activation_bytes",
    "velora_measured_bytes",
    "cuda_peak_bytes",
    "cuda_reserved_bytes",
    "memory_bytes",
    "memory_vs_full",
    "metric",
    "value",
    "value_spread",
    "ci95_low",
    "ci95_high",
    "num_examples",
    "chance",
    "delta_vs_full_pts",
    "distinguishable_from_full",
    "paired_items",
    "paired_delta_ci95_low_pts",
    "paired_delta_ci95_high_pts",
    "delta_vs_chance_pts",
    "values_by_seed",
    "tokens_per_s",
    "train_time_s",
    "error",
]


def _joined(values: Sequence[Any] | None) -> str | None:
    return None if values is None else " ".join(str(v) for v in values)


def csv_record(row: MethodRow) -> dict[str, Any]:
    """One CSV line of a method row (the keys of :data:`CSV_COLUMNS`)."""
    s = row.settings
    record = row.model_dump(
        include={*MEMORY_COMPONENTS, *(c for c in CSV_COLUMNS if c in MethodRow.model_fields)}
    )
    record |= {
        "techniques": "+".join(s.techniques),
        "rank": s.rank,
        "alpha": s.alpha,
        "targets": _joined(s.targets),
        "groups": s.groups,
        "lr": s.lr,
        "seeds": _joined(row.seeds),
        **{f"peak_{c}_bytes": row.peak_components.get(c) for c in PEAK_COMPONENTS},
        "ci95_low": row.ci95[0] if row.ci95 else None,
        "ci95_high": row.ci95[1] if row.ci95 else None,
        "delta_vs_full_pts": row.delta_vs_full,
        "paired_delta_ci95_low_pts": row.paired_delta_ci95[0] if row.paired_delta_ci95 else None,
        "paired_delta_ci95_high_pts": row.paired_delta_ci95[1] if row.paired_delta_ci95 else None,
        "delta_vs_chance_pts": row.delta_vs_chance,
        "values_by_seed": " ".join(f"{d.seed}={d.value}" for d in row.per_seed if d.value is not None),
    }
    return record


def table_csv(rows: Sequence[MethodRow]) -> str:
    """The table as CSV text (:data:`CSV_COLUMNS`)."""
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=CSV_COLUMNS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows(csv_record(row) for row in rows)
    return out.getvalue()


def table_json(rows: Sequence[MethodRow], **context: Any) -> str:
    """The table as JSON: ``{"table": [MethodRow, ...], **context}`` (the comparison's name, spec …)."""
    return json.dumps({**context, "table": [row.model_dump(mode="json") for row in rows]}, indent=2)


def write_outputs(
    results: Sequence[RunResult], out_dir: str | Path, rows: Sequence[MethodRow] | None = None
) -> tuple[Path, Path]:
    """Write ``comparison.json`` (the list of RunResults, as stored) and ``comparison.csv`` (the table:
    ``rows`` as the API computed them, else :func:`comparison_table` of ``results``)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    json_path, csv_path = out / "comparison.json", out / "comparison.csv"
    json_path.write_text(json.dumps([r.model_dump(mode="json") for r in results], indent=2))
    csv_path.write_text(table_csv(rows if rows is not None else comparison_table(results)))
    return json_path, csv_path
