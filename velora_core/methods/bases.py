"""The bases a method is built on, one apply step each: each builds the model ready to train from a
:class:`ModelSource` and the method's validated settings. Registered by reference in
``velora_core.contract.method_parts.BASES`` (``apply``), with the optimizer each trains with."""

from __future__ import annotations

from peft import LoraConfig, get_peft_model
from torch import nn

from velora_core.contract.method_configs import LoRASettings, target_matches
from velora_core.contract.method_settings import ComposedSettings
from velora_core.contract.workload_registry import WORKLOADS
from velora_core.methods.prepared import PreparedModel, trainable
from velora_core.models.loading import ModelSource, load_causal_lm


def _with_lora(model: nn.Module, lora: LoRASettings, workload: str) -> nn.Module:
    # A fine-tune's new head (a classifier) trains in full beside the adapters (peft's modules_to_save).
    entry = WORKLOADS[workload]
    config = LoraConfig(
        r=lora.r,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules=list(lora.target_modules),
        task_type=entry.peft_task_type,
        **({"modules_to_save": [entry.new_head]} if entry.new_head else {}),
    )
    # peft freezes the base model and leaves only the adapters trainable.
    return get_peft_model(model, config)


def prepare_full(source: ModelSource, settings: ComposedSettings) -> PreparedModel:
    """Every weight trains, at the method's own ``full.lr`` if it sets one."""
    model = load_causal_lm(source)
    model.requires_grad_(True)
    full = getattr(settings, "full", None)  # GaLore builds on this and has no ``full`` section
    return PreparedModel(model, trainable(model), lr=full.lr if full is not None else None)


def prepare_lora(source: ModelSource, settings: ComposedSettings) -> PreparedModel:
    """peft's LoRA adapters on the frozen model."""
    model = _with_lora(load_causal_lm(source), settings.lora, source.workload)
    return PreparedModel(model, trainable(model), lora=settings.lora, lr=settings.lora.lr)


def prepare_qlora(source: ModelSource, settings: ComposedSettings) -> PreparedModel:
    """LoRA on the model loaded with 4-bit weights (bitsandbytes, through transformers)."""
    # No peft.prepare_model_for_kbit_training: it upcasts every non-quantised weight to fp32, which
    # would make QLoRA's embeddings and head twice LoRA's and blur the comparison.
    model = _with_lora(load_causal_lm(source, settings.quant), settings.lora, source.workload)
    return PreparedModel(model, trainable(model), lora=settings.lora, lr=settings.lora.lr)


def prepare_galore(source: ModelSource, settings: ComposedSettings) -> PreparedModel:
    """Full training; the 2-D weights of the targeted linear layers get GaLore's projected state."""
    prepared = prepare_full(source, settings)
    galore = settings.galore
    prepared.galore_parameters = [
        module.weight
        for name, module in prepared.model.named_modules()
        if isinstance(module, nn.Linear) and name and target_matches(name, galore.target_modules)
    ]
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
    prepared.trainable_parameters = trainable(prepared.model)
    return prepared
