"""The Compare figures from per-method rows: components stacked, the CUDA peak marked beside the
predicted total, the Pareto front, chance level, the GPU budget line."""

from __future__ import annotations

import pytest

from dashboard.charts import loss_figure, memory_figure, pareto_figure
from dashboard.summary import method_rows, run_record

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


def test_memory_figure_marks_the_measured_peak_beside_the_predicted_total() -> None:
    rows = method_rows(
        [
            record(1, "full", 8 * MIB, 0.5, peak=20 * MIB, metric="mc_accuracy"),
            record(2, "velora+full", 2 * MIB, 0.5, peak=12 * MIB, metric="mc_accuracy"),
        ],
        ["full", "velora+full"],
    )
    figure = memory_figure(rows, gpu_budget_bytes=None).to_dict()
    traces = {trace["name"]: trace for trace in figure["data"]}
    assert list(traces["Activations"]["y"]) == [8.0, 2.0]
    assert list(traces["Measured peak"]["y"]) == [20.0, 12.0]
    assert list(traces["Predicted total"]["text"]) == [
        "predicted 16.0<br>measured 20.0",
        "predicted 10.0<br>measured 12.0",
    ]
    assert figure["layout"]["yaxis"]["title"]["text"] == "MiB"


def test_memory_figure_without_peaks_has_no_peak_marker_and_draws_the_gpu_budget() -> None:
    rows = method_rows([record(1, "full", 8 * MIB, 0.5, peak=None, metric="mc_accuracy")], ["full"])
    figure = memory_figure(rows, gpu_budget_bytes=24 * 1024**3).to_dict()
    assert "Measured peak" not in [trace["name"] for trace in figure["data"]]
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
    assert list(traces["velora+full"]["text"]) == ["velora+full<br>not distinguishable from lora"]
    assert [shape["y0"] for shape in figure["layout"]["shapes"]] == [25.0]
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
    assert not figure["layout"].get("shapes")  # no chance level for perplexity


def test_loss_figure_overlays_runs_by_method_and_seed() -> None:
    curves = [
        {"method": "full", "seed": 0, "points": [{"step": 1, "loss": 3.0}, {"step": 2, "loss": 2.0}]},
        {"method": "full", "seed": 1, "points": [{"step": 1, "loss": 3.1}]},
        {"method": "lora", "seed": 0, "points": []},
    ]
    names = [trace["name"] for trace in loss_figure(curves).to_dict()["data"]]
    assert names == ["full (seed 0)", "full (seed 1)"]


def test_memory_figure_marks_the_trackers_peak_over_an_older_cuda_peak() -> None:
    rec = record(1, "full", 3 * MIB, 0.5, peak=20 * MIB, metric="perplexity")
    rec["measured_peak_bytes"] = 12 * MIB
    fig = memory_figure(method_rows([rec], ["full"]))
    marker = next(t for t in fig.data if t.name == "Measured peak")
    assert list(marker.y) == [12.0]


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
    assert fig.layout.shapes[0].y0 == 24
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
