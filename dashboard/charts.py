"""The Compare page's figures (plotly), built from :mod:`dashboard.summary` rows. Pure functions."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import plotly.graph_objects as go

from dashboard.summary import COMPONENTS, GIB, METRIC_LABELS, MIB, higher_is_better, pareto_front

#: One colour per method, the same in every chart.
METHOD_COLORS = {
    "full": "#4c78a8",
    "lora": "#f58518",
    "qlora": "#e45756",
    "velora+full": "#72b7b2",
    "velora+lora": "#54a24b",
    "velora+qlora": "#b279a2",
    "full+gc": "#9ecae9",
    "lora+gc": "#ffbf79",
    "galore": "#eeca3b",
    "lora-fa": "#9d755d",
}
COMPONENT_COLORS = ["#9ecae9", "#4c78a8", "#f58518", "#ffbf79", "#54a24b"]
_FALLBACK_COLORS = ["#ff9da6", "#bab0ac", "#d67195", "#439894", "#88d27a", "#fcbfd2"]


def method_color(method: str, index: int = 0) -> str:
    return METHOD_COLORS.get(method, _FALLBACK_COLORS[index % len(_FALLBACK_COLORS)])


def _unit(max_bytes: float) -> tuple[float, str]:
    return (GIB, "GiB") if max_bytes >= 4 * GIB else (MIB, "MiB")


def _layout(fig: go.Figure, title: str, height: int = 420) -> go.Figure:
    fig.update_layout(
        title={"text": title, "x": 0, "xanchor": "left"},
        height=height,
        margin={"l": 10, "r": 10, "t": 50, "b": 10},
        legend={"orientation": "h", "yanchor": "top", "y": -0.22, "xanchor": "left", "x": 0},
    )
    return fig


def memory_figure(rows: Sequence[dict[str, Any]], *, gpu_budget_bytes: float | None = None) -> go.Figure:
    """Stacked bars of memory by component per method. Where a peak was measured (CUDA) it is marked
    on the bar; beside each bar its predicted (analytic) total is written, with the measured peak."""
    shown = [r for r in rows if r["total_bytes"] is not None]
    methods = [r["method"] for r in shown]
    tallest = max(
        [r["total_bytes"] for r in shown] + [r["peak_bytes"] or 0 for r in shown] + [gpu_budget_bytes or 0]
    )
    scale, unit = _unit(tallest)
    fig = go.Figure()
    for (key, label), color in zip(COMPONENTS, COMPONENT_COLORS, strict=True):
        fig.add_bar(
            name=label,
            x=methods,
            y=[(r[key] or 0) / scale for r in shown],
            marker_color=color,
            hovertemplate=f"%{{x}}<br>{label}: %{{y:.2f}} {unit}<extra></extra>",
        )
    peaks = [r for r in shown if r["peak_bytes"] is not None]
    if peaks:
        fig.add_scatter(
            name="Measured peak",
            x=[r["method"] for r in peaks],
            y=[r["peak_bytes"] / scale for r in peaks],
            mode="markers",
            marker={"symbol": "line-ew-open", "size": 40, "line": {"width": 3, "color": "#222"}},
            hovertemplate=f"%{{x}}<br>measured peak: %{{y:.2f}} {unit}<extra></extra>",
        )
    labels = []
    for r in shown:
        text = f"predicted {r['total_bytes'] / scale:.1f}"
        if r["peak_bytes"] is not None:
            text += f"<br>measured {r['peak_bytes'] / scale:.1f}"
        labels.append(text)
    fig.add_scatter(
        name="Predicted total",
        x=methods,
        y=[max(r["total_bytes"], r["peak_bytes"] or 0) / scale for r in shown],
        mode="text",
        text=labels,
        textposition="top center",
        showlegend=False,
        hoverinfo="skip",
    )
    if gpu_budget_bytes:
        fig.add_hline(
            y=gpu_budget_bytes / scale,
            line_dash="dash",
            line_color="#d62728",
            annotation_text=f"GPU memory {gpu_budget_bytes / GIB:g} GiB",
            annotation_position="top left",
        )
    fig.update_layout(barmode="stack", yaxis_title=unit, xaxis_title=None)
    fig.update_yaxes(range=[0, tallest / scale * 1.25])
    return _layout(fig, "Memory per training step, by component")


def pareto_figure(rows: Sequence[dict[str, Any]]) -> go.Figure:
    """The evaluation metric against memory, one point per method (error bars: spread over seeds),
    with the Pareto front and chance level drawn."""
    shown = [r for r in rows if r["value"] is not None and r["memory_bytes"] is not None]
    metric = next((r["metric"] for r in shown), None)
    label = METRIC_LABELS.get(metric or "", metric or "metric")
    percent = metric == "mc_accuracy"
    factor = 100.0 if percent else 1.0
    scale, unit = _unit(max([r["memory_bytes"] for r in shown], default=0))
    fig = go.Figure()
    for i, r in enumerate(shown):
        spread = r["value_spread"]
        fig.add_scatter(
            name=r["method"],
            x=[r["memory_bytes"] / scale],
            y=[r["value"] * factor],
            error_y={"type": "data", "array": [spread * factor], "visible": True}
            if spread is not None
            else None,
            mode="markers+text",
            text=[r["method"]],
            textposition="top center",
            marker={"size": 14, "color": method_color(r["method"], i)},
            hovertemplate=f"%{{text}}<br>{unit}: %{{x:.2f}}<br>{label}: %{{y:.2f}}<extra></extra>",
        )
    if shown:
        points = [(r["memory_bytes"], r["value"]) for r in shown]
        front = [shown[i] for i in pareto_front(points, higher_better=higher_is_better(metric))]
        fig.add_scatter(
            name="Pareto front",
            x=[r["memory_bytes"] / scale for r in front],
            y=[r["value"] * factor for r in front],
            mode="lines",
            line={"dash": "dot", "color": "#555", "shape": "hv" if higher_is_better(metric) else "vh"},
            hoverinfo="skip",
        )
        chance = next((r["chance"] for r in shown if r["chance"] is not None), None)
        if chance is not None:
            fig.add_hline(
                y=chance * factor,
                line_dash="dash",
                line_color="#999",
                annotation_text="chance",
                annotation_position="bottom right",
            )
    direction = "higher is better" if higher_is_better(metric) else "lower is better"
    fig.update_layout(
        xaxis_title=f"Memory ({unit})", yaxis_title=f"{label}{' (%)' if percent else ''} — {direction}"
    )
    return _layout(fig, f"{label} against memory")


def loss_figure(curves: Sequence[dict[str, Any]]) -> go.Figure:
    """Training loss of every run, overlaid: colour by method, dash by seed.

    Args:
        curves: ``{"method", "seed", "points": [{"step", "loss"}, ...]}`` per run.
    """
    fig = go.Figure()
    seeds = sorted({c["seed"] for c in curves})
    dashes = ["solid", "dash", "dot", "dashdot", "longdash"]
    methods = list(dict.fromkeys(c["method"] for c in curves))
    for curve in curves:
        points = [p for p in curve["points"] if p.get("loss") is not None]
        if not points:
            continue
        seed_label = f" (seed {curve['seed']})" if len(seeds) > 1 else ""
        fig.add_scatter(
            name=f"{curve['method']}{seed_label}",
            legendgroup=curve["method"],
            x=[p["step"] for p in points],
            y=[p["loss"] for p in points],
            mode="lines+markers" if len(points) < 30 else "lines",
            line={
                "color": method_color(curve["method"], methods.index(curve["method"])),
                "dash": dashes[seeds.index(curve["seed"]) % len(dashes)],
            },
        )
    fig.update_layout(xaxis_title="Step", yaxis_title="Training loss")
    return _layout(fig, "Loss curves", height=380)
