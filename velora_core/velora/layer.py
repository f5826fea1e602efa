"""VeLoRA as a module: a wrapper around a linear layer, and its injection by module replacement.

``apply_velora`` replaces each matching module with ``VeLoRALinear(base_layer, …)`` (peft's
``base_layer`` pattern); it never patches ``forward``. On a plain ``nn.Linear`` it compresses that
layer's input (``velora+full``); on a peft LoRA layer it wraps the adapter's ``lora_A`` and so
compresses the input of the LoRA down-projection (``velora+lora``, ``velora+qlora``).
"""

from __future__ import annotations

import torch
from torch import nn

from velora_core.contract.method_configs import VeLoRAConfig, VeLoRAInit, check_velora_init, target_matches
from velora_core.velora.projection import normalise, sub_token_mean, sub_token_size, velora_linear


class VeLoRALinear(nn.Module):
    """A linear layer that keeps only sub-token projections of its input for the backward pass.

    In training mode with gradients enabled the forward is :func:`velora_linear`; in evaluation
    mode or under ``torch.no_grad()`` it is the plain base layer.

    Args:
        base_layer: the ``nn.Linear`` to wrap (its parameters are used as they are).
        num_groups: G for this layer.
        init: ``batch_average_once``, ``batch_average``, ``ema`` or ``random``.
        scale: weight-gradient scale.
        ema_decay: the running mean's weight for ``ema`` (``0 < decay < 1``); ``None`` otherwise.

    Raises:
        ValueError: a base layer that is not ``nn.Linear``, an unknown init, or a decay that does
            not fit the init (see ``check_velora_init``).
    """

    def __init__(
        self,
        base_layer: nn.Linear,
        num_groups: int,
        init: VeLoRAInit = "batch_average_once",
        scale: float = 1.0,
        ema_decay: float | None = None,
    ):
        super().__init__()
        if not isinstance(base_layer, nn.Linear):
            raise ValueError(f"VeLoRALinear wraps nn.Linear, got {type(base_layer).__name__}")
        check_velora_init(init, ema_decay)
        self.base_layer = base_layer
        self.num_groups = num_groups
        self.init = init
        self.scale = float(scale)
        size = sub_token_size(base_layer.in_features, num_groups)
        weight = base_layer.weight
        if init == "random":
            v = normalise(torch.randn(size, device=weight.device))
            initialised = True
        else:
            v = torch.zeros(size, device=weight.device)
            initialised = False
        self.register_buffer("velora_v", v.to(weight.dtype))  # (S,)
        # Running (unnormalised) mean of sub-tokens for ``ema``; float32.
        self.register_buffer("velora_mean", torch.zeros(size, device=weight.device))
        self.register_buffer("velora_initialised", torch.tensor(initialised, device=weight.device))
        # A host-side copy of the flag: reading the buffer on every forward would sync a CUDA device.
        self._v_ready = initialised
        self.ema_decay = ema_decay
        # What the last training forward saw, for the analytic memory prediction.
        self.last_num_tokens = 0
        self.last_input_dtype: torch.dtype | None = None

    # peft and transformers read these attributes of a linear layer.
    @property
    def weight(self) -> torch.Tensor:
        return self.base_layer.weight

    @property
    def bias(self) -> torch.Tensor | None:
        return self.base_layer.bias

    @property
    def in_features(self) -> int:
        return self.base_layer.in_features

    @property
    def out_features(self) -> int:
        return self.base_layer.out_features

    def extra_repr(self) -> str:
        decay = f", ema_decay={self.ema_decay}" if self.ema_decay is not None else ""
        return (
            f"num_groups={self.num_groups}, sub_token_size={self.velora_v.numel()}, init={self.init}"
            f"{decay}, scale={self.scale}"
        )

    @torch.no_grad()
    def _update_projection(self, x: torch.Tensor) -> None:
        """Set ``v`` from this batch as the init mode says. ``v`` is replaced, never changed in place,
        so a graph that saved the previous ``v`` stays valid."""
        if self.init == "random" or (self.init == "batch_average_once" and self._v_ready):
            return
        mean = sub_token_mean(x.reshape(-1, x.shape[-1]), self.num_groups)  # (S,) fp32
        if self.ema_decay is not None and self._v_ready:
            mean = self.ema_decay * self.velora_mean + (1.0 - self.ema_decay) * mean
        self.velora_mean = mean
        self.velora_v = normalise(mean).to(self.velora_v.dtype)
        self.velora_initialised = torch.ones_like(self.velora_initialised)
        self._v_ready = True

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        self._v_ready = bool(self.velora_initialised)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight, bias = self.base_layer.weight, self.base_layer.bias
        if not (self.training and torch.is_grad_enabled() and weight.requires_grad):
            return self.base_layer(x)
        self._update_projection(x)
        self.last_num_tokens = x.numel() // x.shape[-1]
        self.last_input_dtype = x.dtype
        return velora_linear(x, weight, bias, self.velora_v, self.num_groups, self.scale)


def _lora_layer_type() -> type | None:
    try:
        from peft.tuners.lora import LoraLayer
    except ImportError:  # peft is a dependency, but the plain-Linear path does not need it
        return None
    return LoraLayer


def _set_child(model: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, module)


def apply_velora(model: nn.Module, config: VeLoRAConfig) -> list[str]:
    """Wrap the modules of ``model`` that ``config.target_modules`` selects, in place.

    - A peft LoRA layer (plain or on a bitsandbytes 4-bit base): every adapter's ``lora_A`` is wrapped.
    - A plain ``nn.Linear`` whose weight trains: the layer itself is wrapped.

    Returns:
        The names of the wrapped ``nn.Linear`` modules (for LoRA, ``…v_proj.lora_A.default``).
    Raises:
        ValueError: a matched module of an unsupported type (named), a matched linear layer with a
            frozen weight and no LoRA adapter, or no match at all (the message lists the linear
            layers the model has).
    """
    lora_layer = _lora_layer_type()
    wrapped: list[str] = []
    targets: list[tuple[str, nn.Module]] = []
    for name, module in model.named_modules():
        if not name or not target_matches(name, config.target_modules):
            continue
        if isinstance(module, VeLoRALinear):
            raise ValueError(f"module {name!r} is already wrapped with VeLoRA")
        targets.append((name, module))

    for name, module in targets:
        if lora_layer is not None and isinstance(module, lora_layer):
            for adapter, lora_a in module.lora_A.items():
                if isinstance(lora_a, VeLoRALinear):
                    continue
                if not isinstance(lora_a, nn.Linear):
                    raise ValueError(
                        f"module {name!r}: lora_A is {type(lora_a).__name__}, VeLoRA needs nn.Linear"
                    )
                groups = config.groups_for(lora_a.in_features)
                module.lora_A[adapter] = VeLoRALinear(
                    lora_a, groups, config.init, config.scale, config.ema_decay
                )
                wrapped.append(f"{name}.lora_A.{adapter}")
        elif type(module) is nn.Linear:
            if not module.weight.requires_grad:
                raise ValueError(
                    f"module {name!r} is a frozen nn.Linear without a LoRA adapter: VeLoRA only saves "
                    "memory for a layer whose weight trains (use velora+lora, or unfreeze it)"
                )
            groups = config.groups_for(module.in_features)
            _set_child(model, name, VeLoRALinear(module, groups, config.init, config.scale, config.ema_decay))
            wrapped.append(name)
        elif name.rsplit(".", 1)[-1] in ("base_layer", "lora_A", "lora_B"):
            continue  # the inner parts of a LoRA layer matched by a broad pattern
        else:
            raise ValueError(
                f"module {name!r} of type {type(module).__name__} cannot take VeLoRA: it needs an "
                "nn.Linear whose weight trains or a peft LoRA layer"
            )
    if not wrapped:
        available = sorted(
            {n.rsplit(".", 1)[-1] for n, m in model.named_modules() if isinstance(m, nn.Linear) and n}
            - {"lora_A", "lora_B", "base_layer", "default"}
        )
        raise ValueError(
            f"VeLoRA target_modules {config.target_modules} match no module; linear layers in this model: {available}"
        )
    return wrapped


def velora_modules(model: nn.Module) -> dict[str, VeLoRALinear]:
    """The VeLoRA-wrapped layers of ``model`` by name."""
    return {n: m for n, m in model.named_modules() if isinstance(m, VeLoRALinear)}


def remove_velora(model: nn.Module) -> list[str]:
    """Put every wrapped layer's ``base_layer`` back in its place (before saving, so checkpoints and
    adapters keep their usual names). Returns the names restored."""
    restored = []
    for name, module in list(velora_modules(model).items()):
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        if isinstance(parent, nn.ModuleDict):
            parent[child] = module.base_layer
        else:
            setattr(parent, child, module.base_layer)
        restored.append(name)
    return restored
