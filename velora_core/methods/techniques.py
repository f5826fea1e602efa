"""The memory techniques a method adds to its base, one apply step each: each changes the prepared
model (or how it is optimised) in place, in canonical order after the base. Registered by reference
in ``velora_core.contract.method_parts.TECHNIQUES`` (``apply``)."""

from __future__ import annotations

import torch

from velora_core.contract.method_parts import LORA_BASES, TECHNIQUES, Composition
from velora_core.contract.method_settings import ComposedSettings
from velora_core.methods.optimizers import OPTIMIZERS
from velora_core.methods.prepared import PreparedModel
from velora_core.velora.layer import apply_velora


def apply_velora_technique(prepared: PreparedModel, settings: ComposedSettings, comp: Composition) -> None:
    """Wrap the targeted linear layers so that each keeps its input as sub-token projections."""
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
    if comp.base in LORA_BASES:
        model.enable_input_require_grads()
    prepared.checkpointed = True


def apply_8bit(prepared: PreparedModel, settings: ComposedSettings, comp: Composition) -> None:
    """The base's optimizer with 8-bit state (its registry entry's ``eight_bit`` kind)."""
    eight_bit = OPTIMIZERS[prepared.optimizer].eight_bit
    if eight_bit is None:
        raise ValueError(f"method {comp.name!r}: optimizer {prepared.optimizer!r} has no 8-bit state")
    prepared.adam8bit = settings.adam8bit
    prepared.optimizer = eight_bit


def apply_offload(prepared: PreparedModel, settings: ComposedSettings, comp: Composition) -> None:
    """Saved activations go to host memory during forward (``save_on_cpu``); CUDA only."""
    device = next(prepared.model.parameters()).device
    if device.type != "cuda":
        raise ValueError(
            f"'offload' needs a CUDA device, not {device.type!r}: {TECHNIQUES['offload'].needs_cuda}"
        )
    pin = settings.offload.pin_memory
    prepared.saved_tensors_hooks = lambda: torch.autograd.graph.save_on_cpu(pin_memory=pin)
