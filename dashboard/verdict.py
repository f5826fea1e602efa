"""The answer at the top of Compare, from the comparison table the API computed: what was run (one
line of context), the methods by measured peak with their accuracy, memory against full and whether
they fit a card, the cheapest method that cannot be told from the best, a banner when the bytes do
not carry over, and the settings that differ between methods. Pure functions, no Streamlit.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from dashboard.formatting import (
    GIB,
    METRIC_LABELS,
    format_bytes,
    format_interval,
    format_metric,
    format_ratio,
)
from velora_core.contract.intervals import distinguishable

#: Below this many parameters a model is a toy: its activations and optimizer state are no guide
#: to a 7B model's.
TOY_PARAMS = 100_000_000


def _params(count: int | None) -> str:
    if not count:
        return "? parameters"
    for unit, size in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if count >= size:
            return f"{count / size:.1f} {unit} parameters"
    return f"{count} parameters"


def _environment(results: dict[str, Any]) -> dict[str, Any]:
    return next(((r or {}).get("environment") or {} for r in results.values() if r), {})


def context_line(comparison: dict[str, Any], rows: Sequence[dict[str, Any]], results: dict[str, Any]) -> str:
    """What was run, in one line: model and size, device, dtype (and autocast), steps, micro-batch ×
    sequence, evaluation items, seeds."""
    base = comparison["spec"]["base"]
    model = base.get("model") or {}
    name = model.get("name") or (model.get("pretrain") or {}).get("model", {}).get("name") or "?"
    params = max((row.get("total_params") or 0 for row in rows), default=0)
    env = _environment(results)
    device = env.get("device") or base.get("device") or "?"
    if env.get("device_name"):
        device += f" ({env['device_name']})"
    dtype = base.get("dtype", "fp32") + (f", autocast {base['autocast']}" if base.get("autocast") else "")
    items = max((row.get("num_examples") or 0 for row in rows), default=0)
    parts = [
        f"{name} · {_params(params)}",
        device,
        dtype,
        f"{base.get('steps')} steps",
        f"micro-batch {base.get('micro_batch')} × {base.get('seq_len')} tokens",
        f"{items} eval items" if items else "no evaluation",
        f"seeds {', '.join(str(s) for s in comparison['spec'].get('seeds', [0]))}",
    ]
    return " · ".join(parts)


def toy_banner(
    comparison: dict[str, Any], rows: Sequence[dict[str, Any]], results: dict[str, Any]
) -> str | None:
    """A plain warning when these bytes say little about the user's own model: CPU runs, or a model
    under :data:`TOY_PARAMS` parameters. None otherwise."""
    env = _environment(results)
    device = str(env.get("device") or comparison["spec"]["base"].get("device") or "")
    params = max((row.get("total_params") or 0 for row in rows), default=0)
    reasons = []
    if device.startswith("cpu"):
        reasons.append("ran on a CPU")
    if params and params < TOY_PARAMS:
        reasons.append(f"use a toy model ({_params(params)})")
    if not reasons:
        return None
    return (
        f"These runs {' and '.join(reasons)}: their MiB show how the methods rank on this setup, not "
        "what your model needs on a GPU. For that, ask “Predict memory” for your model and card."
    )


def verdict_lines(rows: Sequence[dict[str, Any]], gpu_budget_bytes: float | None) -> list[str]:
    """One markdown line per method that completed, sorted by measured peak (lowest first): peak,
    metric ± interval, memory against full, and with a card whether it fits, in colour."""
    done = sorted((r for r in rows if r.get("memory_bytes") is not None), key=lambda r: r["memory_bytes"])
    lines = []
    for row in done:
        parts = [f"**{row['method']}**", format_bytes(row["memory_bytes"])]
        if row.get("value") is not None:
            label = METRIC_LABELS.get(row["metric"], row["metric"])
            ci = tuple(row["ci95"]) if row.get("ci95") else None
            parts.append(
                f"{label} {format_metric(row['metric'], row['value'])} [{format_interval(row['metric'], ci)}]"
            )
        if row.get("memory_vs_full") is not None:
            parts.append(f"{format_ratio(row['memory_vs_full'])} full's memory")
        if gpu_budget_bytes:
            card = f"{gpu_budget_bytes / GIB:g} GiB"
            fits = row["memory_bytes"] <= gpu_budget_bytes
            parts.append(f":green[fits {card}]" if fits else f":red[does not fit {card}]")
        lines.append(" · ".join(parts))
    return lines


def cheapest_sentence(rows: Sequence[dict[str, Any]]) -> str | None:
    """The cheapest method (measured peak) whose metric cannot be told from the best one's (their 95 %
    intervals overlap), in one sentence; None without a metric."""
    scored = [r for r in rows if r.get("value") is not None and r.get("memory_bytes") is not None]
    if not scored:
        return None
    lower_better = scored[0]["metric"] == "perplexity"
    best = min(scored, key=lambda r: r["value"]) if lower_better else max(scored, key=lambda r: r["value"])
    label = METRIC_LABELS.get(best["metric"], best["metric"])

    def interval(row: dict[str, Any]) -> tuple[float, float] | None:
        return tuple(row["ci95"]) if row.get("ci95") else None

    peers = [r for r in scored if r is best or not distinguishable(interval(r), interval(best))]
    cheapest = min(peers, key=lambda r: r["memory_bytes"])
    best_words = f"{best['method']} ({format_metric(best['metric'], best['value'])})"
    if cheapest is best:
        return f"Cheapest method whose {label.lower()} cannot be told from the best: {best_words} itself."
    return (
        f"{cheapest['method']} is the cheapest method whose {label.lower()} cannot be told from the best, "
        f"{best_words}: {format_bytes(cheapest['memory_bytes'])} against {format_bytes(best['memory_bytes'])}, "
        f"{format_metric(cheapest['metric'], cheapest['value'])} (95 % intervals overlap)."
    )


#: The settings of the config-diff table: (key of MethodSettingsRow, column).
SETTING_COLUMNS = [
    ("techniques", "Techniques"),
    ("rank", "Rank"),
    ("alpha", "Alpha"),
    ("targets", "Targets"),
    ("groups", "Groups"),
    ("velora_targets", "VeLoRA targets"),
    ("lr", "Learning rate"),
]


def _setting(value: Any) -> str:
    if value is None or value == []:
        return "–"
    if isinstance(value, list):
        return ", ".join(str(v) for v in value)
    return f"{value:g}" if isinstance(value, float) else str(value)


def config_diff(rows: Sequence[dict[str, Any]]) -> list[dict[str, str]]:
    """What differs between the methods (as W&B's config diff): one line per method, a column per
    setting whose value is not the same for every method; empty when nothing differs."""
    cells = [
        {column: _setting((row.get("settings") or {}).get(key)) for key, column in SETTING_COLUMNS}
        for row in rows
    ]
    differing = [column for _, column in SETTING_COLUMNS if len({c[column] for c in cells}) > 1]
    if not differing:
        return []
    return [
        {"Method": row["method"], **{c: cell[c] for c in differing}}
        for row, cell in zip(rows, cells, strict=True)
    ]
