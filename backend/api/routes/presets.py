"""``/presets``: what a form or client can offer (models, datasets, methods with their settings schemas)."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from fastapi import APIRouter

from backend.api.deps import ReadAccess, SettingsDep
from backend.api.docs import error_responses
from velora_core.contract.method_settings import METHOD_CONFIGS, method_info, parts_listing
from velora_core.contract.presets.comparisons import COMPARISON_PRESETS, comparison_preset
from velora_core.contract.presets.model_shapes import DATASETS, MODEL_PRESETS
from velora_core.contract.spec import ComparisonSpec, RunSpec

router = APIRouter(prefix="/presets", tags=["presets"], responses=error_responses(401, 503))


def _comparison_specs(names: list[str]) -> dict[str, Any]:
    """Each preset's ComparisonSpec as JSON, so a form can prefill from it; one that fails is left out."""
    specs = {}
    for name in names:
        try:
            specs[name] = comparison_preset(name, None).model_dump(mode="json")
        except Exception:  # a broken preset must not take the whole listing down
            continue
    return specs


@router.get("")
def read_presets(settings: SettingsDep, _: ReadAccess) -> dict[str, Any]:
    """Model shapes, built-in datasets, named methods (with the JSON schema of each method's settings),
    the parts every method is composed of (``method_parts``: bases and techniques, each with its
    settings sections' schemas, the canonical order and the pairs that do not combine),
    comparison presets (description and full ComparisonSpec), this server's limits, and the JSON
    schemas of RunSpec and ComparisonSpec. A method's ``defaults`` are its settings as the engine
    builds them (``default_factory`` values included, which the JSON schema cannot show)."""
    comparisons = dict(COMPARISON_PRESETS)
    return {
        "models": {name: asdict(preset) for name, preset in MODEL_PRESETS.items()},
        "datasets": {name: {"kind": kind, "description": text} for name, (kind, text) in DATASETS.items()},
        "methods": {name: method_info(name) for name in METHOD_CONFIGS},
        "method_parts": parts_listing(),
        "comparisons": comparisons,
        "comparison_specs": _comparison_specs(list(comparisons)),
        "limits": {
            "max_steps": settings.max_steps,
            "max_micro_batch": settings.max_micro_batch,
            "max_seq_len": settings.max_seq_len,
            "max_runs_per_comparison": settings.max_runs_per_comparison,
            "max_request_bytes": settings.max_request_bytes,
        },
        "schemas": {
            "RunSpec": RunSpec.model_json_schema(),
            "ComparisonSpec": ComparisonSpec.model_json_schema(),
        },
    }
