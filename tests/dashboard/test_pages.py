"""Every dashboard page under Streamlit's AppTest, against the live API with real runs (no mocks)."""

from __future__ import annotations

import json
import statistics
from collections.abc import Callable
from typing import Any

import pytest
import streamlit as st
from streamlit.testing.v1 import AppTest

from tests.backend.harness import free_port, wait_until
from tests.dashboard.conftest import APP, LiveService

MIB = 1024**2
COMPONENT_LABELS = ["Frozen weights", "Trainable weights", "Gradients", "Optimizer state", "Activations"]

OpenPage = Callable[..., AppTest]


def plotly_specs(at: AppTest) -> list[dict[str, Any]]:
    return [json.loads(chart.proto.spec) for chart in at.get("plotly_chart")]


def texts(elements: Any) -> list[str]:
    return [str(e.value) for e in elements]


# --- Launch ---------------------------------------------------------------------------------------


def test_launch_offers_the_presets_and_methods_of_the_api(
    open_page: OpenPage, live_service: LiveService
) -> None:
    presets = live_service.get("/presets")
    at = open_page()
    assert at.title[0].value == "Launch a comparison"
    assert at.selectbox(key="preset.name").options == [
        f"{name} — {text[:70]}" for name, text in presets["comparisons"].items()
    ]
    assert at.selectbox(key="preset.name").value == "cpu-smoke"
    assert at.multiselect(key="preset.cpu-smoke.methods").options == list(presets["methods"])
    assert at.number_input(key="preset.cpu-smoke.steps").max == presets["limits"]["max_steps"]


def test_launch_a_preset_with_overrides_opens_compare_and_cancel_all_stops_it(
    open_page: OpenPage, live_service: LiveService, smoke_comparison: dict[str, Any]
) -> None:
    at = open_page()
    at.multiselect(key="preset.cpu-smoke.methods").set_value(["full", "lora"])
    at.number_input(key="preset.cpu-smoke.steps").set_value(500)
    at.number_input(key="preset.cpu-smoke.pretrain_steps").set_value(3)
    at.text_input(key="preset.cpu-smoke.seeds").set_value("0, 7")
    at.button(key="launch.submit").click().run()
    assert not at.exception and not at.error, texts(at.error)

    assert at.title[0].value == "Compare"
    comparison_id = int(at.query_params["comparison"])
    assert comparison_id != smoke_comparison["id"]
    created = live_service.get(f"/comparisons/{comparison_id}")
    assert created["preset"] == "cpu-smoke"
    assert created["spec"]["methods"] == ["full", "lora"]
    assert created["spec"]["seeds"] == [0, 7]
    assert created["spec"]["base"]["steps"] == 500
    assert created["spec"]["base"]["model"]["pretrain"]["steps"] == 3

    # Compare shows it in progress, with a button that cancels every run.
    assert any("runs finished" in (p.proto.text or "") for p in at.get("progress"))
    at.button(key="compare.cancel").click().run()
    detail = live_service.wait_comparison(comparison_id, timeout=60)
    assert {run["status"] for run in detail["runs"]} == {"cancelled"}


def test_launch_shows_the_api_validation_error_in_words(
    open_page: OpenPage, live_service: LiveService
) -> None:
    before = live_service.get("/comparisons", limit=1)["count"]
    at = open_page()
    at.radio(key="launch.mode").set_value("spec").run()
    at.selectbox(key="spec.workload").set_value("pretrain").run()
    at.selectbox(key="spec.model").set_value("tiny").run()
    at.multiselect(key="spec.methods").set_value(["velora+full"]).run()
    at.number_input(key="spec.cfg.velora+full.velora.num_groups").set_value(1000).run()
    at.button(key="launch.submit").click().run()

    assert at.title[0].value == "Launch a comparison"  # stayed
    assert texts(at.error) == [
        "The API rejected the request: method 'velora+full': VeLoRA target 'model.layers.0.self_attn.v_proj': num_groups=1000 exceeds the layer's 128 input features"
    ]
    assert live_service.get("/comparisons", limit=1)["count"] == before


def test_launch_composes_a_method_from_a_base_and_techniques(open_page: OpenPage) -> None:
    at = open_page()
    at.radio(key="launch.mode").set_value("spec").run()
    at.selectbox(key="spec.methods.base").set_value("lora").run()
    at.multiselect(key="spec.methods.techniques").set_value(["gc", "velora"]).run()
    at.button(key="spec.methods.add").click().run()
    assert not at.exception and not at.error, texts(at.error)
    picker = at.multiselect(key="spec.methods")
    assert "velora+lora+gc" in picker.options and "velora+lora+gc" in picker.value  # canonical spelling
    # Its settings are the sections of its parts, with velora's LoRA default scale.
    assert at.number_input(key="spec.cfg.velora+lora+gc.velora.scale").value == pytest.approx(0.1)
    assert at.number_input(key="spec.cfg.velora+lora+gc.lora.r").value == 8

    at.selectbox(key="spec.methods.base").set_value("lora-fa").run()
    at.button(key="spec.methods.add").click().run()
    assert "LoRA-FA freezes lora_A, whose input is what VeLoRA compresses" in texts(at.error)[0]
    assert "velora+lora-fa+gc" not in at.multiselect(key="spec.methods").options


def test_will_it_fit_runs_memory_only_and_compare_checks_the_gpu_size(
    open_page: OpenPage, live_service: LiveService, smoke_comparison: dict[str, Any]
) -> None:
    at = open_page()
    at.radio(key="launch.mode").set_value("fit").run()
    at.selectbox(key="fit.model").set_value("tiny")
    at.selectbox(key="fit.gpu_gib").set_value(8)
    at.selectbox(key="fit.device").set_value("cpu")
    at.number_input(key="fit.seq_len").set_value(64)
    at.multiselect(key="fit.methods").set_value(["full", "velora+lora"])
    at.button(key="launch.submit").click().run()
    assert not at.error, texts(at.error)
    assert at.title[0].value == "Compare"
    assert at.query_params["gpu_gib"] == "8"
    comparison_id = int(at.query_params["comparison"])
    spec = live_service.get(f"/comparisons/{comparison_id}")["spec"]
    assert spec["base"]["model"] == {**spec["base"]["model"], "name": "tiny", "memory_only": True}
    assert spec["base"]["eval"]["metric"] == "none"

    detail = live_service.wait_comparison(comparison_id, timeout=120)
    assert detail["status_counts"] == {"completed": 2}, detail["runs"]
    at = open_page("views/compare.py", comparison=comparison_id, gpu_gib=8)
    table = at.table[0].value
    assert list(table["Method"]) == ["full", "velora+lora"]
    assert list(table["Fits 8 GiB"]) == ["yes", "yes"]
    memory_chart = plotly_specs(at)[0]
    assert memory_chart["layout"]["yaxis"]["title"]["text"] == "GiB"
    assert [shape["y0"] for shape in memory_chart["layout"]["shapes"]] == [8.0]
    assert "No evaluation metric" in texts(at.info)[0]


# --- Runs -----------------------------------------------------------------------------------------


def test_will_it_fit_page_predicts_each_method_against_the_card(open_page: OpenPage) -> None:
    at = open_page("views/fit.py")
    assert at.title[0].value == "Will it fit?"
    at.selectbox(key="willfit.model").set_value("tiny")
    at.selectbox(key="willfit.gpu").set_value(8)
    at.number_input(key="willfit.seq_len").set_value(16)
    at.number_input(key="willfit.micro_batch").set_value(1)
    at.selectbox(key="willfit.dtype").set_value("fp32")
    at.selectbox(key="willfit.autocast").set_value("bf16")
    at.multiselect(key="willfit.methods").set_value(["lora", "velora+lora"])
    at.number_input(key="willfit.lora_r").set_value(4)
    at.number_input(key="willfit.grad_accum").set_value(2)
    at.button(key="willfit.submit").click().run(timeout=180)
    assert not at.exception and not at.error, texts(at.error)
    assert at.subheader[0].value.endswith("fp32 · autocast bf16")
    (chart,) = plotly_specs(at)
    assert {bar["x"][0] for bar in chart["data"]} == {"lora"} or chart["data"][0]["x"] == [
        "lora",
        "velora+lora",
    ]
    assert chart["layout"]["shapes"][0]["y0"] == 8  # the card's line, in GiB
    table = at.table[0].value
    assert list(table["Method"]) == ["lora", "velora+lora"]
    assert list(table["Fits"]) == ["yes", "yes"]
    assert {"Allocated", "Reserved", "Card needs"} <= set(table)


def test_runs_lists_a_comparison_and_filters_it(
    open_page: OpenPage, smoke_comparison: dict[str, Any]
) -> None:
    runs = smoke_comparison["runs"]
    at = open_page("views/runs.py", comparison=smoke_comparison["id"])
    frame = at.dataframe[0].value
    assert sorted(frame["Run"]) == sorted(run["id"] for run in runs)
    assert set(frame["Status"]) == {"completed"}
    assert set(frame["Progress"]) == {1.0}
    assert at.caption[0].value.startswith(f"{len(runs)} runs match")

    at.selectbox(key="runs.method").set_value("lora").run()
    frame = at.dataframe[0].value
    assert sorted(frame["Run"]) == sorted(run["id"] for run in runs if run["method"] == "lora")

    at.multiselect(key="runs.status").set_value(["failed"]).run()
    assert texts(at.info) == ["No runs match these filters. Launch a comparison to start some."]


def test_runs_cancels_a_running_run(
    open_page: OpenPage, live_service: LiveService, smoke_comparison: dict[str, Any]
) -> None:
    run = live_service.post(
        "/runs",
        {
            "workload": "pretrain",
            "model": {"source": "preset", "name": "tiny"},
            "dataset": {"source": "builtin", "name": "stdlib-corpus"},
            "seq_len": 32,
            "micro_batch": 2,
            "steps": 100_000,
            "device": "cpu",
            "eval": {"metric": "none"},
            "save_artifact": False,
        },
    )
    at = open_page("views/runs.py")
    at.multiselect(key="runs.status").set_value(["queued", "running"]).run()
    assert run["id"] in list(at.dataframe[0].value["Run"])
    progress = [p.proto.text for p in at.get("progress")]
    assert any(text.startswith(f"Run {run['id']} · full · seed 0 · ") for text in progress), progress
    at.button(key=f"runs.cancel.{run['id']}").click().run()
    assert not at.error, texts(at.error)
    path = f"/runs/{run['id']}"
    wait_until(
        lambda: live_service.get(path)["status"] == "cancelled",
        timeout=60,
        message=lambda: f"run not cancelled: {live_service.get(path)['status']}\n{live_service.logs()}",
    )


# --- Compare --------------------------------------------------------------------------------------


def test_compare_shows_every_method_with_the_api_numbers(
    open_page: OpenPage, smoke_comparison: dict[str, Any]
) -> None:
    comparison_id = smoke_comparison["id"]
    methods = smoke_comparison["spec"]["methods"]
    summary = smoke_comparison["summary"]
    at = open_page("views/compare.py", comparison=comparison_id)
    assert not at.error, texts(at.error)
    assert dict(at.query_params) == {"comparison": str(comparison_id)}

    table = at.table[0].value.set_index("Method")
    assert list(table.index) == methods
    # The memory tracker measures a peak on the CPU too: the table ranks by it (mean over seeds).
    full_peak = statistics.fmean(row["measured_peak_bytes"] for row in summary if row["method"] == "full")
    for method in methods:
        rows = [row for row in summary if row["method"] == method]
        peak = statistics.fmean(row["measured_peak_bytes"] for row in rows)
        accuracy = [100 * row["eval_value"] for row in rows]
        assert table.loc[method, "Seeds"] == "0, 1"
        assert table.loc[method, "Peak memory"] == f"{peak / MIB:.2f} MiB"
        assert table.loc[method, "vs full"] == f"{peak / full_peak:.2f}×"
        assert (
            table.loc[method, "Accuracy"]
            == f"{statistics.fmean(accuracy):.1f} % ± {statistics.stdev(accuracy):.1f}"
        )
    assert "No measured peak" not in " ".join(texts(at.caption))  # measured on the CPU as well

    # The base model's pre-training is shown on its own (above the methods), with its curve.
    base = next(run for run in smoke_comparison["runs"] if run["role"] == "base")
    link = next(p.proto for p in at.get("page_link") if p.proto.label.startswith(f"Run {base['id']}: "))
    assert "pre-training full · Completed · Perplexity " in link.label
    base_loss, memory, pareto, loss = plotly_specs(at)
    assert [t["name"] for t in base_loss["data"]] == ["pre-training (full)"]
    bars = {trace["name"]: trace for trace in memory["data"] if trace.get("type") == "bar"}
    assert list(bars) == COMPONENT_LABELS
    for i, method in enumerate(methods):
        # The bars are means over seeds (a seed's measured batch may hold padding, and its mask).
        own = [row for row in summary if row["method"] == method]
        assert bars["Activations"]["x"][i] == method
        assert bars["Activations"]["y"][i] == pytest.approx(
            statistics.fmean(r["activation_bytes"] for r in own) / MIB
        )
        assert bars["Frozen weights"]["y"][i] == pytest.approx(
            statistics.fmean(r["weight_bytes"] for r in own) / MIB
        )
    assert [t["name"] for t in pareto["data"]] == [*methods, "Pareto front"]
    assert len(loss["data"]) == len(smoke_comparison["runs"]) - 1  # the methods' runs

    assert [b.proto.label for b in at.get("download_button")] == [
        "Download table (CSV)",
        "Download everything (JSON)",
    ]
    link = next(p.proto for p in at.get("page_link") if p.proto.label == "Link to this view")
    assert link.query_string == f"comparison={comparison_id}"


# --- Run detail -----------------------------------------------------------------------------------


def test_run_detail_shows_spec_environment_metrics_and_artifact(
    open_page: OpenPage, live_service: LiveService, smoke_comparison: dict[str, Any]
) -> None:
    run_id = next(run["id"] for run in smoke_comparison["runs"] if run["method"] == "velora+lora")
    run = live_service.get(f"/runs/{run_id}")
    metrics = live_service.get(f"/runs/{run_id}/metrics")["data"]
    at = open_page("views/run_detail.py", run=run_id)
    assert not at.error, texts(at.error)
    assert at.subheader[0].value == f"Run {run_id}: velora+lora, seed {run['seed']}"
    assert [tab.label for tab in at.tabs] == ["Metrics", "Memory", "Spec", "Environment", "Artifact"]
    curve = at.dataframe[0].value
    assert len(curve) == len(metrics) > 0
    assert list(curve.columns)[:3] == ["Step", "Loss", "Learning rate"]
    assert "Memory allocated (bytes)" not in curve.columns  # recorded on CUDA only: no column of None
    assert not any(curve[column].isna().all() for column in curve.columns)
    items = run["result"]["eval"]["items"]  # a sample of the per-item records, beside the curve
    sample = at.dataframe[1].value
    assert list(sample["prompt hash"]) == items["prompt_hash"][:10]
    assert list(sample["correct"]) == ["yes" if ok else "no" for ok in items["correct"][:10]]
    assert "items" not in json.loads(at.json[0].proto.body)  # the evaluation shown without them
    assert json.loads(at.json[-1].proto.body) == run["spec"]
    assert "The run's spec (RunSpec), as stored and hashed" in texts(at.caption)

    memory, environment, artifact = (table.value for table in at.table)
    assert list(memory["Bytes"])[:5] == [
        f"{run['result']['memory'][key]:,}"
        for key in (
            "weight_bytes",
            "trainable_bytes",
            "gradient_bytes",
            "optimizer_bytes",
            "activation_bytes",
        )
    ]
    assert (
        dict(zip(environment["Key"], environment["Value"], strict=True))["torch"]
        == run["result"]["environment"]["torch"]
    )
    assert dict(zip(artifact["Fact"], artifact["Value"], strict=True))["Artifact"] == run["artifact_path"]


@pytest.mark.parametrize(
    ("page", "query", "ignored", "input_key"),
    [
        ("views/compare.py", {"gpu_gib": "abc"}, "gpu_gib='abc'", "compare.gpu_gib"),
        ("views/compare.py", {"gpu_gib": "0.1"}, "gpu_gib='0.1'", "compare.gpu_gib"),
        ("views/compare.py", {"gpu_gib": "nan"}, "gpu_gib='nan'", "compare.gpu_gib"),
        ("views/compare.py", {"comparison": "abc"}, "comparison='abc'", None),
        ("views/runs.py", {"comparison": "0"}, "comparison='0'", "runs.comparison"),
        ("views/runs.py", {"comparison": "1e999"}, "comparison='1e999'", "runs.comparison"),
        ("views/run_detail.py", {"run": "-3"}, "run='-3'", "run.id"),
        (
            "views/run_detail.py",
            {"run": "99999999999999999999999"},
            "run='99999999999999999999999'",
            "run.id",
        ),
    ],
)
def test_bad_query_values_get_a_message_and_the_defaults(
    open_page: OpenPage,
    smoke_comparison: dict[str, Any],
    page: str,
    query: dict[str, str],
    ignored: str,
    input_key: str | None,
) -> None:
    at = open_page(
        page, **({"comparison": smoke_comparison["id"]} if page == "views/compare.py" else {}) | query
    )
    warnings = texts(at.warning)
    assert any(f"Ignored {ignored} in the address" in w and "Showing the default" in w for w in warnings), (
        warnings
    )
    if input_key is not None:
        assert at.number_input(key=input_key).value is None  # the default: no budget, any comparison, no run
    if page == "views/compare.py" and "comparison" not in query:
        assert at.subheader[0].value == smoke_comparison["name"]  # the page still shows its comparison


# --- when the API is away -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "page", ["views/launch.py", "views/runs.py", "views/compare.py", "views/run_detail.py", "views/fit.py"]
)
def test_every_page_says_when_the_api_cannot_be_reached(page: str, monkeypatch: pytest.MonkeyPatch) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    monkeypatch.setenv("VELORA_API_URL", url)
    st.cache_data.clear()
    at = AppTest.from_file(str(APP), default_timeout=30)
    at.query_params["run"] = "1"
    at.switch_page(page).run()
    assert not at.exception
    assert texts(at.error) and all(
        text.startswith(f"Cannot reach the API at {url}") for text in texts(at.error)
    )


def test_spec_builder_offers_the_classification_workloads(open_page: OpenPage) -> None:
    at = open_page()
    at.radio(key="launch.mode").set_value("spec").run()
    at.selectbox(key="spec.workload").set_value("image-classification").run()
    assert at.selectbox(key="spec.model").options[:1] and all(
        o.startswith("vit-") for o in at.selectbox(key="spec.model").options
    )
    assert [o.split(" — ")[0] for o in at.selectbox(key="spec.dataset").options] == [
        "digits",
        "digits-rotation",
    ]
    assert at.selectbox(key="spec.metric").options == ["accuracy", "none"]
    at.selectbox(key="spec.workload").set_value("sequence-classification").run()
    assert all(o.startswith("roberta-") for o in at.selectbox(key="spec.model").options)
    assert at.selectbox(key="spec.metric").options == ["accuracy", "matthews", "pearson", "none"]
