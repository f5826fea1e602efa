"""The code of each method part, registered once by name, and their composition.

A method is a base plus memory techniques (``velora_core.contract.method_parts`` parses and checks
the name and its settings without torch). :data:`BASE_STEPS` maps each base to the function that
builds the model ready to train; :data:`TECHNIQUE_STEPS` maps each technique to the function that
changes the prepared model (or how it is optimised) in place. The techniques apply in canonical
order (``velora``, ``gc``, ``8bit``, ``offload``), after the base. Every part uses the library made
for it: peft (LoRA, LoRA-FA's optimizer), bitsandbytes (4-bit weights, 8-bit AdamW), galore-torch,
transformers' gradient checkpointing, ``torch.autograd.graph.save_on_cpu``; only the composition is
written here.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from velora_core.contract.method_configs import LoRASettings, target_matches
from velora_core.contract.method_parts import (
    BASES,
    TECHNIQUES,
    ComposedSettings,
    Composition,
    method_config_for,
    parse_method,
)
from velora_core.models.loading import ModelSource, load_causal_lm
from velora_core.velora.layer import apply_velora


@dataclass
class PreparedModel:
    """A model ready to train: its trainable parameters, the layers VeLoRA wraps, and how it is
    optimised and run.

    ``optimizer``: which optimizer :func:`velora_core.methods.optimizers.build_optimizer` builds (``adamw``,
    ``adamw8bit``, ``galore``, ``galore8bit``, ``lorafa``); ``galore_parameters``: the weights GaLore
    projects, with ``galore`` their settings; ``lr``: a learning rate the method imposes (GaLore's),
    None for the run's; ``saved_tensors_hooks``: makes the context every training forward runs in
    (offloading), None for none; ``checkpointed``: gradient checkpointing is on.
    """

    model: nn.Module
    trainable_parameters: list[nn.Parameter]
    velora_layers: list[str] = field(default_factory=list)
    optimizer: str = "adamw"
    galore_parameters: list[nn.Parameter] = field(default_factory=list)
    galore: Any = None
    adam8bit: Any = None
    lora: LoRASettings | None = None
    lr: float | None = None
    saved_tensors_hooks: Callable[[], torch.autograd.graph.saved_tensors_hooks] | None = None
    checkpointed: bool = False


def _trainable(model: nn.Module) -> list[nn.Parameter]:
    return [p for p in model.parameters() if p.requires_grad]


def _with_lora(model: nn.Module, lora: LoRASettings, workload: str = "finetune") -> nn.Module:
    from peft import LoraConfig, get_peft_model

    # A classification head is new, so it trains in full beside the adapters (peft's modules_to_save).
    task = {"modules_to_save": ["classifier"]} if workload.endswith("classification") else {}
    config = LoraConfig(
        r=lora.r,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules=list(lora.target_modules),
        task_type="CAUSAL_LM" if workload in ("pretrain", "finetune") else None,
        **task,
    )
    # peft freezes the base model and leaves only the adapters trainable.
    return get_peft_model(model, config)


# --- bases ----------------------------------------------------------------------------------------


def prepare_full(source: ModelSource, settings: ComposedSettings) -> PreparedModel:
    model = load_causal_lm(source)
    model.requires_grad_(True)
    full = getattr(settings, "full", None)  # GaLore builds on this and has no ``full`` section
    return PreparedModel(model, _trainable(model), lr=full.lr if full is not None else None)


def prepare_lora(source: ModelSource, settings: ComposedSettings) -> PreparedModel:
    model = _with_lora(load_causal_lm(source), settings.lora, source.workload)
    return PreparedModel(model, _trainable(model), lora=settings.lora, lr=settings.lora.lr)


def prepare_qlora(source: ModelSource, settings: ComposedSettings) -> PreparedModel:
    # No peft.prepare_model_for_kbit_training: it upcasts every non-quantised weight to fp32, which
    # would make QLoRA's embeddings and head twice LoRA's and blur the comparison.
    model = _with_lora(load_causal_lm(source, settings.quant), settings.lora, source.workload)
    return PreparedModel(model, _trainable(model), lora=settings.lora, lr=settings.lora.lr)


def prepare_galore(source: ModelSource, settings: ComposedSettings) -> PreparedModel:
    """Full training; the 2-D weights of the targeted linear layers get GaLore's projected state."""
    prepared = prepare_full(source, settings)
    galore = settings.galore
    projected = [
        module.weight
        for name, module in prepared.model.named_modules()
        if isinstance(module, nn.Linear) and name and target_matches(name, galore.target_modules)
    ]
    prepared.optimizer = "galore"
    prepared.galore_parameters = projected
    prepared.galore = galore
    prepared.lr = galore.lr
    return prepared


def prepare_lora_fa(source: ModelSource, settings: ComposedSettings) -> PreparedModel:
    """LoRA with every ``lora_A`` frozen (LoRA-FA, Zhang et al., 2023); peft's LoRA-FA optimizer
    (``peft.optimizers.create_lorafa_optimizer``) updates ``lora_B`` with the projected gradient."""
    prepared = prepare_lora(source, settings)
    for name, param in prepared.model.named_parameters():
        if "lora_A" in name:
            param.requires_grad_(False)  # as create_lorafa_optimizer does; here before memory is counted
    prepared.trainable_parameters = _trainable(prepared.model)
    prepared.optimizer = "lorafa"
    return prepared


# --- techniques -----------------------------------------------------------------------------------


def apply_velora_technique(prepared: PreparedModel, settings: ComposedSettings, comp: Composition) -> None:
    # With QLoRA, peft refuses LoraConfig(velora_config=...) on a 4-bit base; wrapping lora_A ourselves works.
    # The wrapper keeps the layer (and its weight) as ``base_layer``: GaLore's parameter list still holds it.
    prepared.velora_layers = apply_velora(prepared.model, settings.velora)


def apply_gradient_checkpointing(
    prepared: PreparedModel, settings: ComposedSettings, comp: Composition
) -> None:
    """transformers' checkpointing of every decoder layer, non-reentrant (it works with frozen
    inputs and keeps autograd's saved-tensor hooks); with peft, the embedding output requires grad
    as peft's recipe asks (``enable_input_require_grads``)."""
    model = prepared.model
    if not getattr(model, "supports_gradient_checkpointing", True):
        raise ValueError(f"{type(model).__name__} does not support gradient checkpointing")
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if comp.base in ("lora", "qlora", "lora-fa"):
        model.enable_input_require_grads()
    prepared.checkpointed = True


def apply_8bit(prepared: PreparedModel, settings: ComposedSettings, comp: Composition) -> None:
    prepared.adam8bit = settings.adam8bit
    prepared.optimizer = {"adamw": "adamw8bit", "galore": "galore8bit"}[prepared.optimizer]


def apply_offload(prepared: PreparedModel, settings: ComposedSettings, comp: Composition) -> None:
    device = next(prepared.model.parameters()).device
    if device.type != "cuda":
        raise ValueError(
            f"'offload' needs a CUDA device, not {device.type!r}: {TECHNIQUES['offload'].needs_cuda}"
        )
    pin = settings.offload.pin_memory
    prepared.saved_tensors_hooks = lambda: torch.autograd.graph.save_on_cpu(pin_memory=pin)


@dataclass(frozen=True)
class BaseStep:
    name: str
    prepare: Callable[[ModelSource, ComposedSettings], PreparedModel]


@dataclass(frozen=True)
class TechniqueStep:
    name: str
    apply: Callable[[PreparedModel, ComposedSettings, Composition], None]


BASE_STEPS: dict[str, BaseStep] = {
    s.name: s
    for s in (
        BaseStep("full", prepare_full),
        BaseStep("lora", prepare_lora),
        BaseStep("qlora", prepare_qlora),
        BaseStep("galore", prepare_galore),
        BaseStep("lora-fa", prepare_lora_fa),
    )
}
TECHNIQUE_STEPS: dict[str, TechniqueStep] = {
    s.name: s
    for s in (
        TechniqueStep("velora", apply_velora_technique),
        TechniqueStep("gc", apply_gradient_checkpointing),
        TechniqueStep("8bit", apply_8bit),
        TechniqueStep("offload", apply_offload),
    )
}
assert set(BASE_STEPS) == set(BASES) and set(TECHNIQUE_STEPS) == set(TECHNIQUES)


def prepare_model(
    method: str, source: ModelSource, settings: dict[str, Any] | ComposedSettings | None = None
) -> PreparedModel:
    """Build the model for ``method`` (any spelling) from ``source`` with validated ``settings``.

    Raises:
        ValueError: an invalid method or settings (the message names the field), or a technique this
            device cannot run.
    """
    comp = parse_method(method)
    parsed = method_config_for(comp.name, settings)
    prepared = BASE_STEPS[comp.base].prepare(source, parsed)
    for technique in comp.techniques:  # canonical order
        TECHNIQUE_STEPS[technique].apply(prepared, parsed, comp)
    return prepared
