"""The optimizers a method trains with, registered once by kind (:data:`OPTIMIZERS`), each from its
library. A base's registry entry (``velora_core.contract.method_parts.BASES``) names its kind; the
``8bit`` technique swaps it for the kind's ``eight_bit`` one.

- ``adamw``: ``torch.optim.AdamW``;
- ``adamw8bit``: bitsandbytes' ``AdamW8bit`` (runs on the CPU with bitsandbytes ≥ 0.45);
- ``galore`` / ``galore8bit``: galore-torch's ``GaLoreAdamW`` / ``GaLoreAdamW8bit``, the targeted
  weights in a parameter group with ``rank``, ``update_proj_gap``, ``scale`` and ``proj_type``;
- ``lorafa``: peft's ``create_lorafa_optimizer`` (LoRA-FA).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import bitsandbytes as bnb
import torch
from galore_torch import GaLoreAdamW, GaLoreAdamW8bit
from peft.optimizers import create_lorafa_optimizer

from velora_core.contract.spec import OptimizerSpec
from velora_core.methods.prepared import PreparedModel


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


def _adamw(prepared: PreparedModel, spec: OptimizerSpec, lr: float) -> torch.optim.Optimizer:
    params = prepared.trainable_parameters
    return torch.optim.AdamW(params, lr=lr, betas=spec.betas, weight_decay=spec.weight_decay)


def _adamw8bit(prepared: PreparedModel, spec: OptimizerSpec, lr: float) -> torch.optim.Optimizer:
    return bnb.optim.AdamW8bit(
        prepared.trainable_parameters,
        lr=lr,
        betas=spec.betas,
        weight_decay=spec.weight_decay,
        min_8bit_size=prepared.adam8bit.min_8bit_size,
    )


def _galore(prepared: PreparedModel, spec: OptimizerSpec, lr: float) -> torch.optim.Optimizer:
    return GaLoreAdamW(
        _galore_groups(prepared),
        lr=lr,
        betas=spec.betas,
        weight_decay=spec.weight_decay,
        no_deprecation_warning=True,
    )


def _galore8bit(prepared: PreparedModel, spec: OptimizerSpec, lr: float) -> torch.optim.Optimizer:
    return GaLoreAdamW8bit(
        _galore_groups(prepared),
        lr=lr,
        betas=spec.betas,
        weight_decay=spec.weight_decay,
        min_8bit_size=prepared.adam8bit.min_8bit_size,
    )


def _lorafa(prepared: PreparedModel, spec: OptimizerSpec, lr: float) -> torch.optim.Optimizer:
    lora = prepared.lora
    optimizer = create_lorafa_optimizer(
        prepared.model, r=lora.r, lora_alpha=lora.alpha, lr=lr, weight_decay=spec.weight_decay
    )
    for group in optimizer.param_groups:
        group["betas"] = spec.betas  # create_lorafa_optimizer fixes (0.9, 0.999)
    return optimizer


@dataclass(frozen=True)
class OptimizerKind:
    """One optimizer: how it is built from a prepared model, and its kind with 8-bit state (the
    ``8bit`` technique's swap), None where there is none."""

    name: str
    build: Callable[[PreparedModel, OptimizerSpec, float], torch.optim.Optimizer]
    eight_bit: str | None = None


OPTIMIZERS: dict[str, OptimizerKind] = {
    k.name: k
    for k in (
        OptimizerKind("adamw", _adamw, eight_bit="adamw8bit"),
        OptimizerKind("adamw8bit", _adamw8bit),
        OptimizerKind("galore", _galore, eight_bit="galore8bit"),
        OptimizerKind("galore8bit", _galore8bit),
        OptimizerKind("lorafa", _lorafa),
    )
}


def build_optimizer(prepared: PreparedModel, spec: OptimizerSpec) -> torch.optim.Optimizer:
    """The optimizer ``prepared``'s method trains with, at ``spec``'s settings (a learning rate
    the method sets itself, GaLore's or a LoRA method's ``lora.lr``, wins over ``spec.lr``).

    Raises:
        ValueError: an optimizer kind that is not registered.
    """
    lr = prepared.lr if prepared.lr is not None else spec.lr
    if prepared.optimizer not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer kind {prepared.optimizer!r}; registered: {sorted(OPTIMIZERS)}")
    return OPTIMIZERS[prepared.optimizer].build(prepared, spec, lr)
