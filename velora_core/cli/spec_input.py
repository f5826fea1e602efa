"""What a person gives a command line, read with one-line errors: a RunSpec or ComparisonSpec file
(YAML or JSON) and ``--set key=value`` overrides; used by ``velora-bench`` and the service's ``submit``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from velora_core.contract.spec import ComparisonSpec, RunSpec, read_spec


class BadInput(Exception):
    """A problem with what the user gave: printed as one line, exit code 2."""


def _yaml_error(path: str, exc: yaml.YAMLError) -> str:
    """``path:line:column: problem`` (1-based, as editors count) from a YAML/JSON parse error."""
    mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
    problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
    where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark is not None else path
    return f"{where}: not valid YAML/JSON: {problem}"


def load_spec_file(path: str) -> RunSpec | ComparisonSpec:
    """A RunSpec or ComparisonSpec from a YAML/JSON file (a ComparisonSpec has ``base`` and ``methods``)."""
    file = Path(path)
    if not file.exists():
        raise BadInput(f"spec file {path!r} not found")
    if file.is_dir():
        raise BadInput(f"{path!r} is a directory; give the path of a YAML or JSON spec file")
    if not file.is_file():
        raise BadInput(f"{path!r} is not a regular file; give the path of a YAML or JSON spec file")
    try:
        data = yaml.safe_load(file.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise BadInput(f"{path}: not a text file (a spec is YAML or JSON in UTF-8)") from None
    except yaml.YAMLError as exc:
        raise BadInput(_yaml_error(path, exc)) from None
    if data is None:
        raise BadInput(f"{path}: the file is empty; a spec is a mapping of fields")
    if not isinstance(data, dict):
        raise BadInput(f"{path}: the spec must be a mapping of fields, got {type(data).__name__}")
    try:
        return read_spec(data)
    except ValueError as exc:
        raise BadInput(f"{path}: {exc}") from None


def parse_assignments(items: Sequence[str]) -> dict[str, Any]:
    """``["steps=5", "optimizer.lr=1e-3", "pretrain.steps=10"]`` → a nested overrides dict; values
    are parsed as YAML scalars (numbers, booleans, lists)."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise BadInput(f"--set expects key=value, got {item!r}")
        try:
            value = yaml.safe_load(raw)
        except yaml.YAMLError:
            value = raw
        node = out
        parts = key.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise BadInput(f"--set {item!r} conflicts with another --set")
        node[parts[-1]] = value
    return out
