"""Named comparisons: the offline demo, the CI smoke test and the papers' workloads.

No torch here: the backend expands presets into runs without loading it.
"""

from __future__ import annotations

import copy
import json
from typing import Any

from pydantic import ValidationError

from velora_core.contract.errors import validation_message
from velora_core.contract.method_parts import canonical_method
from velora_core.contract.presets.encoder_comparisons import ENCODER_COMPARISONS
from velora_core.contract.presets.model_shapes import MODEL_PRESETS
from velora_core.contract.spec import ComparisonSpec

ALL_METHODS = ["full", "lora", "qlora", "velora+full", "velora+lora", "velora+qlora"]
#: What the offline presets compare: the six, and the alternatives people pick first.
OFFLINE_METHODS = [*ALL_METHODS, "full+gc", "lora+gc", "galore", "lora-fa"]

#: The offline methods that update every weight with plain AdamW (GaLore's projected update has its own rate).
FULL_WEIGHT_METHODS = ("full", "full+gc", "velora+full")

# Offline fine-tuning settings shared by demo and cpu-smoke. VeLoRA's scale follows the paper's
# fine-tuning value (0.1) only where LoRA is used; velora+full trains the base weights, as in pre-training.
_LORA = {"r": 8, "alpha": 16, "dropout": 0.0}
_VELORA_FT = {"num_groups": 16, "scale": 1.0, "target_modules": ["v_proj", "down_proj"]}
_OFFLINE_METHOD_CONFIGS: dict[str, dict[str, Any]] = {
    "lora": {"lora": _LORA},
    "qlora": {"lora": _LORA, "quant": {"compute_dtype": "fp32"}},
    "velora+full": {"velora": _VELORA_FT},
    "velora+lora": {"lora": _LORA, "velora": _VELORA_FT},
    "velora+qlora": {"lora": _LORA, "quant": {"compute_dtype": "fp32"}, "velora": _VELORA_FT},
    "lora+gc": {"lora": _LORA},
    "lora-fa": {"lora": _LORA},
}


def _offline_configs(hidden: int) -> dict[str, dict]:
    # GaLore's rank is a quarter of the width, as in the paper (128 for LLaMA-60M's 512).
    return {**_OFFLINE_METHOD_CONFIGS, "galore": {"galore": {"rank": hidden // 4}}}


def _offline(
    preset: str,
    pretrain_steps: int,
    finetune_steps: int,
    seq_len: int,
    batch: int,
    questions: int,
    lr: float = 2e-3,
    full_lr: float | None = None,
) -> dict:
    hidden = MODEL_PRESETS[preset].hidden_size
    configs = _offline_configs(hidden)
    if full_lr is not None:  # the methods that update every weight take their own (lower) rate
        for method in FULL_WEIGHT_METHODS:
            configs[method] = {**configs.get(method, {}), "full": {"lr": full_lr}}
    pretrain = {
        "workload": "pretrain",
        "model": {"source": "preset", "name": preset},
        "dataset": {"source": "builtin", "name": "stdlib-corpus"},
        "method": "full",
        "seq_len": seq_len,
        "micro_batch": batch,
        "steps": pretrain_steps,
        "optimizer": {"lr": 3e-3, "warmup_steps": max(1, pretrain_steps // 10), "weight_decay": 0.0},
        "eval": {"metric": "perplexity", "max_examples": 16, "batch_size": batch},
        "progress_every": 5,
    }
    return {
        "base": {
            "workload": "finetune",
            "model": {"source": "artifact", "pretrain": pretrain},
            "dataset": {"source": "builtin", "name": "stdlib-next-line"},
            "seq_len": seq_len,
            "micro_batch": 2 * batch,  # next-line examples are short (at most ~170 bytes)
            "steps": finetune_steps,
            "optimizer": {"lr": lr, "warmup_steps": max(1, finetune_steps // 10)},
            "eval": {"metric": "mc_accuracy", "max_examples": questions, "batch_size": 32},
            "progress_every": 5,
        },
        "methods": OFFLINE_METHODS,
        "method_configs": configs,
    }


def _stdlib_pretrain(preset: str, steps: int) -> dict:
    """VeLoRA's C4 pre-training comparison (Table 4) on the offline corpus: the same model trained
    from random weights by each method, perplexity on the held-out files."""
    return {
        "base": {
            "workload": "pretrain",
            "model": {"source": "preset", "name": preset},
            "dataset": {"source": "builtin", "name": "stdlib-corpus"},
            "seq_len": 256,
            "micro_batch": 8,
            "steps": steps,
            "optimizer": {"lr": 3e-3, "warmup_steps": steps // 10, "weight_decay": 0.0},
            "eval": {"metric": "perplexity", "max_examples": 128, "batch_size": 16},
            "save_artifact": False,
            "progress_every": 5,
        },
        # VeLoRA Table 4's baselines: full, LoRA and GaLore.
        "methods": ["full", "velora+full", "lora", "galore"],
        "method_configs": {
            "velora+full": {"velora": _VELORA_FT},  # scale 1.0: the paper's pre-training value
            # GaLore and ReLoRA pre-train LoRA with r = hidden / 4 (60M: 128 of 512).
            "lora": {"lora": {"r": 64, "alpha": 32, "dropout": 0.0}},
            # GaLore's C4 settings with the same rank (hidden / 4), its projection refreshed 4 times.
            "galore": {
                "galore": {"rank": 64, "update_proj_gap": max(1, steps // 4), "scale": 0.25, "lr": 0.01}
            },
        },
    }


#: GaLore on C4 (GaLore Table 2, as VeLoRA Table 4 copies it): rank 128 (60M) or 256 (130M),
#: projection recomputed every 200 steps, scale 0.25, learning rate 0.01.
def _galore_c4(rank: int) -> dict:
    return {"galore": {"rank": rank, "update_proj_gap": 200, "scale": 0.25, "lr": 0.01}}


def _c4(preset: str, lr: float, groups: int, steps: int, galore_rank: int) -> dict:
    return {
        "base": {
            "workload": "pretrain",
            "model": {"source": "preset", "name": preset},
            "dataset": {"source": "builtin", "name": "c4"},
            "seq_len": 256,
            "micro_batch": 128,
            "grad_accum": 1,
            "steps": steps,
            "dtype": "bf16",
            "optimizer": {"lr": lr, "warmup_steps": steps // 10, "min_lr_ratio": 0.1},
            "eval": {"metric": "perplexity", "max_examples": 1000, "batch_size": 64},
            "progress_every": 20,
        },
        "methods": ["full", "lora", "velora+full", "galore"],
        "method_configs": {
            "lora": {"lora": {"r": 128, "alpha": 32}},
            "velora+full": {"velora": {"num_groups": groups, "scale": 1.0}},
            "galore": _galore_c4(galore_rank),
        },
    }


_TABLE7_METHODS = ["full", "full+gc", "velora+full"]


def _table7_c4(preset: str, groups: int) -> dict:
    """VeLoRA Table 7, 60M/130M: C4 pre-training at batch 1, speed and memory of full training,
    gradient checkpointing and VeLoRA."""
    spec = _c4(preset, lr=1e-3, groups=groups, steps=200, galore_rank=128)
    spec["base"] = {**spec["base"], "micro_batch": 1, "eval": {"metric": "none"}, "save_artifact": False}
    spec["methods"] = _TABLE7_METHODS
    spec["method_configs"] = {"velora+full": spec["method_configs"]["velora+full"]}
    return spec


def _table7_memory(preset: str, groups: int) -> dict:
    """VeLoRA Table 7, 7B/13B: the model's shape with random weights at batch 1 (memory only)."""
    return {
        "base": {
            "workload": "finetune",
            "model": {"source": "preset", "name": preset, "memory_only": True},
            "dataset": {"source": "builtin", "name": "stdlib-corpus"},
            "seq_len": 512,
            "micro_batch": 1,
            "steps": 2,
            "dtype": "bf16",
            "save_artifact": False,
            "eval": {"metric": "none"},
        },
        "methods": _TABLE7_METHODS,
        "method_configs": {"velora+full": {"velora": {"num_groups": groups, "scale": 1.0}}},
    }


#: GaLore's C4 pre-training trains in pure bf16; the C4 presets follow it.
_GALORE_PRECISION = "precision: pure bf16, as GaLore's C4 runs"

_PAPER_LORA = {"r": 32, "alpha": 16, "dropout": 0.1}
_PAPER_VELORA = {"num_groups": 32, "scale": 0.1, "init": "batch_average_once"}

PRESETS: dict[str, tuple[str, dict[str, Any]]] = {
    "cpu-smoke": (
        "Offline, seconds per method: a tiny LLaMA pre-trained on the stdlib corpus, then fine-tuned "
        "with ten methods (the six, full+gc, lora+gc, galore, lora-fa) on stdlib-next-line, which line "
        "comes next in held-out code (CI)",
        _offline("tiny", pretrain_steps=60, finetune_steps=20, seq_len=128, batch=8, questions=100),
    ),
    "demo": (
        "Offline, under 10 minutes on 2 CPU cores: a small LLaMA pre-trained on the stdlib corpus, "
        "then fine-tuned with ten methods (the six, full+gc, lora+gc, galore, lora-fa) on "
        "stdlib-next-line: which of four lines comes next in held-out code, 800 items, accuracy with "
        "its 95 % interval; the full-weight methods at a tenth of the adapters' learning rate (1e-4 vs 1e-3)",
        # 20 fine-tuning steps keep the ten methods under 10 minutes. The adapters and GaLore train at
        # 1e-3; full, full+gc and velora+full at a tenth of it (full.lr 1e-4), as practitioners give full
        # fine-tuning (peft's method_comparison: 1e-5 full against 1e-4 LoRA): at the adapters' rate
        # full fine-tuning first undoes some of the base's accuracy, and the table compared rates.
        _offline(
            "small",
            pretrain_steps=200,
            finetune_steps=20,
            seq_len=256,
            batch=8,
            questions=800,
            lr=1e-3,
            full_lr=1e-4,
        ),
    ),
    "demo-pretrain": (
        "Offline, a few minutes per method on 2 CPU cores: VeLoRA Table 4's comparison in miniature, a small "
        "LLaMA pre-trained from scratch on the stdlib corpus by full, VeLoRA, LoRA and GaLore, "
        "validation perplexity",
        _stdlib_pretrain("small", steps=200),
    ),
    "c4-60m": (
        "VeLoRA Table 4: LLaMA-60M pre-trained on C4 (needs the hub and a GPU); full, LoRA, VeLoRA, GaLore; "
        f"{_GALORE_PRECISION}",
        _c4("llama-60m", lr=1e-3, groups=64, steps=10_000, galore_rank=128),
    ),
    "c4-130m": (
        "VeLoRA Table 4: LLaMA-130M pre-trained on C4 (needs the hub and a GPU); full, LoRA, VeLoRA, GaLore; "
        f"{_GALORE_PRECISION}",
        _c4("llama-130m", lr=1e-3, groups=64, steps=20_000, galore_rank=256),
    ),
    "table7-60m": (
        "VeLoRA Table 7: speed and memory of full, gradient checkpointing and VeLoRA at batch 1, "
        f"LLaMA-60M on C4 (needs the hub and a GPU); {_GALORE_PRECISION}",
        _table7_c4("llama-60m", groups=64),
    ),
    "table7-130m": (
        "VeLoRA Table 7: speed and memory of full, gradient checkpointing and VeLoRA at batch 1, "
        f"LLaMA-130M on C4 (needs the hub and a GPU); {_GALORE_PRECISION}",
        _table7_c4("llama-130m", groups=64),
    ),
    "table7-7b": (
        "VeLoRA Table 7, memory only: LLaMA-7B's shape with random weights at 1x512 tokens, bf16; "
        "full, gradient checkpointing, VeLoRA (GPU)",
        _table7_memory("llama-7b", groups=32),
    ),
    "table7-13b": (
        "VeLoRA Table 7, memory only: LLaMA-13B's shape with random weights at 1x512 tokens, bf16; "
        "full, gradient checkpointing, VeLoRA (GPU)",
        _table7_memory("llama-13b", groups=32),
    ),
    "alpaca-7b": (
        "VeLoRA Table 3: LLaMA-7B fine-tuned on Alpaca, 5-shot MMLU (needs the hub and a GPU). Precision: "
        "the paper trained with fp16 AMP; this preset keeps pure bf16 weights (its spec, and the hashes "
        "of its results, as before); set dtype='fp32' and autocast='fp16' for the source's setting (the "
        "frozen 7B base then holds 25 GiB in fp32 plus fp16 copies of it for backward)",
        {
            "base": {
                "workload": "finetune",
                "model": {"source": "hub", "name": "huggyllama/llama-7b"},
                "dataset": {"source": "builtin", "name": "alpaca"},
                "seq_len": 512,
                "micro_batch": 16,
                "epochs": 4,
                "steps": None,
                "dtype": "bf16",
                "optimizer": {"lr": 4e-4, "warmup_steps": 100},
                # 5-shot MMLU by lm-evaluation-harness, the protocol of QLoRA's and VeLoRA's numbers:
                # every one of the 14,042 test questions; the result gives the mean over questions and
                # over the 57 subjects (the papers' number).
                "eval": {"harness_tasks": ["mmlu"], "num_fewshot": 5, "batch_size": 8},
                "progress_every": 10,
            },
            "methods": ["lora", "qlora", "velora+lora", "velora+qlora"],
            "method_configs": {
                "lora": {"lora": _PAPER_LORA},
                "qlora": {"lora": _PAPER_LORA},
                "velora+lora": {"lora": _PAPER_LORA, "velora": _PAPER_VELORA},
                "velora+qlora": {"lora": _PAPER_LORA, "velora": _PAPER_VELORA},
            },
        },
    ),
    "memory-7b": (
        "Memory only: LLaMA-7B's shape with random weights, all six methods, 8x512 tokens, bf16 (no download)",
        {
            "base": {
                "workload": "finetune",
                "model": {"source": "preset", "name": "llama-7b", "memory_only": True},
                "dataset": {"source": "builtin", "name": "stdlib-corpus"},
                "seq_len": 512,
                "micro_batch": 8,
                "steps": 2,
                "dtype": "bf16",
                "save_artifact": False,
                "eval": {"metric": "none"},
            },
            "methods": ALL_METHODS,
            "method_configs": {
                "lora": {"lora": _PAPER_LORA},
                "qlora": {"lora": _PAPER_LORA},
                "velora+full": {"velora": {"num_groups": 32, "scale": 1.0}},
                "velora+lora": {"lora": _PAPER_LORA, "velora": _PAPER_VELORA},
                "velora+qlora": {"lora": _PAPER_LORA, "velora": _PAPER_VELORA},
            },
        },
    ),
    **ENCODER_COMPARISONS,  # ViT and RoBERTa (VeLoRA Tables 1 and 2) and their offline miniatures
}

#: Preset name -> description.
COMPARISON_PRESETS: dict[str, str] = {name: description for name, (description, _) in PRESETS.items()}


def deep_merge(base: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """``base`` with ``overrides`` merged in: nested dicts merge, anything else replaces."""
    out = copy.deepcopy(base)
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def _require_mapping(value: Any, field: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ValueError(
            f'{field} must be an object of field values (e.g. {{"steps": 5}}), got {type(value).__name__}'
        )
    return value


def _spelled(method: Any) -> Any:
    """``method`` in its canonical spelling where it is a valid name (else as given: the spec says why)."""
    try:
        return canonical_method(method)
    except (TypeError, ValueError):
        return method


def comparison_preset(
    name: str, overrides: dict[str, Any] | None = None, *, strict: bool = False
) -> ComparisonSpec:
    """The preset's :class:`ComparisonSpec`, with ``overrides`` merged in.

    ``overrides`` has the shape of a ComparisonSpec (``{"methods": [...], "seeds": [...],
    "base": {"steps": 5}}``); as a shorthand, keys that are not ComparisonSpec fields apply to
    ``base`` (``{"steps": 5}``), and ``"pretrain"`` applies to ``base.model.pretrain``.

    Raises:
        KeyError: unknown preset (the message lists the names).
        ValueError: overrides of the wrong shape, or that make an invalid spec (the message names
            the field, as ``overrides.<field>``).
    """
    if name not in PRESETS:
        raise KeyError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}")
    data = copy.deepcopy(PRESETS[name][1])
    data.setdefault("name", name)
    overrides = dict(_require_mapping(overrides or {}, "overrides"))
    top = {k: overrides.pop(k) for k in list(overrides) if k in ComparisonSpec.model_fields}
    pretrain = overrides.pop("pretrain", None)
    if pretrain is not None:
        _require_mapping(pretrain, "overrides.pretrain")
        if data["base"]["model"].get("pretrain") is None:
            raise ValueError(f"preset {name!r} has no pre-training stage to override (overrides.pretrain)")
        data["base"]["model"]["pretrain"] = deep_merge(data["base"]["model"]["pretrain"], pretrain)
    data["base"] = deep_merge(data["base"], overrides)
    data = deep_merge(data, {k: v for k, v in top.items() if k != "base"})
    if "base" in top:
        data["base"] = deep_merge(data["base"], _require_mapping(top["base"], "overrides.base"))
    if "methods" in top and "method_configs" not in top and isinstance(data["methods"], list):
        chosen = [_spelled(m) for m in data["methods"]]  # the preset's settings follow any spelling
        data["method_configs"] = {m: c for m, c in data.get("method_configs", {}).items() if m in chosen}
    try:
        if strict:
            return ComparisonSpec.model_validate_json(json.dumps(data), strict=True)
        return ComparisonSpec.model_validate(data)
    except ValidationError as exc:
        problems = validation_message(exc, prefix="overrides.", whole=None)
        raise ValueError(f"preset {name!r} with these overrides is invalid: {problems}") from None
