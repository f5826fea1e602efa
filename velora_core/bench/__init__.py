"""The benchmark engine: models, data, training loop, evaluation, comparison presets.

``execute`` loads lazily so that ``velora_core.bench.comparison_presets`` can be imported (by the
web backend) without importing torch.
"""

from __future__ import annotations

from typing import Any

__all__ = ["execute"]


def __getattr__(name: str) -> Any:
    if name == "execute":
        from velora_core.bench.engine import execute

        return execute
    raise AttributeError(f"module 'velora_core.bench' has no attribute {name!r}")
