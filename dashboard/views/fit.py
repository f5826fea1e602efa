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
    "from the CPU's kernels (a GPU's attention kernels may save less). Allocated is what live tensors "
    "hold; reserved is what PyTorch's caching allocator holds (replayed by its rules); the card must "
    "hold reserved plus the CUDA context."
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
with st.expander("Run settings: method settings, gradient accumulation, optimizer, card"):
    c1, c2, c3, c4 = st.columns(4)
    lora_r = c1.number_input("LoRA rank r", 1, 4096, 8, key="willfit.lora_r")
    lora_targets = c2.text_input(
        "LoRA target modules", "q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj", key="willfit.lora_t"
    )
    velora_groups = c3.number_input("VeLoRA groups", 1, 65536, 32, key="willfit.velora_groups")
    galore_rank = c4.number_input("GaLore rank", 1, 65536, 128, key="willfit.galore_rank")
    c1, c2, c3, c4 = st.columns(4)
    grad_accum = c1.number_input("Gradient accumulation", 1, 1024, 1, key="willfit.grad_accum")
    c2.selectbox("Optimizer", ["adamw"], key="willfit.optimizer", help="8-bit Adam is the adam8bit technique")
    clip = c3.number_input("Clip gradients at (0: off)", 0.0, 1e6, 1.0, key="willfit.clip")
    card_family = c4.selectbox("Card family", ["hopper", "ada", "ampere", "volta"], key="willfit.family")
    expandable = st.checkbox("expandable_segments", key="willfit.expandable")
targets = [t.strip() for t in lora_targets.split(",") if t.strip()]
settings = {
    "lora": {"r": int(lora_r), "target_modules": targets},
    "velora": {"num_groups": int(velora_groups)},
    "galore": {"rank": int(galore_rank)},
}
spec = {
    "base": {
        "workload": "finetune",
        "model": {"source": "preset", "name": model, "memory_only": True},
        "dataset": {"name": "stdlib-corpus"},
        "seq_len": int(seq_len),
        "micro_batch": int(micro_batch),
        "grad_accum": int(grad_accum),
        "dtype": dtype,
        **({"autocast": autocast} if autocast else {}),
        "optimizer": {"name": "adamw", "max_grad_norm": float(clip) or None},
    },
    "methods": methods,
    # Each method takes the sections its settings schema has (velora+lora: lora and velora).
    "method_configs": {
        m: {
            k: v
            for k, v in settings.items()
            if k in presets["methods"][m].get("config_schema", {}).get("properties", {})
        }
        for m in methods
    },
}
body = {
    "spec": spec,
    "gpu_gib": float(gpu_gib),
    "card_family": card_family,
    "expandable_segments": expandable,
}

if st.button("Predict", type="primary", disabled=not methods, key="willfit.submit"):
    with st.spinner(f"Running {len(methods)} fake training step(s) on the server…"):
        try:
            st.session_state["willfit.answer"] = api.fit(body)
        except ApiError as exc:
            st.error(exc.message)

answer = st.session_state.get("willfit.answer")
if answer:
    estimates = answer["estimates"]
    gpu_bytes = estimates[0].get("gpu_bytes") if estimates else None
    first = estimates[0] if estimates else {"micro_batch": "?", "seq_len": "?", "dtype": "?"}
    st.subheader(
        f"{first['micro_batch']}×{first['seq_len']} tokens · {first['dtype']}"
        + (f" · autocast {first['autocast']}" if first.get("autocast") else "")
    )
    st.plotly_chart(fit_figure(estimates, gpu_bytes), key="willfit.chart")
    st.table(fit_rows(estimates))
    st.caption(f"Predicted in {answer['seconds']:.0f} s.")
    for note in dict.fromkeys(n for e in estimates for n in e.get("notes", [])):
        st.caption(f"Note: {note}")
