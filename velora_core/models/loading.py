"""Loading a model: from a directory or hub id, or random weights from a config (a built-in shape's:
``preset_configs``), with the Auto class of its workload's registry entry (a causal LM, a ViT, a RoBERTa).

4-bit loading goes through transformers' ``BitsAndBytesConfig``; a random-weight model that must be
quantised is first written to a temporary directory with ``save_pretrained`` and loaded back, so
that every 4-bit model is made by the same library path.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, field, replace
from typing import Any

import torch
import transformers
from torch import nn
from transformers import BitsAndBytesConfig, PretrainedConfig

from velora_core.contract.method_configs import QuantSettings
from velora_core.contract.workload_registry import WORKLOADS
from velora_core.models.heads import RobertaMeanPoolForSequenceClassification

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass(frozen=True)
class ModelSource:
    """Where weights come from: ``path`` (a directory or hub id) or ``config`` (random weights).

    Attributes:
        path: directory written by ``save_pretrained``, or a hub id.
        config: a transformers config; the model gets random weights (the engine seeds first).
        revision: hub revision for ``path``.
        dtype: dtype of the weights that are not quantised.
        device: ``cpu``, ``cuda`` or ``cuda:N``.
        workload: the run's workload; its registry entry picks the transformers Auto class.
        head: ``from_pretrained`` arguments of a classification head (``num_labels``, ``id2label``…).
        pooling: what a sequence-classification head reads (``model.pooling``: ``cls``, transformers'
            own head, or ``mean``, ``velora_core.models.heads``).
    """

    path: str | None = None
    config: PretrainedConfig | None = None
    revision: str | None = None
    dtype: torch.dtype = torch.float32
    device: str = "cpu"
    workload: str = "finetune"
    head: dict[str, Any] = field(default_factory=dict)
    pooling: str = "cls"

    def __post_init__(self) -> None:
        if (self.path is None) == (self.config is None):
            raise ValueError("ModelSource needs exactly one of path and config")


def bnb_config(quant: QuantSettings, skip: list[str] | None = None) -> BitsAndBytesConfig:
    """transformers' 4-bit config for the settings (NF4/FP4, double quantisation, compute dtype);
    ``skip`` names modules kept unquantised (a classification head, which trains)."""
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type=quant.quant_type,
        bnb_4bit_use_double_quant=quant.double_quant,
        bnb_4bit_compute_dtype=DTYPES[quant.compute_dtype],
        **({"llm_int8_skip_modules": skip} if skip else {}),
    )


def auto_class(source: ModelSource) -> Any:
    """The transformers Auto class of the source's workload (``AutoModelForCausalLM`` …), or the
    mean-pooling RoBERTa classifier of ``velora_core.models.heads`` (same ``from_config``/``from_pretrained``)."""
    if source.pooling == "mean":
        return RobertaMeanPoolForSequenceClassification
    return getattr(transformers, WORKLOADS[source.workload].auto_class)


def load_causal_lm(source: ModelSource, quant: QuantSettings | None = None) -> nn.Module:
    """Load the model, quantised to 4 bits when ``quant`` is given. ``trust_remote_code`` stays off.

    Raises:
        OSError / ValueError: from transformers when the path or hub id cannot be loaded.
    """
    if source.device == "meta":
        return _skeleton(source, quant)
    if source.config is not None and quant is None:
        # Built on the target device directly: a 7B shape in bf16 never passes through host memory.
        with torch.device(source.device):
            return auto_class(source).from_config(source.config, dtype=source.dtype)
    if source.config is not None:
        # Quantise random weights through the same from_pretrained path as real checkpoints.
        with tempfile.TemporaryDirectory(prefix="velora-random-") as tmp:
            auto_class(source).from_config(source.config, dtype=source.dtype).save_pretrained(tmp)
            saved = replace(source, path=tmp, config=None, revision=None, head={})
            return load_causal_lm(saved, quant)
    kwargs = {"dtype": source.dtype, "trust_remote_code": False, "revision": source.revision, **source.head}
    if quant is not None:
        head = WORKLOADS[source.workload].new_head  # a new head trains: it stays unquantised
        kwargs["quantization_config"] = bnb_config(quant, [head] if head else None)
        kwargs["device_map"] = {"": source.device}
        return _keep_cpu_4bit_format(auto_class(source).from_pretrained(source.path, **kwargs))
    return auto_class(source).from_pretrained(source.path, **kwargs).to(source.device)


def _skeleton(source: ModelSource, quant: QuantSettings | None) -> nn.Module:
    """The model on the ``meta`` device, without weights (``velora_core.bench.fit_prediction`` gives it fake tensors);
    4-bit layers laid out by transformers' own bitsandbytes quantizer, as ``from_pretrained`` does
    before it loads weights.

    Raises:
        ValueError: ``source`` names a path (a skeleton is built from a config).
    """
    if source.config is None:
        raise ValueError("a meta-device model is built from a config, not from a path")
    with torch.device("meta"):
        model = auto_class(source).from_config(source.config, dtype=source.dtype)
    if quant is not None:
        from transformers.quantizers.auto import AutoHfQuantizer

        quantizer = AutoHfQuantizer.from_config(bnb_config(quant), pre_quantized=False)
        quantizer.preprocess_model(model, device_map={"": "cpu"}, dtype=source.dtype)
        quantizer.postprocess_model(model)
        _keep_cpu_4bit_format(model)
    return model


def _keep_cpu_4bit_format(model: nn.Module) -> nn.Module:
    """Turn off bitsandbytes' CPU inference repacking of 4-bit weights.

    In evaluation mode on an AVX512-BF16 CPU, bitsandbytes 0.50 rewrites each 4-bit weight into a
    CPU-specific layout the first time it runs; that rewrite assumes ``in_features`` is a multiple
    of the block size (64) and fails otherwise (LLaMA-60M's 1376, say), and it changes the stored
    bytes this project accounts for. The standard dequantising path is used instead.
    """
    for module in model.modules():
        if hasattr(module, "support_avx512bf16_for_cpu"):
            module.support_avx512bf16_for_cpu = False
    return model
