"""The six training methods, registered once by name (as peft registers its methods: one config, one
apply function, one registry entry). ``METHODS`` is the only place that maps a method name to code.

Each method takes a :class:`~velora_core.models.ModelSource` and its typed settings and returns the
model ready to train with its trainable parameters. LoRA and QLoRA come from peft and
bitsandbytes; VeLoRA is applied on top by :func:`velora_core.layer.apply_velora`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from velora_core.contract.method_configs import (
    METHOD_CONFIGS,
    FullSettings,
    LoRAMethodSettings,
    MethodSettings,
    QLoRAMethodSettings,
    VeLoRAFullSettings,
    VeLoRALoRASettings,
    VeLoRAQLoRASettings,
    method_config_for,
)
from velora_core.layer import apply_velora
from velora_core.models import ModelSource, load_causal_lm


@dataclass
class PreparedModel:
    """A model ready to train: its trainable parameters and the layers VeLoRA wraps."""

    model: nn.Module
    trainable_parameters: list[nn.Parameter]
    velora_layers: list[str] = field(default_factory=list)


def _trainable(model: nn.Module) -> list[nn.Parameter]:
    return [p for p in model.parameters() if p.requires_grad]


def _with_lora(model: nn.Module, settings: LoRAMethodSettings, workload: str = "finetune") -> nn.Module:
    from peft import LoraConfig, get_peft_model

    # A classification head is new, so it trains in full beside the adapters (peft's modules_to_save).
    task = {"modules_to_save": ["classifier"]} if workload.endswith("classification") else {}
    config = LoraConfig(
        r=settings.lora.r,
        lora_alpha=settings.lora.alpha,
        lora_dropout=settings.lora.dropout,
        target_modules=list(settings.lora.target_modules),
        task_type="CAUSAL_LM" if workload in ("pretrain", "finetune") else None,
        **task,
    )
    # peft freezes the base model and leaves only the adapters trainable.
    return get_peft_model(model, config)


def prepare_full(source: ModelSource, settings: FullSettings) -> PreparedModel:
    model = load_causal_lm(source)
    model.requires_grad_(True)
    return PreparedModel(model, _trainable(model))


def prepare_lora(source: ModelSource, settings: LoRAMethodSettings) -> PreparedModel:
    model = _with_lora(load_causal_lm(source), settings, source.workload)
    return PreparedModel(model, _trainable(model))


def prepare_qlora(source: ModelSource, settings: QLoRAMethodSettings) -> PreparedModel:
    # No peft.prepare_model_for_kbit_training: it upcasts every non-quantised weight to fp32, which
    # would make QLoRA's embeddings and head twice LoRA's and blur the comparison.
    model = _with_lora(load_causal_lm(source, settings.quant), settings, source.workload)
    return PreparedModel(model, _trainable(model))


def prepare_velora_full(source: ModelSource, settings: VeLoRAFullSettings) -> PreparedModel:
    prepared = prepare_full(source, FullSettings())
    prepared.velora_layers = apply_velora(prepared.model, settings.velora)
    return prepared


def prepare_velora_lora(source: ModelSource, settings: VeLoRALoRASettings) -> PreparedModel:
    prepared = prepare_lora(source, settings)
    prepared.velora_layers = apply_velora(prepared.model, settings.velora)
    return prepared


def prepare_velora_qlora(source: ModelSource, settings: VeLoRAQLoRASettings) -> PreparedModel:
    # peft refuses LoraConfig(velora_config=...) on a 4-bit base; wrapping lora_A ourselves works.
    prepared = prepare_qlora(source, settings)
    prepared.velora_layers = apply_velora(prepared.model, settings.velora)
    return prepared


@dataclass(frozen=True)
class Method:
    name: str
    settings: type[MethodSettings]
    prepare: Callable[[ModelSource, Any], PreparedModel]
    description: str


METHODS: dict[str, Method] = {
    m.name: m
    for m in (
        Method("full", FullSettings, prepare_full, "Full fine-tuning: every weight trains"),
        Method("lora", LoRAMethodSettings, prepare_lora, "LoRA adapters (peft), frozen base"),
        Method("qlora", QLoRAMethodSettings, prepare_qlora, "LoRA on a 4-bit NF4 base (bitsandbytes)"),
        Method(
            "velora+full", VeLoRAFullSettings, prepare_velora_full, "Full training, VeLoRA-compressed inputs"
        ),
        Method("velora+lora", VeLoRALoRASettings, prepare_velora_lora, "LoRA with VeLoRA on lora_A's input"),
        Method(
            "velora+qlora",
            VeLoRAQLoRASettings,
            prepare_velora_qlora,
            "QLoRA with VeLoRA on lora_A's input",
        ),
    )
}
assert set(METHODS) == set(METHOD_CONFIGS)


def prepare_model(
    method: str, source: ModelSource, settings: dict[str, Any] | MethodSettings | None = None
) -> PreparedModel:
    """Build the model for ``method`` from ``source`` with validated ``settings``.

    Raises:
        ValueError: unknown method or invalid settings (the message names the field).
    """
    parsed = method_config_for(method, settings)
    return METHODS[method].prepare(source, parsed)
