"""The Launch page's three forms, each returning the body of ``POST /comparisons``.

Every choice and limit comes from ``GET /presets``: model shapes, datasets, methods and the JSON
schema of each method's settings (rendered field by field by
:mod:`dashboard.schema_widgets`), the server's limits. The API validates
the body again and its error is shown in words, so the forms only prevent the obvious mistakes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import streamlit as st

from dashboard.launch_checks import field_range, range_words
from dashboard.schema_widgets import method_settings
from velora_core.contract.method_parts import SEPARATOR, canonical_method
from velora_core.contract.workload_registry import (
    PRETRAINING,
    WORKLOAD_DATA_KINDS,
    WORKLOAD_FAMILY,
    WORKLOAD_METRICS,
)


@dataclass
class LaunchRequest:
    """What a form produced: the request body, any problems that block submitting, and view options."""

    body: dict[str, Any]
    problems: list[str] = field(default_factory=list)
    gpu_gib: float | None = None


# --- small helpers --------------------------------------------------------------------------------


#: The mixed-precision choice (RunSpec.autocast), beside dtype: needs dtype fp32; the API says why not.
AUTOCAST_SELECT = {
    "label": "Autocast",
    "options": [None, "bf16", "fp16"],
    "format_func": lambda v: v or "none",
    "help": "Mixed precision: the forward under torch.autocast, weights in dtype (fp32); fp16 adds a GradScaler",
}


def number_field(
    container: Any, label: str, presets: dict[str, Any], path: tuple[str, ...], **kwargs: Any
) -> Any:
    """A whole-number input with its valid range (the ComparisonSpec schema and this server's limit)
    in its help, but no bounds of its own: a value out of range is kept as typed, so the Launch page
    refuses it in words before sending (a bounded input would silently keep its old value)."""
    limit_key = {"steps": "max_steps", "micro_batch": "max_micro_batch", "seq_len": "max_seq_len"}.get(
        path[-1]
    )
    schema = (presets.get("schemas") or {}).get("ComparisonSpec") or {}
    low, high = field_range(schema, *path, limit=presets["limits"].get(limit_key) if limit_key else None)
    words = range_words(low, high)
    help_text = kwargs.pop("help", None)
    return container.number_input(
        label,
        step=1,
        help=f"{help_text + ' ' if help_text else ''}({words})" if words else help_text,
        **kwargs,
    )


def parse_seeds(text: str, max_seeds: int = 16) -> list[int]:
    """``"0, 1 2"`` -> ``[0, 1, 2]``.

    Raises:
        ValueError: something that is not a whole number ≥ 0, a repeat, or too many seeds.
    """
    parts = [p for p in text.replace(",", " ").split() if p]
    seeds = []
    for part in parts:
        if not part.isdigit():
            raise ValueError(f"seeds must be whole numbers ≥ 0 separated by commas, got {part!r}")
        seeds.append(int(part))
    if len(set(seeds)) != len(seeds):
        raise ValueError("seeds must not repeat")
    if len(seeds) > max_seeds:
        raise ValueError(f"at most {max_seeds} seeds")
    return seeds


def method_picker(
    presets: dict[str, Any], key: str, label: str, default: list[str], container: Any = None
) -> list[str]:
    """The methods of a comparison: the server's named ones, plus any a person composes from a base
    and memory techniques (``GET /presets``' ``method_parts``), added in their canonical spelling.

    ``container`` holds the list (a column); the composer is an expander in the page below it, run
    first so that "Add" can select the composed method before the list is drawn (an invalid
    combination is shown in words, with why)."""
    container = container or st
    parts = presets.get("method_parts") or {}
    composed: list[str] = st.session_state.setdefault(f"{key}.composed", [])
    if parts:
        with st.expander("Compose a method: a base plus memory techniques"):
            c1, c2, c3 = st.columns([1, 2, 1])
            bases, techniques = parts["bases"], parts["techniques"]
            base = c1.selectbox(
                "Base",
                list(bases),
                key=f"{key}.base",
                help="; ".join(f"{n}: {p['description']}" for n, p in bases.items()),
            )
            chosen = c2.multiselect(
                "Techniques",
                list(techniques),
                key=f"{key}.techniques",
                help="; ".join(
                    f"{n}: {p['description']}" + (" (CUDA only)" if p.get("needs_cuda") else "")
                    for n, p in techniques.items()
                ),
            )
            if c3.button("Add", key=f"{key}.add"):
                try:
                    name = canonical_method(SEPARATOR.join([base, *chosen]))
                except ValueError as exc:
                    st.error(str(exc))
                else:
                    if name not in presets["methods"] and name not in composed:
                        composed.append(name)
                    current = list(st.session_state.get(key, default))
                    st.session_state[key] = [*current, name] if name not in current else current
    options = [*presets["methods"], *(m for m in composed if m not in presets["methods"])]
    kwargs = {} if key in st.session_state else {"default": [m for m in default if m in options]}
    return container.multiselect(label, options, key=key, **kwargs)


# --- preset ---------------------------------------------------------------------------------------


def preset_form(presets: dict[str, Any]) -> LaunchRequest:
    """A named comparison, optionally with its methods, seeds, steps, batch, sequence length,
    pre-training steps and evaluation size overridden. Prefilled from the preset's spec when the
    server gives it (``comparison_specs``); otherwise empty fields keep the preset's values."""
    names = list(presets["comparisons"])
    if not names:
        st.warning("This server offers no comparison presets; build a spec instead.")
        return LaunchRequest(body={}, problems=["no presets"])
    name = st.selectbox(
        "Preset",
        names,
        index=names.index("cpu-smoke") if "cpu-smoke" in names else 0,
        key="preset.name",
        format_func=lambda n: f"{n} — {presets['comparisons'][n][:70]}",
    )
    st.caption(presets["comparisons"][name])
    spec = (presets.get("comparison_specs") or {}).get(name)
    known = spec is not None
    base = (spec or {}).get("base", {})
    pretrain = (base.get("model") or {}).get("pretrain")
    if not known:
        st.caption("Empty fields keep the preset's value.")
    key = f"preset.{name}"  # each preset keeps its own field values
    c1, c2 = st.columns([2, 1])
    methods = method_picker(
        presets,
        f"{key}.methods",
        "Methods" if known else "Methods (empty: the preset's)",
        (spec or {}).get("methods", []),
        c1,
    )
    seeds_text = c2.text_input(
        "Seeds",
        value=", ".join(str(s) for s in (spec or {}).get("seeds", [])),
        key=f"{key}.seeds",
        help="Several seeds give mean ± spread per method.",
    )
    # (override, label, the preset's value, where the schema bounds it, help)
    numbers = [
        ("steps", "Steps", base.get("steps"), ("base", "steps"), None),
        ("micro_batch", "Batch", base.get("micro_batch"), ("base", "micro_batch"), None),
        ("seq_len", "Sequence length", base.get("seq_len"), ("base", "seq_len"), None),
        (
            "eval_examples",
            "Eval examples",
            (base.get("eval") or {}).get("max_examples"),
            ("base", "eval", "max_examples"),
            None,
        ),
    ]
    if pretrain is not None or not known:
        numbers.insert(
            3,
            (
                "pretrain_steps",
                "Pre-training steps",
                (pretrain or {}).get("steps"),
                ("base", "model", "pretrain", "steps"),
                "Presets that fine-tune a model pre-train it first (once; later runs reuse it).",
            ),
        )
    chosen = {}
    for column, (field_name, label, value, path, help_text) in zip(
        st.columns(len(numbers)), numbers, strict=True
    ):
        chosen[field_name] = number_field(
            column,
            label,
            presets,
            path,
            value=value,
            key=f"{key}.{field_name}",
            help=help_text,
            placeholder="preset's",
        )
    problems: list[str] = []
    overrides: dict[str, Any] = {}
    if methods and methods != (spec or {}).get("methods"):
        overrides["methods"] = methods
    if known and not methods:
        problems.append("choose at least one method")
    if seeds_text.strip():
        try:
            seeds = parse_seeds(seeds_text, max_seeds(presets))
        except ValueError as exc:
            problems.append(str(exc))
        else:
            if seeds != (spec or {}).get("seeds"):
                overrides["seeds"] = seeds
    for field_name, _, value, _, _ in numbers:
        if chosen[field_name] is None or chosen[field_name] == value:
            continue
        if field_name == "eval_examples":
            overrides["eval"] = {"max_examples": int(chosen[field_name])}
        elif field_name == "pretrain_steps":
            overrides["pretrain"] = {"steps": int(chosen[field_name])}
        else:
            overrides[field_name] = int(chosen[field_name])
    body: dict[str, Any] = {"preset": name}
    if overrides:
        body["overrides"] = overrides
    return LaunchRequest(body=body, problems=problems)


# --- build a spec ---------------------------------------------------------------------------------


def max_seeds(presets: dict[str, Any]) -> int:
    """The most seeds a comparison may have, from the server's ComparisonSpec schema."""
    seeds = presets.get("schemas", {}).get("ComparisonSpec", {}).get("properties", {}).get("seeds", {})
    return int(seeds.get("maxItems", 16))


def _model_limit(presets: dict[str, Any], model: str | None) -> int:
    limit = presets["limits"]["max_seq_len"]
    shape = presets["models"].get(model or "")
    return min(limit, shape["max_position_embeddings"]) if shape else limit


def spec_form(presets: dict[str, Any]) -> LaunchRequest:
    """A ComparisonSpec built field by field: workload, model, data, schedule, seeds, methods and
    each method's settings."""
    limits = presets["limits"]
    models, datasets = presets["models"], presets["datasets"]
    problems: list[str] = []
    c1, c2, c3 = st.columns(3)
    name = c1.text_input("Name", value="my-comparison", key="spec.name")
    workload = c2.selectbox("Workload", list(WORKLOAD_FAMILY), key="spec.workload")
    family = WORKLOAD_FAMILY[workload]
    source = c3.selectbox(
        "Model from",
        ["preset", "hub"],
        key="spec.model_source",
        format_func=lambda s: {"preset": "a built-in shape", "hub": "the Hugging Face hub"}[s],
    )
    c1, c2, c3 = st.columns(3)
    shape: str | None = None
    pretrain_steps: int | None = None
    memory_only = False
    if source == "preset":
        shape = c1.selectbox(
            "Model",
            [m for m in models if models[m].get("family", "llama") == family],
            key="spec.model",
            format_func=lambda m: f"{m} — {models[m].get('description') or ''}",
        )
        if workload == "finetune" or workload.endswith("classification"):
            start = c2.radio(
                "Fine-tune from",
                ["pretrain", "memory_only" if workload == "finetune" else "scratch"],
                key="spec.start",
                horizontal=True,
                format_func=lambda s: {
                    "pretrain": "pre-train it first",
                    "memory_only": "random weights (memory only)",
                    "scratch": "random weights (train from scratch)",
                }[s],
            )
            memory_only = start == "memory_only"
            if start == "pretrain":
                pretrain_steps = int(
                    number_field(
                        c3,
                        "Pre-training steps",
                        presets,
                        ("base", "model", "pretrain", "steps"),
                        value=60,
                        key="spec.pretrain_steps",
                    )
                )
        model: dict[str, Any] = {"source": "preset", "name": shape, "memory_only": memory_only}
    else:
        model = {
            "source": "hub",
            "name": c1.text_input("Hub model id", "huggyllama/llama-7b", key="spec.hub_id"),
        }
    c1, c2, c3 = st.columns(3)
    dataset = c1.selectbox(
        "Dataset",
        [d for d in datasets if datasets[d]["kind"] in WORKLOAD_DATA_KINDS[workload]],
        key="spec.dataset",
        format_func=lambda d: f"{d} — {datasets[d]['description'][:60]}",
    )
    metrics = list(WORKLOAD_METRICS[workload])
    default_metric = "mc_accuracy" if datasets[dataset]["kind"] == "mc" else metrics[0]
    metric = c2.selectbox("Evaluation", metrics, index=metrics.index(default_metric), key="spec.metric")
    eval_examples = number_field(
        c3, "Eval examples", presets, ("base", "eval", "max_examples"), value=24, key="spec.eval_examples"
    )
    c1, c2, c3, c4, c5, c6 = st.columns(6)
    steps = number_field(c1, "Steps", presets, ("base", "steps"), value=20, key="spec.steps")
    micro_batch = number_field(c2, "Batch", presets, ("base", "micro_batch"), value=8, key="spec.micro_batch")
    seq_limit = _model_limit(presets, shape)
    seq_len = number_field(
        c3, "Sequence length", presets, ("base", "seq_len"), value=min(128, seq_limit), key="spec.seq_len"
    )
    lr = c4.number_input("Learning rate", 1e-7, 10.0, 2e-3, format="%g", key="spec.lr")
    dtype = c5.selectbox("dtype", ["fp32", "bf16", "fp16"], key="spec.dtype")
    autocast = c5.selectbox(**AUTOCAST_SELECT, key="spec.autocast")
    device = c6.selectbox("Device", ["auto", "cpu", "cuda"], key="spec.device")
    c1, c2 = st.columns([2, 1])
    methods = method_picker(presets, "spec.methods", "Methods", list(presets["methods"]), c1)
    seeds_text = c2.text_input(
        "Seeds", "0", key="spec.seeds", help="Several seeds give mean ± spread per method."
    )
    try:
        seeds = parse_seeds(seeds_text, max_seeds(presets)) or [0]
    except ValueError as exc:
        problems.append(str(exc))
        seeds = [0]
    if not methods:
        problems.append("choose at least one method")
    if len(methods) * len(seeds) > limits["max_runs_per_comparison"]:
        problems.append(
            f"{len(methods) * len(seeds)} runs; this server allows {limits['max_runs_per_comparison']}"
        )
    method_configs = {}
    if methods:
        st.markdown("##### Method settings")
        for method, tab in zip(methods, st.tabs(methods), strict=True):
            with tab:
                method_configs[method] = method_settings(method, presets, None, f"spec.cfg.{method}")
    base: dict[str, Any] = {
        "workload": workload,
        "dataset": {"source": "builtin", "name": dataset},
        "seq_len": int(seq_len),
        "micro_batch": int(micro_batch),
        "steps": int(steps),
        "optimizer": {"lr": float(lr), "warmup_steps": max(1, int(steps) // 10)},
        "dtype": dtype,
        **({"autocast": autocast} if autocast else {}),
        "device": device,
        "eval": {"metric": metric, "max_examples": int(eval_examples)},
    }
    if pretrain_steps is not None:
        # A preset shape has random weights: pre-train it once (full training on the stdlib corpus,
        # or the family's pretext task), then every method fine-tunes that artifact.
        base_workload, base_data, base_metric = PRETRAINING[family]
        model = {
            "source": "artifact",
            "pretrain": {
                "workload": base_workload,
                "model": {"source": "preset", "name": shape},
                "dataset": {"source": "builtin", "name": base_data},
                "method": "full",
                "seq_len": int(seq_len),
                "micro_batch": int(micro_batch),
                "steps": pretrain_steps,
                "dtype": dtype,
                "device": device,
                "optimizer": {"lr": 3e-3, "warmup_steps": max(1, pretrain_steps // 10)},
                "eval": {"metric": base_metric, "max_examples": 16},
            },
        }
    base["model"] = model
    body = {"name": name, "base": base, "methods": methods, "method_configs": method_configs, "seeds": seeds}
    return LaunchRequest(body=body, problems=problems)


# --- will it fit ----------------------------------------------------------------------------------


def fit_form(presets: dict[str, Any]) -> LaunchRequest:
    """A memory-only comparison (random weights of the model's shape, two steps, no evaluation) for
    a chosen GPU memory size; Compare draws that size across the memory chart."""
    limits = presets["limits"]
    models = presets["models"]
    names = [m for m in models if models[m].get("family", "llama") == "llama"]  # memory-only: causal LMs
    c1, c2 = st.columns([2, 1])
    shape = c1.selectbox(
        "Model shape",
        names,
        index=names.index("llama-7b") if "llama-7b" in names else 0,
        key="fit.model",
        format_func=lambda m: f"{m} — {models[m].get('description') or ''}",
    )
    gpu_gib = c2.number_input(
        "GPU memory (GiB)", 0.5, 4096.0, 24.0, step=1.0, format="%g", key="fit.gpu_gib", help="Any card size"
    )
    c1, c2, c3, c4 = st.columns(4)
    seq_limit = _model_limit(presets, shape)
    seq_len = c1.number_input("Sequence length", 8, seq_limit, min(512, seq_limit), key="fit.seq_len")
    micro_batch = c2.number_input("Batch", 1, limits["max_micro_batch"], 8, key="fit.micro_batch")
    dtype = c3.selectbox("dtype", ["bf16", "fp16", "fp32"], key="fit.dtype")
    autocast = c3.selectbox(**AUTOCAST_SELECT, key="fit.autocast")
    device = c4.selectbox("Device", ["auto", "cuda", "cpu"], key="fit.device")
    methods = method_picker(presets, "fit.methods", "Methods", list(presets["methods"]))
    method_configs = {}
    with st.expander("Method settings"):
        if methods:
            for method, tab in zip(methods, st.tabs(methods), strict=True):
                with tab:
                    method_configs[method] = method_settings(method, presets, None, f"fit.cfg.{method}")
    problems = [] if methods else ["choose at least one method"]
    body = {
        "name": f"will it fit: {shape} on {gpu_gib} GiB",
        "base": {
            "workload": "finetune",
            "model": {"source": "preset", "name": shape, "memory_only": True},
            "dataset": {"source": "builtin", "name": "stdlib-corpus"},
            "seq_len": int(seq_len),
            "micro_batch": int(micro_batch),
            "steps": 2,
            "dtype": dtype,
            **({"autocast": autocast} if autocast else {}),
            "device": device,
            "save_artifact": False,
            "eval": {"metric": "none"},
        },
        "methods": methods,
        "method_configs": method_configs,
    }
    return LaunchRequest(body=body, problems=problems, gpu_gib=float(gpu_gib))
