"""A method's settings, composed from its parts' sections (pydantic, no torch): one settings class
per canonical method name (:func:`settings_class`), the parse of a spec's ``method_config``
(:func:`method_config_for`), and the listings of methods and parts that forms and ``GET /presets``
show. The parts themselves are registered in :mod:`velora_core.contract.method_parts`.
"""

from __future__ import annotations

import functools
from typing import Any, ClassVar

from pydantic import (
    BaseModel,
    Field,
    SerializerFunctionWrapHandler,
    ValidationError,
    create_model,
    model_serializer,
    model_validator,
)

from velora_core.contract.errors import validation_message
from velora_core.contract.method_configs import (
    GaLoreSettings,
    LoRASettings,
    MethodSettings,
    VeLoRAConfig,
    check_galore,
    check_lora,
    check_velora,
)
from velora_core.contract.method_parts import (
    BASES,
    CONFLICTS,
    CUDA_PAIRS,
    SEPARATOR,
    TECHNIQUES,
    Composition,
    MethodPart,
    canonical_method,
    canonical_order,
    parse_method,
)


class ComposedSettings(MethodSettings):
    """The settings of a composed method: one field per section of its parts."""

    composition: ClassVar[Composition]

    @model_validator(mode="after")
    def _velora_init_survives_recomputation(self) -> ComposedSettings:
        # Gradient checkpointing runs each forward twice per step: a running average of the inputs
        # (init 'ema') would take two updates per step and differ between the forward and the
        # recomputation that the backward uses.
        velora = getattr(self, "velora", None)
        if velora is not None and self.composition.has("gc") and velora.init == "ema":
            raise ValueError(
                "velora.init 'ema' does not combine with gc: the recomputed forward would update "
                "the running average a second time each step; use batch_average_once or batch_average"
            )
        return self

    @model_serializer(mode="wrap")
    def _omit_empty_full(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        # ``full`` holds only an optional learning rate: left out when empty, so the specs (and
        # hashes) of full-weight methods written before it existed stay the same.
        data = handler(self)
        if data.get("full") == {}:
            data.pop("full")
        return data

    def check_against_model(self, linear_layers: dict[str, int]) -> None:
        lora: LoRASettings | None = getattr(self, "lora", None)
        if lora is not None:
            check_lora(lora, linear_layers)
        galore: GaLoreSettings | None = getattr(self, "galore", None)
        if galore is not None:
            check_galore(galore, linear_layers)
        velora: VeLoRAConfig | None = getattr(self, "velora", None)
        if velora is not None:
            check_velora(velora, linear_layers, lora, quantised=getattr(self, "quant", None) is not None)


def _class_name(comp: Composition) -> str:
    words = comp.name.replace("-", SEPARATOR).replace("8bit", "adam8bit").split(SEPARATOR)
    return "".join(w[:1].upper() + w[1:] for w in words) + "Settings"


@functools.cache
def _settings_class(canonical: str) -> type[ComposedSettings]:
    comp = parse_method(canonical)
    fields: dict[str, Any] = {}
    for part in comp.parts:
        for section in part.sections:
            default = functools.partial(section.default, comp.base)
            fields[section.field] = (section.model, Field(default_factory=default))
    cls = create_model(_class_name(comp), __base__=ComposedSettings, **fields)
    cls.composition = comp
    cls.__doc__ = f"Settings of {comp.name!r}: " + "; ".join(p.description for p in comp.parts)
    return cls


def settings_class(method: str) -> type[ComposedSettings]:
    """The settings model of ``method`` (any spelling; one class per canonical name)."""
    return _settings_class(canonical_method(method))


def method_config_for(method: str, settings: dict[str, Any] | MethodSettings | None) -> MethodSettings:
    """Parse ``settings`` with the settings class of ``method``.

    Raises:
        ValueError: an invalid method name (see :func:`parse_method`), or settings that do not
            validate (the message names the field).
    """
    cls = settings_class(method)
    if isinstance(settings, cls):
        return settings
    if isinstance(settings, BaseModel):
        settings = settings.model_dump(mode="json")
    try:
        return cls.model_validate(settings or {})
    except ValidationError as exc:
        problems = validation_message(exc, whole="(settings)")
        raise ValueError(f"invalid settings for method {canonical_method(method)!r}: {problems}") from None


#: The methods offered by name in listings and pickers: the six original ones and the alternatives
#: people pick first. Any other valid composition works too (the dashboard's picker composes them).
NAMED_METHODS = (
    "full",
    "lora",
    "qlora",
    "velora+full",
    "velora+lora",
    "velora+qlora",
    "full+gc",
    "lora+gc",
    "galore",
    "lora-fa",
)
assert all(canonical_method(m) == m for m in NAMED_METHODS)

#: Named method -> its settings class.
METHOD_CONFIGS: dict[str, type[MethodSettings]] = {name: settings_class(name) for name in NAMED_METHODS}


def method_info(method: str) -> dict[str, Any]:
    """A method's settings as a form needs them: the JSON schema and the defaults the engine
    builds (``default_factory`` values included, which the schema cannot show)."""
    cls = settings_class(method)
    return {"config_schema": cls.model_json_schema(), "defaults": cls().model_dump(mode="json")}


def parts_listing() -> dict[str, Any]:
    """Bases and techniques with their descriptions, settings schemas and defaults, the canonical
    order and the pairs that do not combine (for ``GET /presets`` and the dashboard's picker)."""

    def describe(part: MethodPart, base: str) -> dict[str, Any]:
        return {
            "description": part.description,
            "needs_cuda": part.needs_cuda,
            "sections": {
                s.field: {
                    "config_schema": s.model.model_json_schema(),
                    "defaults": s.default(base).model_dump(mode="json"),
                }
                for s in part.sections
            },
        }

    return {
        "bases": {name: describe(part, name) for name, part in BASES.items()},
        "techniques": {name: describe(part, "full") for name, part in TECHNIQUES.items()},
        "order": canonical_order(),
        "conflicts": [{"parts": sorted(pair), "why": why} for pair, why in CONFLICTS.items()],
        "cuda_pairs": [{"parts": sorted(pair), "why": why} for pair, why in CUDA_PAIRS.items()],
    }
