"""Runs: every run, newest first, filtered and paginated, with live progress, ETA and cancel."""

from __future__ import annotations

import streamlit as st

from dashboard.api import ApiClient, ApiError
from dashboard.formatting import MAX_QUERY_ID, duration_words, query_number
from dashboard.run_status import STATUS_WORDS, eta_seconds, run_rows, status_words
from velora_core.contract.result import ACTIVE_STATUSES, RunStatus

api: ApiClient = st.session_state.api
PAGE_SIZES = [25, 50, 100, 200]

st.title("Runs")
try:
    methods = list(api.presets()["methods"])
except ApiError as exc:
    st.error(exc.message)
    st.stop()

# Filters (the comparison filter is also read from, and kept in, the address: ?comparison=ID).
c1, c2, c3, c4, c5 = st.columns([3, 2, 1, 1, 1], vertical_alignment="bottom")
statuses = c1.multiselect(
    "Status", list(STATUS_WORDS), key="runs.status", format_func=lambda s: s.replace("_", " ")
)
method = c2.selectbox("Method", ["all", *methods], key="runs.method")
linked, problem = query_number(
    st.query_params, "comparison", minimum=1, maximum=MAX_QUERY_ID, integer=True, what="a comparison id"
)
if problem:
    st.warning(problem)
comparison_id = c3.number_input(
    "Comparison",
    min_value=1,
    max_value=MAX_QUERY_ID,
    value=linked,
    step=1,
    key="runs.comparison",
    placeholder="any",
)
page_size = c4.selectbox("Per page", PAGE_SIZES, index=1, key="runs.page_size")
live = c5.toggle("Live", value=True, key="runs.live", help="Refresh every 3 s")
if comparison_id:
    st.query_params["comparison"] = str(comparison_id)
else:
    st.query_params.pop("comparison", None)
filters = {"status": statuses, "method": None if method == "all" else method, "comparison_id": comparison_id}


@st.fragment(run_every=3 if live else None)
def listing() -> None:
    """One page of runs; only this part re-renders while runs are live."""
    try:
        count = api.runs(**filters, limit=1)["count"]
        pages = max(1, -(-count // page_size))
        page = st.number_input(f"Page (of {pages})", 1, pages, 1, key="runs.page") if pages > 1 else 1
        runs = api.runs(**filters, offset=(page - 1) * page_size, limit=page_size)["data"]
    except ApiError as exc:
        st.error(exc.message)
        return
    st.caption(f"{count} runs match; showing {len(runs)}.")
    if not runs:
        st.info("No runs match these filters. Launch a comparison to start some.")
        return
    st.dataframe(
        run_rows(runs),
        hide_index=True,
        width="stretch",
        column_config={
            "Progress": st.column_config.ProgressColumn(
                "Progress", min_value=0.0, max_value=1.0, format="percent"
            ),
            "State": st.column_config.TextColumn("State", width="large"),
        },
    )
    active = [run for run in runs if run["status"] in ACTIVE_STATUSES]
    if active:
        st.subheader("In progress")
    for run in active:
        c1, c2 = st.columns([7, 1], vertical_alignment="bottom")
        eta = duration_words(eta_seconds(run))
        total = run.get("total_steps") or 0
        c1.progress(
            min(1.0, (run.get("step") or 0) / total) if total else 0.0,
            text=f"Run {run['id']} · {run['method']} · seed {run['seed']} · {status_words(run)}"
            + (f" · about {eta} left" if eta else ""),
        )
        if c2.button("Cancel", key=f"runs.cancel.{run['id']}", disabled=bool(run.get("cancel_requested"))):
            try:
                api.cancel_run(run["id"])
                st.toast(f"Run {run['id']}: cancel requested")
            except ApiError as exc:
                st.error(exc.message)
    for run in runs:
        if run["status"] in (RunStatus.FAILED, RunStatus.OUT_OF_MEMORY):
            st.error(f"Run {run['id']} ({run['method']}, seed {run['seed']}): {status_words(run)}")
    c1, c2 = st.columns([4, 1], vertical_alignment="bottom")
    labels = {
        run["id"]: f"Run {run['id']} · {run['method']} · seed {run['seed']} · {run['status']}" for run in runs
    }
    chosen = c1.selectbox("Open a run", list(labels), format_func=labels.get, key="runs.open_choice")
    if c2.button("Open details", key="runs.open"):
        st.switch_page("views/run_detail.py", query_params={"run": str(chosen)})


listing()
