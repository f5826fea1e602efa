"""Access to the engine's comparison presets without importing the engine (or torch).

``velora_core.bench.comparison_presets`` is torch-free; if it is not installed yet (or fails to
import), the API still serves explicit specs and says so for preset requests.
"""

from __future__ import annotations

from typing import Any

from velora_core.spec import ComparisonSpec


class PresetsUnavailable(RuntimeError):
    """The comparison presets module could not be imported."""


def _module() -> Any:
    try:
        from velora_core.bench import comparison_presets
    except ImportError as exc:
        raise PresetsUnavailable(f"comparison presets are not available on this server ({exc})") from exc
    return comparison_presets


def comparison_presets() -> dict[str, str]:
    """Preset name -> description; empty when the presets module is unavailable."""
    try:
        return dict(_module().COMPARISON_PRESETS)
    except PresetsUnavailable:
        return {}


def build_comparison(name: str, overrides: dict[str, Any] | None) -> ComparisonSpec:
    """The ComparisonSpec of preset ``name`` with ``overrides``.

    Raises:
        KeyError: unknown preset.
        ValueError: overrides that do not validate.
        PresetsUnavailable: the presets module is missing.
    """
    return _module().comparison_preset(name, overrides)
