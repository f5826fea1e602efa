"""Launch: pick a preset, build a spec, or measure memory with real runs; checked before it is sent
(the spec's JSON schema and this server's limits), with an estimated duration and, on request, the
predicted memory of the shape; submit; go to Compare."""

from __future__ import annotations

import streamlit as st

from dashboard.api import ApiClient, ApiError
from dashboard.forms import fit_form, preset_form, spec_form
from dashboard.launch_checks import duration_estimate, preset_spec, request_problems
from dashboard.run_tables import fit_rows

api: ApiClient = st.session_state.api

st.title("Launch a comparison")
try:
    presets = api.presets()
except ApiError as exc:
    st.error(exc.message)
    st.stop()

MODES = {
    "preset": "A preset",
    "spec": "Build a spec",
    "fit": "Measure memory (real memory-only runs)",
}
mode = st.radio("What to run", list(MODES), horizontal=True, key="launch.mode", format_func=MODES.get)
if mode == "fit":
    st.caption(
        "Real training steps of each method on random weights of the model's shape, on a worker: the "
        "measured peak, in minutes. For a prediction in seconds without running anything, use "
        "“Will it fit? (predict)”."
    )
request = {"preset": preset_form, "spec": spec_form, "fit": fit_form}[mode](presets)
problems = list(request.problems) or request_problems(request.body, presets)

with st.expander("Request body"):
    st.json(request.body)
for problem in problems:
    if problem in request.problems:  # the form's own (no method chosen, bad seeds)
        st.warning(problem)
    else:  # what the API would refuse
        st.error(f"Not sent: {problem}")

spec = request.body
if "preset" in spec:
    spec = preset_spec(
        (presets.get("comparison_specs") or {}).get(spec["preset"]) or {}, spec.get("overrides")
    )
if spec.get("base") and not problems:
    try:
        finished = api.runs(status=["completed"], limit=200)["data"]
    except ApiError:
        finished = []
    base = spec["base"]
    tokens = int(base.get("micro_batch") or 0) * int(base.get("seq_len") or 0)
    if tokens > 1_048_576:
        st.warning(
            f"{base['micro_batch']:,} × {base['seq_len']:,} = {tokens:,} tokens per step: far beyond what fits "
            "most cards. Predict its memory before launching."
        )
    st.caption(duration_estimate(spec, finished))
    model = spec["base"].get("model") or {}
    name = model.get("name") or (model.get("pretrain") or {}).get("model", {}).get("name")
    if (presets["models"].get(name) or {}).get("family", "llama") == "llama" and st.button(
        "Predict its memory first (no run)", key="launch.predict"
    ):
        body = {
            "model": name,
            "methods": spec["methods"],
            "micro_batch": spec["base"]["micro_batch"],
            "seq_len": spec["base"]["seq_len"],
            "dtype": spec["base"].get("dtype", "fp32"),
        } | ({"gpu_gib": request.gpu_gib} if request.gpu_gib else {})
        with st.spinner("Predicting each method's peak (one fake step each, on the server)…"):
            try:
                st.session_state["launch.prediction"] = api.fit(body)
            except ApiError as exc:
                st.error(exc.message)
    answer = st.session_state.get("launch.prediction")
    if answer and answer["request"]["model"] == name:
        st.table(fit_rows(answer["estimates"]))

if st.button("Launch", type="primary", disabled=bool(problems), key="launch.submit"):
    try:
        comparison = api.create_comparison(request.body)
    except ApiError as exc:
        st.error(exc.message)
    else:
        params = {"comparison": str(comparison["id"])}
        if request.gpu_gib:
            params["gpu_gib"] = f"{request.gpu_gib:g}"
        st.switch_page("views/compare.py", query_params=params)
