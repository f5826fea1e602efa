"""What the "Will it fit?" page checks before it asks: a model name (a preset, a hub id, or a typo
of a preset with the nearest one suggested) and a pasted ``config.json``. Pure functions."""

from __future__ import annotations

import difflib
import json
from collections.abc import Iterable
from typing import Any

from velora_core.contract.spec import check_hub_id


def model_problem(name: str, presets: Iterable[str]) -> str | None:
    """Why ``name`` cannot be asked about, or None: a preset and a hub id are fine; a name without an
    owner that is close to a preset is taken for a typo (it would be looked up on the hub and fail
    after half a minute), with the nearest preset suggested."""
    names = list(presets)
    name = name.strip()
    if not name:
        return "type a preset name or a hub id (owner/name)"
    if name in names:
        return None
    if "/" not in name:
        close = difflib.get_close_matches(name, names, n=1, cutoff=0.75)
        if close:
            return f"{name!r} is not a preset: did you mean {close[0]}? (a hub model is owner/name)"
    try:
        check_hub_id(name, "model")
    except ValueError as exc:
        return str(exc)
    return None


def parse_config(text: str) -> tuple[dict[str, Any] | None, str | None]:
    """A pasted ``config.json``: ``(config, None)`` or ``(None, what is wrong)``."""
    try:
        config = json.loads(text)
    except json.JSONDecodeError as exc:
        return None, f"the config.json is not valid JSON: {exc}"
    if not isinstance(config, dict):
        return None, "the config.json must be a JSON object ({...})"
    missing = [k for k in ("hidden_size", "num_hidden_layers") if k not in config]
    if missing:
        return None, f"the config.json has no {', '.join(missing)}: is it a model's config.json?"
    return config, None
