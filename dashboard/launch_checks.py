"""What the Launch page checks before it sends anything: the request against the spec's own JSON
schema and this server's limits (``GET /presets``), then the spec's rules across fields (the
contract's ComparisonSpec, as the API checks it): what the API would refuse. Each field's valid
range in words, and an estimate of the duration from the runs this server has finished. Pure
functions, no Streamlit.
"""

from __future__ import annotations

import copy
import statistics
from collections.abc import Iterable
from datetime import datetime
from typing import Any

from jsonschema import Draft202012Validator
from jsonschema.exceptions import ValidationError as SchemaError
from jsonschema.exceptions import best_match
from pydantic import ValidationError

from dashboard.formatting import duration_words
from velora_core.contract.errors import validation_message
from velora_core.contract.spec import ComparisonSpec

#: The base fields the server bounds tighter than the schema (``limits`` of ``GET /presets``).
LIMITED_FIELDS = {"steps": "max_steps", "micro_batch": "max_micro_batch", "seq_len": "max_seq_len"}


def field_range(schema: dict[str, Any], *path: str, limit: int | None = None) -> tuple[Any, Any]:
    """The (minimum, maximum) a number field of ``schema`` (a ComparisonSpec JSON schema) allows,
    with the server's ``limit`` where it is tighter; None where unbounded."""
    node: dict[str, Any] = schema
    for name in path:
        node = _resolve(schema, node)
        node = node.get("properties", {}).get(name, {})
    node = _resolve(schema, node)
    options = node.get("anyOf", [node])
    numeric = next((o for o in options if o.get("type") in ("integer", "number")), node)
    low = numeric.get("minimum", numeric.get("exclusiveMinimum"))
    high = numeric.get("maximum", numeric.get("exclusiveMaximum"))
    if limit is not None:
        high = limit if high is None else min(high, limit)
    return low, high


def _resolve(schema: dict[str, Any], node: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in node:
        node = schema["$defs"][node["$ref"].rsplit("/", 1)[-1]]
    if "anyOf" in node:  # Optional[Model]: the model's branch
        models = [o for o in node["anyOf"] if "$ref" in o]
        if len(models) == 1:
            return _resolve(schema, models[0])
    return node


def range_words(low: Any, high: Any) -> str:
    if low is not None and high is not None:
        return f"valid: {low:,} to {high:,}"
    return (
        f"valid: at least {low:,}"
        if low is not None
        else (f"valid: at most {high:,}" if high is not None else "")
    )


def _message(error: SchemaError) -> str:
    if error.context:  # anyOf/oneOf: the branch of the value's type says what is wrong
        error = best_match([e for e in error.context if e.validator != "type"] or error.context)
    where = ".".join(str(p) for p in error.absolute_path) or "the request"
    return f"{where}: {error.message}"


def schema_problems(body: dict[str, Any], schema: dict[str, Any]) -> list[str]:
    """Every place where ``body`` breaks ``schema`` (a JSON schema), as ``field: what is wrong``."""
    errors = sorted(
        Draft202012Validator(schema).iter_errors(body), key=lambda e: list(map(str, e.absolute_path))
    )
    return [_message(error) for error in errors]


def limit_problems(spec: dict[str, Any], limits: dict[str, Any]) -> list[str]:
    """The server's own bounds (``VELORA_MAX_*``), which may be tighter than the schema's, on the
    base run and its pre-training, and on the number of runs."""
    problems = []
    base = spec.get("base") or {}
    pretrain = (base.get("model") or {}).get("pretrain") or {}
    for where, run in (("base", base), ("base.model.pretrain", pretrain)):
        for name, key in LIMITED_FIELDS.items():
            value, limit = run.get(name), limits.get(key)
            if isinstance(value, int) and limit is not None and value > limit:
                problems.append(f"{where}.{name}: {value:,} exceeds this server's limit of {limit:,}")
    runs = len(spec.get("methods") or []) * len(spec.get("seeds") or [0])
    if limits.get("max_runs_per_comparison") and runs > limits["max_runs_per_comparison"]:
        problems.append(
            f"{runs} runs (methods × seeds); this server allows {limits['max_runs_per_comparison']}"
        )
    return problems


def preset_spec(spec: dict[str, Any], overrides: dict[str, Any] | None) -> dict[str, Any]:
    """The preset's ComparisonSpec with the Launch form's overrides in (methods, seeds, the base's
    steps, micro_batch and seq_len, ``eval``, ``pretrain``), as the API will build it."""
    merged = copy.deepcopy(spec)
    for key, value in (overrides or {}).items():
        if key in ("methods", "seeds"):
            merged[key] = value
            if key == "methods":  # the preset's settings of the methods that stay
                configs = merged.get("method_configs") or {}
                merged["method_configs"] = {m: c for m, c in configs.items() if m in value}
        elif key == "eval":
            merged["base"]["eval"] = {**(merged["base"].get("eval") or {}), **value}
        elif key == "pretrain":
            model = merged["base"]["model"]
            model["pretrain"] = {**(model.get("pretrain") or {}), **value}
        else:
            merged["base"][key] = value
    return merged


def request_problems(body: dict[str, Any], presets: dict[str, Any]) -> list[str]:
    """What the API would refuse in a ``POST /comparisons`` body, found before sending it."""
    schema = (presets.get("schemas") or {}).get("ComparisonSpec")
    if "preset" in body:
        spec = (presets.get("comparison_specs") or {}).get(body["preset"])
        if spec is None:
            return []  # a preset the server does not describe: only the API can check it
        spec = preset_spec(spec, body.get("overrides"))
    else:
        spec = body
    problems = schema_problems(spec, schema) if schema else []
    flagged = {p.split(":", 1)[0] for p in problems}  # one message per field
    problems += [
        p for p in limit_problems(spec, presets.get("limits") or {}) if p.split(":", 1)[0] not in flagged
    ]
    if not problems:  # the rules across fields (a model's position limit …), as the API's spec checks them
        try:
            ComparisonSpec.model_validate(spec)
        except ValidationError as exc:
            problems.append(validation_message(exc, whole=None))
        except ValueError as exc:
            problems.append(str(exc))
    return problems


def _seconds(run: dict[str, Any]) -> float | None:
    try:
        started = datetime.fromisoformat(run["started_at"].replace("Z", "+00:00"))
        finished = datetime.fromisoformat(run["finished_at"].replace("Z", "+00:00"))
    except (KeyError, AttributeError, TypeError, ValueError):
        return None
    return (finished - started).total_seconds()


def seconds_per_step(finished: Iterable[dict[str, Any]]) -> tuple[float, int] | None:
    """The median seconds per training step (setup and evaluation included) over finished runs of
    this server, and how many runs that is; None without any."""
    rates = [
        seconds / run["total_steps"]
        for run in finished
        if run.get("status") == "completed" and (run.get("total_steps") or 0) > 0
        for seconds in [_seconds(run)]
        if seconds is not None and seconds > 0
    ]
    return (statistics.median(rates), len(rates)) if rates else None


def duration_estimate(spec: dict[str, Any], finished: Iterable[dict[str, Any]]) -> str:
    """The estimated duration of a comparison in words, from this server's finished runs."""
    rate = seconds_per_step(finished)
    if rate is None:
        return "No finished runs on this server yet, so no estimate of the duration."
    per_step, count = rate
    base = spec.get("base") or {}
    runs = len(spec.get("methods") or []) * len(spec.get("seeds") or [0])
    steps = runs * (base.get("steps") or 0)
    steps += ((base.get("model") or {}).get("pretrain") or {}).get("steps") or 0
    return (
        f"Estimated duration: about {duration_words(steps * per_step)} for {steps:,} steps in {runs} run(s), "
        f"at the median {per_step:.2f} s per step of the {count} run(s) this server finished "
        "(other models and shapes run at other speeds; one worker runs one run at a time)."
    )
