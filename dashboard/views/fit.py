"""Will it fit? (predict): each method's predicted peak memory for a model and shape, against a card
of any size, and the largest micro-batch that fits: ``POST /fit`` (one fake-tensor step per method on
the server's CPU), every method in one request so the server predicts them side by side, waiting in
line behind other requests with the position and the time shown. Nothing is trained: for a measured answer, Launch's
"Measure memory" runs real steps on a worker."""

from __future__ import annotations

import time

import streamlit as st

from dashboard.api import ApiClient, ApiError
from dashboard.charts import fit_figure
from dashboard.fit_input import model_problem, parse_config
from dashboard.forms import AUTOCAST_SELECT
from dashboard.run_tables import fit_rows
from velora_core.contract.fit_request import MAX_FIT_MICRO_BATCH, MAX_FIT_SEQ_LEN, MAX_GPU_GIB

api: ApiClient = st.session_state.api

st.title("Will it fit? (predict)")
st.caption(
    "A prediction in seconds, nothing trained: two training steps of each method (the second, a steady "
    "one, holds the optimizer state) run under PyTorch's FakeTensorMode on the server, the same model and "
    "method code as a real run with no weights allocated. From the CPU's kernels (a GPU's attention "
    "kernels may save less). Allocated is what live tensors hold; reserved is what PyTorch's caching "
    "allocator holds (replayed by its rules); the card must hold reserved plus the CUDA context. For "
    "measured bytes, Launch → “Measure memory” runs real steps on a worker."
)
try:
    presets = api.presets()
except ApiError as exc:
    st.error(exc.message)
    st.stop()

models = {name: shape for name, shape in presets["models"].items() if shape.get("family", "llama") == "llama"}
names = list(models)
source_kind = st.radio(
    "Model",
    ["preset", "hub", "config"],
    horizontal=True,
    key="willfit.source",
    format_func={"preset": "A preset shape", "hub": "A hub id", "config": "A pasted config.json"}.get,
)
problem, config = None, None
c1, c2 = st.columns([2, 1])
if source_kind == "preset":
    model = c1.selectbox(
        "Preset",
        names,
        index=names.index("llama-7b") if "llama-7b" in names else 0,
        key="willfit.model",
        format_func=lambda m: f"{m} — {models[m].get('description') or ''}",
    )
elif source_kind == "hub":
    model = c1.text_input(
        "Hub id", "huggyllama/llama-7b", key="willfit.hub_id", help="owner/name: its config.json is read"
    ).strip()
    problem = model_problem(model, names)
else:
    text = c1.text_area(
        "config.json", key="willfit.config", height=150, placeholder='{"model_type": "llama", …}'
    )
    model = "pasted config.json"
    config, problem = parse_config(text) if text.strip() else (None, "paste a model's config.json")
gpu_gib = c2.number_input(
    "Card memory (GiB)",
    min_value=0.5,
    max_value=MAX_GPU_GIB,
    value=24.0,
    step=1.0,
    format="%g",
    key="willfit.gpu",
    help=f"Any size, 0.5 to {MAX_GPU_GIB:g} GiB",
)
c1, c2, c3 = st.columns(3)
seq_len = c1.number_input(
    "Sequence length",
    8,
    MAX_FIT_SEQ_LEN,
    512,
    key="willfit.seq_len",
    help=f"8 to {MAX_FIT_SEQ_LEN:,} (the API's range; the model's own limit is checked there)",
)
micro_batch = c2.number_input(
    "Micro-batch", 1, MAX_FIT_MICRO_BATCH, 8, key="willfit.micro_batch", help=f"1 to {MAX_FIT_MICRO_BATCH:,}"
)
dtype = c3.selectbox("dtype", ["bf16", "fp16", "fp32"], key="willfit.dtype")
autocast = c3.selectbox(**AUTOCAST_SELECT, key="willfit.autocast")
methods = st.multiselect(
    "Methods", list(presets["methods"]), default=list(presets["methods"])[:3], key="willfit.methods"
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
if problem:
    st.warning(problem)
card = {"gpu_gib": float(gpu_gib), "card_family": card_family, "expandable_segments": expandable}


def method_settings(method: str) -> dict:
    """The sections of the settings above that ``method``'s settings schema has (velora+lora: both)."""
    properties = presets["methods"][method].get("config_schema", {}).get("properties", {})
    return {k: v for k, v in settings.items() if k in properties}


def question(methods: list[str]) -> dict:
    """The request for every method at once (the server predicts them side by side, one process each
    of its CPUs): a whole comparison spec for a preset or hub id (every run setting as it would run);
    for a pasted config.json the shape fields (the API takes no spec with a pasted config)."""
    configs = {method: method_settings(method) for method in methods}
    if config is not None:
        return {
            "model": model,
            "config": config,
            "methods": methods,
            "method_configs": configs,
            "micro_batch": int(micro_batch),
            "seq_len": int(seq_len),
            "dtype": dtype,
            **({"autocast": autocast} if autocast else {}),
            **card,
        }
    source = (
        {"source": "preset", "name": model} if source_kind == "preset" else {"source": "hub", "name": model}
    )
    base = {
        "workload": "finetune",
        "model": {**source, "memory_only": True},
        "dataset": {"name": "stdlib-corpus"},
        "method": methods[0],
        "method_config": configs[methods[0]],
        "seq_len": int(seq_len),
        "micro_batch": int(micro_batch),
        "grad_accum": int(grad_accum),
        "dtype": dtype,
        **({"autocast": autocast} if autocast else {}),
        "optimizer": {"name": "adamw", "max_grad_norm": float(clip) or None},
    }
    spec = {"name": "will-it-fit", "base": base, "methods": methods, "method_configs": configs}
    return {"spec": spec, **card}


if config is not None:
    st.caption(
        "A pasted config.json is predicted from the shape fields: gradient accumulation 1, AdamW and "
        "clipping at 1.0 (the other run settings apply to presets and hub ids)."
    )
asked = {"model": model, "micro_batch": int(micro_batch), "seq_len": int(seq_len), "dtype": dtype}


def ask(methods: list[str], status: st.delta_generator.DeltaGenerator) -> dict | None:
    """The answer for ``methods``, showing the line and the time while the request waits and runs."""
    future = api.start_fit(question(methods))
    started = time.monotonic()
    what = f"{len(methods)} method(s)"
    while not future.done():
        try:
            line = api.fit_queue()
            where = f"{line['waiting']} request(s) waiting, one running" if line["running"] else "starting"
        except ApiError:
            where = "waiting"
        status.info(f"Predicting {what}: {where} · {time.monotonic() - started:.0f} s")
        time.sleep(0.5)
    try:
        answer = future.result()
    except ApiError as exc:
        status.error(exc.message)
        return None
    ahead = answer.get("ahead_on_arrival") or 0
    status.caption(
        f"{what} predicted in {answer['seconds']:.0f} s"
        + (", from the server's cache" if answer.get("cached") else "")
        + (f", after {ahead} request(s) ahead of it" if ahead else "")
    )
    return answer


if st.button("Predict", type="primary", disabled=not methods or bool(problem), key="willfit.submit"):
    started = time.monotonic()
    answer = ask(list(methods), st.empty())
    if answer is None:
        st.session_state.pop("willfit.answer", None)  # the error above, not an older question's answer
    else:
        st.session_state["willfit.answer"] = {
            "asked": asked,
            "estimates": answer["estimates"],
            "seconds": time.monotonic() - started,
        }
        st.rerun()

answer = st.session_state.get("willfit.answer")
if answer and answer["estimates"]:
    estimates = answer["estimates"]
    shown = answer["asked"]
    st.subheader(
        f"{shown['model']} · {shown['micro_batch']}×{shown['seq_len']} tokens · {shown['dtype']}"
        + (f" · autocast {estimates[0]['autocast']}" if estimates[0].get("autocast") else "")
    )
    st.plotly_chart(fit_figure(estimates, estimates[0].get("gpu_bytes")), key="willfit.chart")
    st.table(fit_rows(estimates))
    st.caption(f"{len(estimates)} method(s) predicted in {answer['seconds']:.0f} s.")
    for note in dict.fromkeys(n for e in estimates for n in e.get("notes", [])):
        st.caption(f"Note: {note}")
