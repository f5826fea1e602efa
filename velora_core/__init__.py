"""velora_core: VeLoRA (Miles et al., NeurIPS 2024) as a PyTorch autograd layer, the six training
methods, memory accounting and the benchmark engine.

Public API: :func:`velora_linear`, :class:`VeLoRAConfig`, :func:`apply_velora`,
:class:`VeLoRALinear`, :func:`remove_velora`. Torch-dependent names load lazily so that
``velora_core.spec`` can be imported (by the web backend) without importing torch.
"""

from __future__ import annotations

from typing import Any

from velora_core.method_configs import VeLoRAConfig

__all__ = ["VeLoRAConfig", "VeLoRALinear", "apply_velora", "remove_velora", "velora_linear"]

_LAZY = {
    "velora_linear": "velora_core.projection",
    "VeLoRALinear": "velora_core.layer",
    "apply_velora": "velora_core.layer",
    "remove_velora": "velora_core.layer",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'velora_core' has no attribute {name!r}")
