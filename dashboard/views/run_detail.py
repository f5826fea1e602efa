"""Run detail: one run's state, numbers, training curve, spec, environment and artifact."""

from __future__ import annotations

import streamlit as st

from dashboard.api import ApiClient, ApiError
from dashboard.charts import loss_figure, timeline_figure
from dashboard.formatting import (
    MAX_QUERY_ID,
    METRIC_LABELS,
    duration_words,
    format_bytes,
    format_metric,
    metric_help,
    query_number,
)
from dashboard.run_status import eta_seconds, progress_fraction, status_words
from dashboard.run_tables import item_sample, memory_table, metric_rows, run_facts
from velora_core.contract.result import (
    ACTIVE_STATUSES,
    ItemRecords,
    RunStatus,
    headline_memory_bytes,
    measured_peak_bytes,
)

api: ApiClient = st.session_state.api

st.title("Run detail")
linked, problem = query_number(
    st.query_params, "run", minimum=1, maximum=MAX_QUERY_ID, integer=True, what="a run id (1, 2, …)"
)
if problem:
    st.warning(problem)
run_id = st.number_input(
    "Run",
    min_value=1,
    max_value=MAX_QUERY_ID,
    value=linked,
    step=1,
    placeholder="run id",
    key="run.id",
)
if not run_id:
    st.info("Choose a run by its id, or open one from Runs or Compare.")
    st.stop()
st.query_params["run"] = str(run_id)
try:
    active = api.run(run_id)["status"] in ACTIVE_STATUSES
except ApiError as exc:
    st.error(exc.message)
    st.stop()


@st.fragment(run_every=3 if active else None)
def run_view() -> None:
    try:
        run = api.run(run_id)
        metrics = api.metrics(run_id)["data"]
    except ApiError as exc:
        st.error(exc.message)
        return
    if active and run["status"] not in ACTIVE_STATUSES:
        st.rerun()  # finished: redraw the whole page once, which also stops this timer
    result = run.get("result") or {}
    memory = result.get("memory") or {}
    evaluation = result.get("eval") or {}
    st.subheader(f"Run {run['id']}: {run['method']}, seed {run['seed']}")
    state = status_words(run)
    if run["status"] in (RunStatus.FAILED, RunStatus.OUT_OF_MEMORY):
        st.error(state)
    elif run["status"] == RunStatus.CANCELLED:
        st.warning(state)
    else:
        eta = duration_words(eta_seconds(run))
        st.progress(progress_fraction(run), text=state + (f" · about {eta} left" if eta else ""))
    if run.get("role") == "base":
        st.caption("A base run: it pre-trains the model that the fine-tunes of its comparison start from.")
    for base_id in run.get("depends_on") or []:
        st.page_link(
            "views/run_detail.py",
            label=f"Base model: run {base_id} (its pre-training)",
            icon=":material/model_training:",
            query_params={"run": str(base_id)},
        )
    c1, c2 = st.columns([6, 1])
    if run.get("comparison_id"):
        c1.page_link(
            "views/compare.py",
            label=f"Comparison #{run['comparison_id']}",
            icon=":material/bar_chart:",
            query_params={"comparison": str(run["comparison_id"])},
        )
    if run["status"] in ACTIVE_STATUSES and c2.button(
        "Cancel", key="run.cancel", disabled=bool(run.get("cancel_requested"))
    ):
        try:
            api.cancel_run(run_id)
        except ApiError as exc:
            st.error(exc.message)

    if memory:
        m1, m2, m3, m4 = st.columns(4)
        peak = measured_peak_bytes(memory)
        m1.metric(
            "Peak memory (measured)" if peak is not None else "Memory (analytic)",
            format_bytes(headline_memory_bytes(memory)),
            help=f"during the {memory['peak_phase']} phase" if memory.get("peak_phase") else None,
        )
        m2.metric(
            METRIC_LABELS.get(evaluation.get("metric") or "", "Metric"),
            format_metric(evaluation.get("metric"), evaluation.get("value")),
            help=metric_help(evaluation),
        )
        m3.metric("Tokens/s", f"{(result.get('throughput') or {}).get('tokens_per_s', 0):.0f}")
        m4.metric(
            "Trainable parameters",
            f"{memory.get('trainable_params', 0):,} of {memory.get('total_params', 0):,}",
        )

    tabs = st.tabs(["Metrics", "Memory", "Spec", "Environment", "Artifact"])
    with tabs[0]:
        points = metrics or result.get("loss_curve") or []
        if points:
            st.plotly_chart(
                loss_figure([{"method": run["method"], "seed": run["seed"], "points": points}]),
                key="run.loss",
            )
            st.dataframe(metric_rows(points), hide_index=True, width="stretch")
        else:
            st.info("No training steps recorded yet.")
        if evaluation:
            st.caption("Evaluation, as the run recorded it")
            st.json({k: v for k, v in evaluation.items() if k != "items"}, expanded=False)
        if evaluation.get("items"):
            records = ItemRecords.model_validate(evaluation["items"])
            st.caption(
                f"Per-item records: the first of {len(records)} items (all of them: the download, or "
                f"GET /runs/{run_id}/items)"
            )
            st.dataframe(item_sample(records), hide_index=True, width="stretch")
            st.download_button(
                "Download the item records (JSON Lines)",
                records.jsonl(),
                file_name=f"run-{run_id}-items.jsonl",
                mime="application/x-ndjson",
                key="run.items",
            )
    with tabs[1]:
        if memory:
            if memory.get("timeline"):
                st.plotly_chart(timeline_figure(memory["timeline"]), key="run.timeline")
            st.table(memory_table(memory))
            by_dtype = memory.get("weight_bytes_by_dtype") or {}
            st.caption(
                "Frozen weights by dtype: "
                + ", ".join(f"{k}: {format_bytes(v)}" for k, v in by_dtype.items())
            )
        else:
            st.info("No memory report until the run finishes.")
    with tabs[2]:
        st.caption("The run's spec (RunSpec), as stored and hashed")
        st.json(run["spec"])
    with tabs[3]:
        environment = result.get("environment") or {}
        if environment:
            st.table(
                [
                    {"Key": key, "Value": "" if value is None else str(value)}
                    for key, value in environment.items()
                ]
            )
        else:
            st.info("The environment is recorded when the run finishes.")
    with tabs[4]:
        st.table(run_facts(run))


run_view()
