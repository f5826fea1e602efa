"""VeLoRA Bench dashboard: ``streamlit run dashboard/app.py`` (``velora-bench up`` starts it too).

This script owns the navigation and the state every page shares: the API client, built once from
``VELORA_API_URL`` (default ``http://127.0.0.1:8000``) and ``VELORA_API_TOKEN``, which it presents on
every request (``velora-bench up`` hands it the token it keeps in its data dir; the API asks every
client for one unless ``VELORA_TRUST_LOCALHOST=true``). The dashboard talks to the service over HTTP only.
"""

from __future__ import annotations

import os

import streamlit as st

from dashboard.api import ApiClient, ApiError

st.set_page_config(page_title="VeLoRA Bench", page_icon=":material/memory:", layout="wide")

if "api" not in st.session_state:
    st.session_state.api = ApiClient(
        base_url=os.environ.get("VELORA_API_URL", "http://127.0.0.1:8000"),
        token=os.environ.get("VELORA_API_TOKEN") or None,
    )
api: ApiClient = st.session_state.api


def service_status() -> None:
    """One line above every page: is the service up, and is any worker there to run things?"""
    try:
        health = api.health()
    except ApiError as exc:
        st.error(exc.message)
        return
    if health.get("status") == "unavailable":
        down = [name for name in ("database", "broker") if not (health.get(name) or {}).get("ok")]
        st.error(
            f"The service at {api.base_url} is unavailable: its {' and '.join(down) or 'backend'} is not answering."
        )
        return
    workers = (health.get("workers") or {}).get("alive", 0)
    database = (health.get("database") or {}).get("backend", "?")
    where = f"API {api.base_url} · {database}"
    if workers:
        st.badge(
            f"{where} · {workers} worker{'s' if workers != 1 else ''} alive",
            icon=":material/check:",
            color="green",
        )
    else:
        st.badge(
            f"{where} · no worker alive: runs wait in the queue until one starts",
            icon=":material/warning:",
            color="orange",
        )


pages = [
    st.Page("views/launch.py", title="Launch", icon=":material/rocket_launch:", default=True),
    st.Page("views/runs.py", title="Runs", icon=":material/list:"),
    st.Page("views/compare.py", title="Compare", icon=":material/bar_chart:"),
    st.Page("views/run_detail.py", title="Run detail", icon=":material/description:"),
    st.Page("views/fit.py", title="Will it fit? (predict)", icon=":material/memory:"),
]
page = st.navigation(pages, position="top")
service_status()
page.run()
