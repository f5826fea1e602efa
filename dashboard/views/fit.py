"""Will it fit? Each method's predicted peak memory for a model and shape, against a card, and the
largest micro-batch that fits: ``POST /fit`` (one fake-tensor step per method on the server's CPU)."""

from __future__ import annotations

import streamlit as st

from dashboard.api import ApiClient, ApiError
from dashboard.charts import fit_figure
from dashboard.forms import AUTOCAST_SELECT, GPU_SIZES_GIB
from dashboard.run_tables import fit_rows

api: ApiClient = st.session_state.api

st.title("Will it fit?")
st.caption(
    "One training step of each method runs under PyTorch's FakeTensorMode on the server: the same "
    "model and method code as a real run, with no weights allocated and nothing computed. A prediction, "
    "from the CPU's kernels (a GPU's attention kernels may save less)."
)
try:
    presets = api.presets()
except ApiError as exc:
    st.error(exc.message)
    st.stop()

models = presets["models"]
names = list(models)
c1, c2 = st.columns([2, 1])
model = c1.selectbox(
    "Model (a preset shape)",
    names,
    index=names.index("llama-7b") if "llama-7b" in names else 0,
    key="willfit.model",
    format_func=lambda m: f"{m} — {models[m].get('description') or ''}",
)
gpu_gib = c2.selectbox("Card memory (GiB)", GPU_SIZES_GIB, index=GPU_SIZES_GIB.index(24), key="willfit.gpu")
c1, c2, c3 = st.columns(3)
limit = models[model].get("max_position_embeddings") or 2048
seq_len = c1.number_input("Sequence length", 8, int(limit), min(512, int(limit)), key="willfit.seq_len")
micro_batch = c2.number_input("Micro-batch", 1, 1024, 8, key="willfit.micro_batch")
dtype = c3.selectbox("dtype", ["bf16", "fp16", "fp32"], key="willfit.dtype")
autocast = c3.selectbox(**AUTOCAST_SELECT, key="willfit.autocast")
methods = st.multiselect(
    "Methods", list(presets["methods"]), default=list(presets["methods"]), key="willfit.methods"
)
body = {
    "model": model,
    "methods": methods,
    "micro_batch": int(micro_batch),
    "seq_len": int(seq_len),
    "dtype": dtype,
    **({"autocast": autocast} if autocast else {}),
    "gpu_gib": float(gpu_gib),
}

if st.button("Predict", type="primary", disabled=not methods, key="willfit.submit"):
    with st.spinner(f"Running {len(methods)} fake training step(s) on the server…"):
        try:
            st.session_state["willfit.answer"] = api.fit(body)
        except ApiError as exc:
            st.error(exc.message)

answer = st.session_state.get("willfit.answer")
if answer:
    asked = answer["request"]
    estimates = answer["estimates"]
    gpu_bytes = estimates[0].get("gpu_bytes") if estimates else None
    st.subheader(
        f"{asked['model']} · {asked['micro_batch']}×{asked['seq_len']} tokens · {asked['dtype']}"
        + (f" · autocast {asked['autocast']}" if asked.get("autocast") else "")
    )
    st.plotly_chart(fit_figure(estimates, gpu_bytes), key="willfit.chart")
    st.table(fit_rows(estimates))
    st.caption(f"Predicted in {answer['seconds']:.0f} s.")
    for note in dict.fromkeys(n for e in estimates for n in e.get("notes", [])):
        st.caption(f"Note: {note}")
