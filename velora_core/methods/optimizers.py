"""The optimizer of a prepared model: AdamW, or what its method asks for, each from its library.

- ``adamw``: ``torch.optim.AdamW``;
- ``adamw8bit``: bitsandbytes' ``AdamW8bit`` (runs on the CPU with bitsandbytes ≥ 0.45);
- ``galore`` / ``galore8bit``: galore-torch's ``GaLoreAdamW`` / ``GaLoreAdamW8bit``, the targeted
  weights in a parameter group with ``rank``, ``update_proj_gap``, ``scale`` and ``proj_type``;
- ``lorafa``: peft's ``create_lorafa_optimizer`` (LoRA-FA).
"""

from __future__ import annotations

import torch

from velora_core.contract.spec import OptimizerSpec
from velora_core.methods.registry import PreparedModel


def _galore_groups(prepared: PreparedModel) -> list[dict]:
    projected = {id(p) for p in prepared.galore_parameters}
    if not projected <= {id(p) for p in prepared.trainable_parameters}:
        raise ValueError("GaLore's projected weights are not all among the trainable parameters")
    regular = [p for p in prepared.trainable_parameters if id(p) not in projected]
    galore = prepared.galore
    return [
        {"params": regular},
        {
            "params": [p for p in prepared.trainable_parameters if id(p) in projected],
            "rank": galore.rank,
            "update_proj_gap": galore.update_proj_gap,
            "scale": galore.scale,
            "proj_type": galore.proj_type,
        },
    ]


def build_optimizer(prepared: PreparedModel, spec: OptimizerSpec) -> torch.optim.Optimizer:
    """The optimizer ``prepared``'s method trains with, at ``spec``'s settings (a learning rate
    the method sets itself, GaLore's or a LoRA method's ``lora.lr``, wins over ``spec.lr``)."""
    lr = prepared.lr if prepared.lr is not None else spec.lr
    kind = prepared.optimizer
    params = prepared.trainable_parameters
    if kind == "adamw":
        return torch.optim.AdamW(params, lr=lr, betas=spec.betas, weight_decay=spec.weight_decay)
    if kind == "adamw8bit":
        import bitsandbytes as bnb

        return bnb.optim.AdamW8bit(
            params,
            lr=lr,
            betas=spec.betas,
            weight_decay=spec.weight_decay,
            min_8bit_size=prepared.adam8bit.min_8bit_size,
        )
    if kind == "galore":
        from galore_torch import GaLoreAdamW

        return GaLoreAdamW(
            _galore_groups(prepared),
            lr=lr,
            betas=spec.betas,
            weight_decay=spec.weight_decay,
            no_deprecation_warning=True,
        )
    if kind == "galore8bit":
        from galore_torch import GaLoreAdamW8bit

        return GaLoreAdamW8bit(
            _galore_groups(prepared),
            lr=lr,
            betas=spec.betas,
            weight_decay=spec.weight_decay,
            min_8bit_size=prepared.adam8bit.min_8bit_size,
        )
    if kind == "lorafa":
        from peft.optimizers import create_lorafa_optimizer

        lora = prepared.lora
        optimizer = create_lorafa_optimizer(
            prepared.model, r=lora.r, lora_alpha=lora.alpha, lr=lr, weight_decay=spec.weight_decay
        )
        for group in optimizer.param_groups:
            group["betas"] = spec.betas  # create_lorafa_optimizer fixes (0.9, 0.999)
        return optimizer
    raise ValueError(f"unknown optimizer kind {kind!r}")
