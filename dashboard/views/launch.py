"""Launch: pick a preset, build a spec, or ask whether a model fits a GPU; submit; go to Compare."""

from __future__ import annotations

import streamlit as st

from dashboard.api import ApiClient, ApiError
from dashboard.forms import fit_form, preset_form, spec_form

api: ApiClient = st.session_state.api

st.title("Launch a comparison")
try:
    presets = api.presets()
except ApiError as exc:
    st.error(exc.message)
    st.stop()

mode = st.radio(
    "What to run",
    ["preset", "spec", "fit"],
    horizontal=True,
    key="launch.mode",
    format_func={"preset": "A preset", "spec": "Build a spec", "fit": "Will it fit? (memory only)"}.get,
)
request = {"preset": preset_form, "spec": spec_form, "fit": fit_form}[mode](presets)

with st.expander("Request body"):
    st.json(request.body)
for problem in request.problems:
    st.warning(problem)

if st.button("Launch", type="primary", disabled=bool(request.problems), key="launch.submit"):
    try:
        comparison = api.create_comparison(request.body)
    except ApiError as exc:
        st.error(exc.message)
    else:
        params = {"comparison": str(comparison["id"])}
        if request.gpu_gib:
            params["gpu_gib"] = f"{request.gpu_gib:g}"
        st.switch_page("views/compare.py", query_params=params)
