"""What a method's steps build: the model ready to train, and how it is optimised and run."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from velora_core.contract.method_configs import LoRASettings


@dataclass
class PreparedModel:
    """A model ready to train: its trainable parameters, the layers VeLoRA wraps, and how it is
    optimised and run.

    ``optimizer``: the kind :func:`velora_core.methods.optimizers.build_optimizer` builds, a key of
    ``OPTIMIZERS`` (the base's registry entry names it; the ``8bit`` technique swaps it for its
    8-bit kind); ``galore_parameters``: the weights GaLore projects, with ``galore`` their settings;
    ``lr``: a learning rate the method imposes (GaLore's, a LoRA method's ``lora.lr``), None for the
    run's; ``saved_tensors_hooks``: makes the context every training forward runs in (offloading),
    None for none; ``checkpointed``: gradient checkpointing is on.
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


def trainable(model: nn.Module) -> list[nn.Parameter]:
    """The parameters of ``model`` that train."""
    return [p for p in model.parameters() if p.requires_grad]
