"""Streamlit widgets drawn from a JSON schema: one widget per property, with the schema's bounds,
and a method's settings section by section (``GET /presets`` gives each method's config schema).
"""

from __future__ import annotations

from typing import Any

import streamlit as st

from velora_core.contract.method_settings import method_info


def _resolve(schema: dict[str, Any], root: dict[str, Any]) -> dict[str, Any]:
    ref = schema.get("$ref")
    if ref:
        return root.get("$defs", {}).get(ref.rsplit("/", 1)[-1], {})
    return schema


def _nullable(schema: dict[str, Any]) -> tuple[dict[str, Any], bool]:
    """``anyOf: [X, {"type": "null"}]`` -> (X, True)."""
    options = schema.get("anyOf")
    if not options:
        return schema, False
    real = [o for o in options if o.get("type") != "null"]
    return (dict(real[0], **{k: v for k, v in schema.items() if k != "anyOf"}) if real else schema), len(
        real
    ) < len(options)


def settings_field(name: str, schema: dict[str, Any], value: Any, key: str) -> Any:
    """One widget for one JSON-schema property, with the schema's bounds; returns the chosen value."""
    schema, nullable = _nullable(schema)
    label = schema.get("title") or name.replace("_", " ")
    help_text = schema.get("description")
    kind = schema.get("type")
    if "enum" in schema:
        options = list(schema["enum"])
        index = options.index(value) if value in options else 0
        return st.selectbox(label, options, index=index, key=key, help=help_text)
    if kind == "boolean":
        return st.checkbox(label, value=bool(value), key=key, help=help_text)
    if kind in ("integer", "number"):
        integer = kind == "integer"
        low = schema.get("minimum", schema.get("exclusiveMinimum"))
        high = schema.get("maximum", schema.get("exclusiveMaximum"))
        cast = int if integer else float
        return st.number_input(
            label + (" (optional)" if nullable else ""),
            min_value=None if low is None else cast(low),
            max_value=None if high is None else cast(high),
            value=None if value is None else cast(value),
            step=1 if integer else None,
            format=None if integer else "%g",
            key=key,
            help=help_text,
            placeholder="not set" if nullable else None,
        )
    if kind == "array":
        text = st.text_input(label, value=", ".join(str(v) for v in value or []), key=key, help=help_text)
        return [part.strip() for part in text.split(",") if part.strip()]
    return st.text_input(label, value="" if value is None else str(value), key=key, help=help_text) or None


def method_settings(
    method: str, presets: dict[str, Any], initial: dict[str, Any] | None, key: str
) -> dict[str, Any]:
    """The settings of ``method``, one widget per field of its config schema (nested objects such as
    ``lora``, ``velora``, ``quant`` become sections), starting from the server's defaults for the
    method overlaid with ``initial``.

    A JSON schema cannot carry a ``default_factory`` (``velora+lora``'s VeLoRA scale is 0.1 while
    ``VeLoRAConfig``'s schema says 1.0). So unless the server states the method's ``defaults``, a
    section is sent only when a person changed one of its fields; untouched, the server's own
    defaults apply."""
    info = presets["methods"].get(method) or method_info(method)  # a composed method: from its parts
    root = info["config_schema"]
    defaults = info.get("defaults") or {}
    initial = initial or {}
    values: dict[str, Any] = {}
    sections = root.get("properties", {})
    if not sections:
        st.caption(f"`{method}` has no settings.")
    for section, section_schema in sections.items():
        sub = _resolve(section_schema, root)
        props = sub.get("properties")
        if not props:
            continue
        start = (
            {
                name: prop.get("default")
                for name, prop in props.items()
                if "default" in prop or "anyOf" in prop
            }
            | (defaults.get(section) or {})
            | (initial.get(section) or {})
        )
        st.markdown(f"**{sub.get('title', section)}**", help=sub.get("description"))
        columns = st.columns(min(4, len(props)))
        section_values = {}
        for i, (name, prop) in enumerate(props.items()):
            with columns[i % len(columns)]:
                value = settings_field(name, prop, start.get(name), f"{key}.{section}.{name}")
            # A field whose default the server did not say (a default_factory) is left to the server
            # while it stays empty, rather than sent as an empty value.
            if name in start or value not in (None, [], ""):
                section_values[name] = value
        changed = any(section_values.get(name) != start.get(name) for name in section_values)
        if defaults or section in initial or changed:
            values[section] = section_values
    return values
