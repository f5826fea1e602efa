"""The Compare figures from per-method rows: components stacked, the CUDA peak marked beside the
predicted total, the Pareto front, chance level, the GPU budget line."""

from __future__ import annotations

import pytest

from dashboard.charts import loss_figure, memory_figure, pareto_figure
from tests.dashboard.test_summary import method_rows, run_record

MIB = 1024**2


def record(
    run_id: int,
    method: str,
    activations: int,
    value: float,
    *,
    peak: int | None,
    metric: str,
    ci95: tuple[float, float] | None = None,
) -> dict:
    memory = {
        "weight_bytes": 4 * MIB,
        "trainable_bytes": MIB,
        "gradient_bytes": MIB,
        "optimizer_bytes": 2 * MIB,
        "activation_bytes": activations,
        "peak_bytes": peak,
    }
    result = {
        "memory": memory,
        "eval": {
            "metric": metric,
            "value": value,
            "chance": 0.25 if metric == "mc_accuracy" else None,
            "ci95": ci95,
        },
    }
    run = {"id": run_id, "method": method, "seed": 0, "status": "completed", "error": None}
    return run_record(run, {"result": result})


def test_memory_bars_stack_the_trackers_categories_at_the_peak_so_a_bar_is_the_measured_peak() -> None:
    full = record(1, "full", 8 * MIB, 0.5, peak=None, metric="mc_accuracy")
    velora = record(2, "velora+full", 2 * MIB, 0.5, peak=None, metric="mc_accuracy")
    for rec, peak, temporary in ((full, 20 * MIB, 6 * MIB), (velora, 12 * MIB, 3 * MIB)):
        rec.memory.measured_peak_bytes = peak
        rec.memory.peak_phase = "backward"
        rec.memory.peak_components = {
            "weights": 4 * MIB,
            "activations": peak - 4 * MIB - temporary,
            "temporary": temporary,
        }
    velora.memory.predicted_activation_bytes, velora.memory.velora_measured_bytes = MIB, MIB + 5
    figure = memory_figure(method_rows([full, velora], ["full", "velora+full"])).to_dict()
    bars = [trace for trace in figure["data"] if trace["type"] == "bar"]
    assert [b["name"] for b in bars] == [
        "Frozen weights",
        "Trainable parameters",
        "Gradients",
        "Optimizer state",
        "Saved activations",
        "Temporaries",
    ]
    heights = [sum(b["y"][i] for b in bars) for i in range(2)]
    assert heights == [pytest.approx(20.0), pytest.approx(12.0)]  # the bar is the measured peak
    assert list(bars[-1]["y"]) == [6.0, 3.0]  # temporaries are drawn
    hover = bars[0]["customdata"]
    assert hover[0].startswith("measured peak 20.00 MiB (backward)<br>analytic sum 16.00 MiB")
    assert "VeLoRA predicted 1.00 MiB, measured 1.00 MiB" in hover[1]
    assert not [t for t in figure["data"] if t.get("mode") == "text"]  # nothing written on the plot


def test_memory_bars_of_an_older_result_are_its_analytic_components_and_the_budget_is_drawn() -> None:
    rows = method_rows([record(1, "full", 8 * MIB, 0.5, peak=None, metric="mc_accuracy")], ["full"])
    figure = memory_figure(rows, gpu_budget_bytes=24 * 1024**3).to_dict()
    bars = [trace for trace in figure["data"] if trace["type"] == "bar"]
    assert sum(b["y"][0] for b in bars) == pytest.approx(16 / 1024)  # GiB
    assert bars[0]["customdata"][0].startswith("no tracker breakdown")
    assert figure["layout"]["yaxis"]["title"]["text"] == "GiB"
    assert [shape["y0"] for shape in figure["layout"]["shapes"]] == [24.0]


def test_pareto_figure_draws_the_front_and_chance_for_accuracy() -> None:
    rows = method_rows(
        [
            record(1, "full", 8 * MIB, 0.50, peak=None, metric="mc_accuracy", ci95=(0.47, 0.53)),
            record(2, "lora", 6 * MIB, 0.40, peak=None, metric="mc_accuracy", ci95=(0.36, 0.44)),
            record(3, "qlora", 7 * MIB, 0.30, peak=None, metric="mc_accuracy", ci95=(0.26, 0.34)),
            record(4, "velora+full", 7.5 * MIB, 0.42, peak=None, metric="mc_accuracy", ci95=(0.38, 0.46)),
        ],
        ["full", "lora", "qlora", "velora+full"],
    )
    figure = pareto_figure(rows).to_dict()
    front = next(trace for trace in figure["data"] if trace["name"] == "Pareto front")
    assert list(front["y"]) == [40.0, 50.0]  # lora then full; qlora is beaten by lora on both
    traces = {trace["name"]: trace for trace in figure["data"]}
    assert list(traces["full"]["error_y"]["array"]) == [pytest.approx(3.0)]
    assert list(traces["full"]["error_y"]["arrayminus"]) == [pytest.approx(3.0)]
    # velora+full is dearer than lora with an overlapping interval: said, not ranked.
    assert list(traces["velora+full"]["text"]) == [
        "velora+full<br>not distinguishable from lora<br>95 % interval 38.00–46.00"
    ]
    assert all(trace.get("mode") != "markers+text" for trace in figure["data"])  # words in the hover only
    assert (
        front["mode"] == "lines+markers" and front["line"]["color"] != traces["Chance level"]["line"]["color"]
    )
    assert (
        list(traces["Chance level"]["y"]) == [25.0, 25.0] and traces["Chance level"]["line"]["dash"] == "dash"
    )
    assert "higher is better" in figure["layout"]["yaxis"]["title"]["text"]


def test_pareto_figure_for_perplexity_prefers_lower() -> None:
    rows = method_rows(
        [
            record(1, "full", 8 * MIB, 9.0, peak=None, metric="perplexity", ci95=(8.8, 9.2)),
            record(2, "lora", 6 * MIB, 12.0, peak=None, metric="perplexity", ci95=(11.7, 12.3)),
        ],
        ["full", "lora"],
    )
    figure = pareto_figure(rows).to_dict()
    front = next(trace for trace in figure["data"] if trace["name"] == "Pareto front")
    assert list(front["y"]) == [12.0, 9.0]
    assert "lower is better" in figure["layout"]["yaxis"]["title"]["text"]
    assert "Chance level" not in [trace["name"] for trace in figure["data"]]  # none for perplexity


def test_loss_figure_overlays_runs_by_method_and_seed() -> None:
    curves = [
        {"method": "full", "seed": 0, "points": [{"step": 1, "loss": 3.0}, {"step": 2, "loss": 2.0}]},
        {"method": "full", "seed": 1, "points": [{"step": 1, "loss": 3.1}]},
        {"method": "lora", "seed": 0, "points": []},
    ]
    names = [trace["name"] for trace in loss_figure(curves).to_dict()["data"]]
    assert names == ["full (seed 0)", "full (seed 1)"]


def test_timeline_figure_stacks_the_categories_and_names_the_phases() -> None:
    from dashboard.charts import timeline_figure
    from velora_core.contract.result import PEAK_COMPONENTS

    zero = dict.fromkeys(PEAK_COMPONENTS, 0)
    timeline = [
        {**zero, "event": 0, "phase": "forward", "weights": 4 * MIB},
        {**zero, "event": 10, "phase": "forward", "weights": 4 * MIB, "activations": 2 * MIB},
        {**zero, "event": 20, "phase": "backward", "weights": 4 * MIB, "gradients": MIB},
        {**zero, "event": 30, "phase": "optimizer", "weights": 4 * MIB, "optimizer": 2 * MIB},
    ]
    fig = timeline_figure(timeline)
    assert [t.name for t in fig.data][:2] == ["Frozen weights", "Trainable parameters"]
    activations = next(t for t in fig.data if t.name == "Saved activations")
    assert list(activations.y) == [0, 2, 0, 0]
    assert [a.text for a in fig.layout.annotations] == ["forward", "backward", "optimizer"]
    assert [s.x0 for s in fig.layout.shapes] == [0, 20, 30]


def test_fit_figure_stacks_each_methods_peak_against_the_card() -> None:
    from dashboard.charts import fit_figure
    from dashboard.run_tables import fit_rows

    gib = 1024**3
    estimates = [
        {
            "method": "lora",
            "peak_bytes": 30 * gib,
            "peak_phase": "backward",
            "weights": 14 * gib,
            "trainable": 0,
            "gradients": 0,
            "optimizer": 0,
            "activations": 15 * gib,
            "autocast_copies": 0,
            "temporary": gib,
            "gpu_bytes": 24 * gib,
            "fits": False,
            "max_micro_batch": 4,
            "reserved_bytes": 31 * gib,
            "context_bytes": gib // 2,
        },
    ]
    fig = fit_figure(estimates, 24 * gib)
    assert sum(t.y[0] for t in fig.data) == 30
    assert "Autocast weight copies" not in [t.name for t in fig.data]  # no autocast: no empty entry
    assert fig.layout.shapes[0].y0 == 24
    under_autocast = [{**estimates[0], "activations": 13 * gib, "autocast_copies": 2 * gib}]
    bars = {t.name: t.y[0] for t in fit_figure(under_autocast, 24 * gib).data}
    assert bars["Autocast weight copies"] == 2 and sum(bars.values()) == 30
    assert fit_rows(estimates)[0] == {
        "Method": "lora",
        "Allocated": "30.00 GiB",
        "Peak during": "backward",
        "Reserved": "31.00 GiB",
        "Card needs": "31.50 GiB",
        "Activations": "15.00 GiB",
        "Temporaries": "1.00 GiB",
        "Fits": "no",
        "Largest micro-batch": "4",
    }
