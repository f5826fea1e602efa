"""The Compare page's figures (plotly), built from :mod:`dashboard.summary` rows. Pure functions."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import plotly.graph_objects as go

from dashboard.formatting import COMPONENTS, GIB, METRIC_LABELS, MIB, format_bytes
from dashboard.summary import front_places, higher_is_better
from velora_core.contract.result import PEAK_COMPONENTS
from velora_core.contract.workload_registry import PERCENT_METRICS

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


#: The analytic components (``COMPONENTS``) under the tracker's category each one is counted in: how
#: a result without the tracker's peak (an older one) is drawn, its bar then being the analytic sum.
_ANALYTIC_CATEGORY = dict(
    zip(
        (key for key, _ in COMPONENTS),
        ("weights", "trainable", "gradients", "optimizer", "activations"),
        strict=True,
    )
)


def peak_stack(row: dict[str, Any]) -> tuple[dict[str, float], bool]:
    """A method's bar: bytes by the tracker's categories at its measured peak (they add up to the
    peak) and True; or, for a result without the tracker's breakdown, the analytic components and
    False."""
    components = row.get("peak_components") or {}
    if components and row.get("measured_peak_bytes") is not None:
        return {c: float(components.get(c) or 0) for c in PEAK_COMPONENTS}, True
    analytic = {c: 0.0 for c in PEAK_COMPONENTS}
    for key, category in _ANALYTIC_CATEGORY.items():
        analytic[category] += float(row.get(key) or 0)
    return analytic, False


def memory_figure(rows: Sequence[dict[str, Any]], *, gpu_budget_bytes: float | None = None) -> go.Figure:
    """Bars of each method's memory, stacked from the memory tracker's categories *at its measured
    peak* (temporaries included), so a bar's height is the measured peak. The analytic sum of the
    components and VeLoRA's predicted bytes are in the hover, not written on the plot. A result
    without the tracker's breakdown is drawn from its analytic components and says so in the hover."""
    shown = [r for r in rows if r.get("memory_bytes") is not None]
    methods = [r["method"] for r in shown]
    stacks = [peak_stack(r) for r in shown]
    tallest = max([sum(stack.values()) for stack, _ in stacks] + [gpu_budget_bytes or 0], default=0)
    scale, unit = _unit(tallest)

    def about(row: dict[str, Any], measured: bool) -> str:
        lines = [
            f"measured peak {format_bytes(row['measured_peak_bytes'])}"
            + (f" ({row['peak_phase']})" if row.get("peak_phase") else "")
            if measured
            else "no tracker breakdown: analytic components",
            f"analytic sum {format_bytes(row.get('total_bytes'))}",
        ]
        if row.get("predicted_activation_bytes"):
            lines.append(
                f"VeLoRA predicted {format_bytes(row['predicted_activation_bytes'])}, "
                f"measured {format_bytes(row.get('velora_measured_bytes'))}"
            )
        return "<br>".join(lines)

    notes = [about(r, measured) for r, (_, measured) in zip(shown, stacks, strict=True)]
    fig = go.Figure()
    for category, (label, color) in PEAK_COMPONENT_STYLE.items():
        if category == "autocast_copies" and not any(stack[category] for stack, _ in stacks):
            continue  # only runs under autocast have them: no empty legend entry for the others
        fig.add_bar(
            name=label,
            x=methods,
            y=[stack[category] / scale for stack, _ in stacks],
            customdata=notes,
            marker_color=color,
            hovertemplate=f"%{{x}}<br>{label}: %{{y:.2f}} {unit}<br>%{{customdata}}<extra></extra>",
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
    fig.update_yaxes(range=[0, tallest / scale * 1.1 if tallest else 1])
    return _layout(fig, "Peak memory of a training step, by what was live at the peak")


def pareto_figure(rows: Sequence[dict[str, Any]]) -> go.Figure:
    """The evaluation metric against memory, one point per method with its 95 % interval as error
    bars, the Pareto front (never ranking a method ahead of one whose interval overlaps it: such a
    point is labelled "not distinguishable from …") and chance level."""
    shown = [r for r in rows if r["value"] is not None and r["memory_bytes"] is not None]
    metric = next((r["metric"] for r in shown), None)
    label = METRIC_LABELS.get(metric or "", metric or "metric")
    percent = metric in PERCENT_METRICS
    factor = 100.0 if percent else 1.0
    scale, unit = _unit(max([r["memory_bytes"] for r in shown], default=0))
    places = front_places(shown)
    fig = go.Figure()
    for i, (r, place) in enumerate(zip(shown, places, strict=True)):
        ci = r["ci95"]
        words = r["method"] + (" (on the Pareto front)" if place.on_front else "")
        if place.not_distinguishable_from:
            words += "<br>not distinguishable from " + ", ".join(
                shown[k]["method"] for k in place.not_distinguishable_from
            )
        if ci is not None:
            words += f"<br>95 % interval {ci[0] * factor:.2f}–{ci[1] * factor:.2f}"
        fig.add_scatter(
            name=r["method"],
            x=[r["memory_bytes"] / scale],
            y=[r["value"] * factor],
            error_y={
                "type": "data",
                "symmetric": False,
                "array": [(ci[1] - r["value"]) * factor],
                "arrayminus": [(r["value"] - ci[0]) * factor],
                "visible": True,
            }
            if ci is not None
            else None,
            mode="markers",
            text=[words],
            marker={"size": 14, "color": method_color(r["method"], i)},
            hovertemplate=f"%{{text}}<br>{unit}: %{{x:.2f}}<br>{label}: %{{y:.2f}}<extra></extra>",
        )
    if shown:
        front = sorted(
            (r for r, p in zip(shown, places, strict=True) if p.on_front), key=lambda r: r["memory_bytes"]
        )
        fig.add_scatter(
            name="Pareto front",
            x=[r["memory_bytes"] / scale for r in front],
            y=[r["value"] * factor for r in front],
            mode="lines+markers",  # one point on the front is still drawn
            line={"color": "#222", "width": 2, "shape": "hv" if higher_is_better(metric) else "vh"},
            marker={"symbol": "circle-open", "size": 22, "color": "#222"},
            hoverinfo="skip",
        )
        chance = next((r["chance"] for r in shown if r["chance"] is not None), None)
        if chance is not None:
            xs = [r["memory_bytes"] / scale for r in shown]
            fig.add_scatter(
                name="Chance level",
                x=[min(xs), max(xs)],
                y=[chance * factor] * 2,
                mode="lines",
                line={"color": "#b07aa1", "dash": "dash", "width": 1},
                hovertemplate=f"chance level: {chance * factor:.1f}<extra></extra>",
            )
    direction = "higher is better" if higher_is_better(metric) else "lower is better"
    fig.update_layout(
        xaxis_title=f"Memory ({unit})", yaxis_title=f"{label}{' (%)' if percent else ''} — {direction}"
    )
    return _layout(fig, f"{label} against memory (bars: 95 % intervals)")


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


#: The tracker's categories (``PEAK_COMPONENTS``), bottom to top, with their words and colours.
PEAK_COMPONENT_STYLE = dict(
    zip(
        PEAK_COMPONENTS,
        [
            ("Frozen weights", "#9ecae9"),
            ("Trainable parameters", "#4c78a8"),
            ("Gradients", "#f58518"),
            ("Optimizer state", "#ffbf79"),
            ("Saved activations", "#54a24b"),
            ("Autocast weight copies", "#b279a2"),
            ("Temporaries", "#bab0ac"),
        ],
        strict=True,
    )
)


def timeline_figure(timeline: Sequence[dict[str, Any]]) -> go.Figure:
    """A run's tracked training step (steady; the first in older results), live bytes by category over its allocations (stacked areas), with
    the forward, backward and optimizer phases shaded and named."""
    events = [p["event"] for p in timeline]
    tallest = max((sum(p.get(c, 0) for c in PEAK_COMPONENTS) for p in timeline), default=0)
    scale, unit = _unit(tallest)
    fig = go.Figure()
    for category, (label, color) in PEAK_COMPONENT_STYLE.items():
        fig.add_scatter(
            name=label,
            x=events,
            y=[p.get(category, 0) / scale for p in timeline],
            mode="lines",
            stackgroup="memory",
            line={"width": 0.5, "color": color},
            hovertemplate=f"allocation %{{x}}<br>{label}: %{{y:.2f}} {unit}<extra></extra>",
        )
    start = 0
    for index, point in enumerate(timeline):
        last = index == len(timeline) - 1
        if last or timeline[index + 1]["phase"] != point["phase"]:
            fig.add_vrect(
                x0=timeline[start]["event"],
                x1=point["event"] if last else timeline[index + 1]["event"],
                fillcolor="#888" if point["phase"] == "backward" else "#fff",
                opacity=0.08,
                line_width=0,
                annotation_text=point["phase"],
                annotation_position="top left",
            )
            start = index + 1
    fig.update_layout(yaxis_title=unit, xaxis_title="allocations and frees in the step")
    return _layout(fig, "Memory over the tracked training step, by category")


def fit_figure(estimates: Sequence[dict[str, Any]], gpu_bytes: float | None = None) -> go.Figure:
    """ "Will it fit?": each method's predicted peak as stacked bars by category, against the card."""
    methods = [e["method"] for e in estimates]
    tallest = max([e["peak_bytes"] for e in estimates] + [gpu_bytes or 0], default=0)
    scale, unit = _unit(tallest)
    fig = go.Figure()
    for category, (label, color) in PEAK_COMPONENT_STYLE.items():
        if category == "autocast_copies" and not any(e.get(category) for e in estimates):
            continue  # only runs under autocast have them: no empty legend entry for the others
        fig.add_bar(
            name=label,
            x=methods,
            y=[e[category] / scale for e in estimates],
            marker_color=color,
            hovertemplate=f"%{{x}}<br>{label}: %{{y:.2f}} {unit}<extra></extra>",
        )
    if gpu_bytes:
        fig.add_hline(
            y=gpu_bytes / scale,
            line_dash="dash",
            line_color="#d62728",
            annotation_text=f"card: {gpu_bytes / GIB:g} GiB",
            annotation_position="top left",
        )
    fig.update_layout(barmode="stack", yaxis_title=unit, xaxis_title=None)
    fig.update_yaxes(range=[0, tallest / scale * 1.15 if tallest else 1])
    return _layout(fig, "Predicted peak memory of a steady training step, by category")
