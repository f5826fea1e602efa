"""Compare: what each method of a comparison costs in memory and what it achieves, side by side."""

from __future__ import annotations

import streamlit as st

from dashboard.api import ApiClient, ApiError
from dashboard.charts import loss_figure, memory_figure, pareto_figure
from dashboard.formatting import GIB, MAX_QUERY_ID, format_bytes, query_number
from dashboard.run_status import base_run_words, comparison_status_words, progress_fraction, split_roles
from dashboard.summary import (
    chance_words,
    comparison_json,
    display_table,
    indistinguishable_list,
    rows_csv,
    table_rows,
)
from dashboard.verdict import cheapest_sentence, config_diff, context_line, toy_banner, verdict_lines
from velora_core.contract.result import (
    ACTIVE_STATUSES,
    FINISHED_RUN_STATUSES,
    ComparisonStatus,
    RunStatus,
)

api: ApiClient = st.session_state.api
MAX_GPU_GIB = 1_000_000.0

st.title("Compare")
try:
    recent = api.comparisons(limit=200)["data"]
except ApiError as exc:
    st.error(exc.message)
    st.stop()
labels = {
    c["id"]: f"#{c['id']} {c['name']} ({c['status']}, {len(c['run_ids'])} runs, "
    f"{c['created_at'][:16].replace('T', ' ')})"
    for c in recent
}
linked, problem = query_number(
    st.query_params, "comparison", minimum=1, maximum=MAX_QUERY_ID, integer=True, what="a comparison id"
)
linked_gib, gib_problem = query_number(
    st.query_params, "gpu_gib", minimum=0.5, maximum=MAX_GPU_GIB, what="GiB of GPU memory, at least 0.5"
)
for message in (problem, gib_problem):
    if message:
        st.warning(message)
if linked is not None and linked not in labels:
    labels = {linked: f"#{linked}"} | labels
if not labels:
    st.info("No comparisons yet.")
    st.page_link("views/launch.py", label="Launch one", icon=":material/rocket_launch:")
    st.stop()

c1, c2 = st.columns([3, 1], vertical_alignment="bottom")
ids = list(labels)
comparison_id = c1.selectbox(
    "Comparison",
    ids,
    index=ids.index(linked) if linked is not None else 0,
    format_func=labels.get,
    key="compare.comparison",
)
gpu_gib = c2.number_input(
    "GPU memory to fit (GiB)",
    min_value=0.5,
    max_value=MAX_GPU_GIB,
    value=linked_gib,
    step=8.0,
    format="%g",
    placeholder="none",
    key="compare.gpu_gib",
)
view = {"comparison": str(comparison_id)} | ({"gpu_gib": f"{gpu_gib:g}"} if gpu_gib else {})
st.query_params.from_dict(view)  # the address bar always reopens this view

try:
    active = api.comparison(comparison_id, include_results=True)["status"] in ACTIVE_STATUSES
except ApiError as exc:
    st.error(exc.message)
    st.stop()


@st.fragment(run_every=3 if active else None)
def comparison_view() -> None:
    """Everything below the chooser; re-rendered alone every few seconds while runs are active."""
    try:
        comparison = api.comparison(comparison_id, include_results=True)
        inline = comparison.get("results")
        if inline is not None:  # one request for every run's result
            details = {int(run_id): {"result": result} for run_id, result in inline.items()}
        else:  # an API without ?include=results: one GET per finished run
            details = {
                run["id"]: api.finished_run(run["id"])
                for run in comparison["runs"]
                if run["status"] in FINISHED_RUN_STATUSES
            }
    except ApiError as exc:
        st.error(exc.message)
        return
    if active and comparison["status"] not in ACTIVE_STATUSES:
        st.rerun()  # finished: redraw the whole page once, which also stops this timer
    runs, bases = split_roles(comparison["runs"])
    counts = ", ".join(f"{n} {status.replace('_', ' ')}" for status, n in comparison["status_counts"].items())
    st.subheader(comparison["name"])
    words = comparison_status_words(comparison)
    if comparison["status"] in (ComparisonStatus.PARTIAL, ComparisonStatus.FAILED):
        st.warning(words)
    else:
        st.markdown(f"**{words}**")
    st.caption(
        f"Comparison #{comparison['id']} · {'preset ' + comparison['preset'] + ' · ' if comparison['preset'] else ''}"
        f"{len(runs) + len(bases)} runs: {counts} · created {comparison['created_at'][:19].replace('T', ' ')} UTC"
    )
    everything = bases + runs
    rows = table_rows(comparison)  # the comparison table, as the API computed it
    budget = gpu_gib * GIB if gpu_gib else None
    results = {run_id: detail.get("result") for run_id, detail in details.items()}
    st.markdown(context_line(comparison, rows, results))
    banner = toy_banner(comparison, rows, results)
    if banner and any(row["completed"] for row in rows):
        st.info(banner, icon=":material/info:")
    verdict = verdict_lines(rows, budget)
    if verdict:
        st.markdown("\n".join(f"{i}. {line}" for i, line in enumerate(verdict, start=1)))
        sentence = cheapest_sentence(rows)
        if sentence:
            st.success(sentence)
    done = sum(run["status"] in FINISHED_RUN_STATUSES for run in everything)
    if done < len(everything):
        c1, c2 = st.columns([6, 1], vertical_alignment="bottom")
        finished_methods = sum(run["status"] in FINISHED_RUN_STATUSES for run in runs)
        c1.progress(
            finished_methods / len(runs) if runs else 0.0,
            text=f"{finished_methods} of {len(runs)} method runs finished",
        )
        if c2.button("Cancel all", key="compare.cancel"):
            st.session_state["compare.confirm_cancel"] = comparison_id
        if st.session_state.get("compare.confirm_cancel") == comparison_id:
            unfinished = len(everything) - done
            st.warning(
                f"Cancel the {unfinished} unfinished run(s) of this comparison? Finished runs keep their results."
            )
            y, n, _ = st.columns([1, 1, 4])
            if y.button("Yes, cancel all", type="primary", key="compare.cancel.confirm"):
                st.session_state.pop("compare.confirm_cancel", None)
                try:
                    api.cancel_comparison(comparison_id)
                except ApiError as exc:
                    st.error(exc.message)
            if n.button("Keep running", key="compare.cancel.keep"):
                st.session_state.pop("compare.confirm_cancel", None)
                st.rerun(scope="fragment")
    for base in bases:  # the pre-training of the fine-tunes' base model: a run of its own
        st.markdown("**Base model**")
        detail = details.get(base["id"]) or {}
        st.page_link(
            "views/run_detail.py",
            label=base_run_words(base, detail.get("result")),
            query_params={"run": str(base["id"])},
            icon=":material/model_training:",
        )
        if base["status"] in ACTIVE_STATUSES:
            st.progress(progress_fraction(base))
        points = ((detail.get("result") or {}).get("loss_curve")) or []
        if not points and base["status"] == RunStatus.RUNNING:
            try:
                points = api.metrics(base["id"])["data"]
            except ApiError:
                points = []
        if points:
            with st.expander("Base model's training curve"):
                curve = {"method": f"pre-training ({base['method']})", "seed": base["seed"], "points": points}
                st.plotly_chart(loss_figure([curve]), key=f"compare.base_loss.{base['id']}")
    for run in everything:
        if run["status"] in (RunStatus.FAILED, RunStatus.OUT_OF_MEMORY):
            st.error(
                f"{run['method']} (seed {run['seed']}) {run['status'].replace('_', ' ')}: {run.get('error') or 'no message'}"
            )

    if not any(row["completed"] for row in rows):
        st.info("No results yet: the table and charts appear as runs finish.")
    else:
        measured = any(
            row["measured_peak_bytes"] is not None or row["cuda_peak_bytes"] is not None
            for row in rows
            if row["completed"]
        )
        left, right = st.columns(2)
        left.plotly_chart(memory_figure(rows, gpu_budget_bytes=budget), key="compare.memory")
        if not measured:
            left.caption(
                "No measured peak: these runs finished before the memory tracker was added. Bars show the "
                "predicted total (weights, gradients and optimizer state by formula, activations as saved "
                "for backward)."
            )
        if any(row["value"] is not None for row in rows):
            right.plotly_chart(pareto_figure(rows), key="compare.pareto")
            for line in indistinguishable_list(rows):
                right.caption(line)
            sentence = chance_words(rows)
            if sentence:
                right.caption(sentence)
        else:
            right.info("No evaluation metric in these runs (memory only), so no accuracy chart.")
        st.table(display_table(rows, measured_peak=measured, gpu_budget_bytes=budget))
        diff = config_diff(rows)
        if diff:
            st.markdown("**What differs between methods**")
            st.table(diff)
        velora = [row for row in rows if row["predicted_activation_bytes"]]
        if velora:
            st.caption(
                "VeLoRA-wrapped layers, bytes saved for backward — "
                + "; ".join(
                    f"{row['method']}: predicted {format_bytes(row['predicted_activation_bytes'])}, "
                    f"measured {format_bytes(row['velora_measured_bytes'])}"
                    for row in velora
                )
            )
    curves = []
    for run in runs:
        points = ((details.get(run["id"]) or {}).get("result") or {}).get("loss_curve") or []
        if not points and run["status"] == RunStatus.RUNNING:
            try:
                points = api.metrics(run["id"])["data"]
            except ApiError:
                points = []
        curves.append({"method": run["method"], "seed": run["seed"], "points": points})
    if any(curve["points"] for curve in curves):
        st.plotly_chart(loss_figure(curves), key="compare.loss")

    c1, c2, c3 = st.columns(3, vertical_alignment="center")
    c1.download_button(
        "Download table (CSV)",
        rows_csv(rows),
        file_name=f"comparison-{comparison_id}.csv",
        mime="text/csv",
        key="compare.csv",
    )
    c2.download_button(
        "Download everything (JSON)",
        comparison_json(comparison, rows),
        file_name=f"comparison-{comparison_id}.json",
        mime="application/json",
        key="compare.json",
    )
    c3.page_link("views/compare.py", label="Link to this view", icon=":material/link:", query_params=view)
    with st.expander("Runs and spec"):
        for run in everything:
            st.page_link(
                "views/run_detail.py",
                label=f"Run {run['id']}: {run['method']}, seed {run['seed']} ({run['status']})",
                query_params={"run": str(run["id"])},
            )
        st.json(comparison["spec"], expanded=False)


comparison_view()
