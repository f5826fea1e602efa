"""Methods as a base plus memory techniques, composed and checked without torch.

A method name is one **base** and any **techniques** joined by ``+``:

- bases: ``full`` (every weight trains), ``lora`` (peft adapters on a frozen base), ``qlora`` (LoRA
  on a 4-bit base), ``galore`` (full training, gradients projected to low rank in the optimizer),
  ``lora-fa`` (LoRA with ``lora_A`` frozen, peft's LoRA-FA optimizer);
- techniques: ``velora`` (compressed layer inputs), ``gc`` (gradient checkpointing), ``8bit``
  (8-bit AdamW state), ``offload`` (saved activations to host memory; CUDA only).

The order of the parts does not change the method. The one spelling stored and shown is the
**canonical** one: ``velora`` first, then the base, then the other techniques in the order of
:data:`TECHNIQUE_ORDER` (``gc``, ``8bit``, ``offload``): ``lora+gc+velora`` is ``velora+lora+gc``.
This keeps the six original names (``full``, ``lora``, ``qlora``, ``velora+full``,
``velora+lora``, ``velora+qlora``) as they were.

Each part is one entry of :data:`BASES` or :data:`TECHNIQUES`: its description, the settings
sections it adds (models in :mod:`velora_core.contract.method_configs`) and the device it needs;
its code is the matching entry in ``velora_core.methods.registry``. A method's settings are the sections of
its parts (:func:`settings_class`); :data:`CONFLICTS` says which parts cannot go together, and why.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

from pydantic import BaseModel, Field, ValidationError, create_model, model_validator

from velora_core.contract.errors import validation_message
from velora_core.contract.method_configs import (
    Adam8bitSettings,
    GaLoreSettings,
    LoRASettings,
    MethodSettings,
    OffloadSettings,
    QuantSettings,
    VeLoRAConfig,
    check_galore,
    check_lora,
    check_velora,
)

#: Where a method's parts are joined.
SEPARATOR = "+"
#: The bases whose every weight trains (their model is a whole model, usable as a pre-trained base).
WHOLE_MODEL_BASES = ("full", "galore")
#: The bases with peft LoRA adapters.
LORA_BASES = ("lora", "qlora", "lora-fa")


@dataclass(frozen=True)
class Section:
    """One settings section a part adds to its method: ``field`` holds a ``model``; ``default(base)``
    builds its default (VeLoRA's scale depends on the base)."""

    field: str
    model: type[BaseModel]
    default: Callable[[str], BaseModel]


@dataclass(frozen=True)
class MethodPart:
    """A base or a technique: its description, its settings sections and, if it has one, why it
    needs CUDA."""

    name: str
    description: str
    sections: tuple[Section, ...] = ()
    needs_cuda: str | None = None


def _plain(model: type[BaseModel]) -> Callable[[str], BaseModel]:
    return lambda base: model()


def _velora_default(base: str) -> VeLoRAConfig:
    # The paper's fine-tuning scale (0.1) where adapters train; 1.0 where the base weights train.
    return VeLoRAConfig(scale=1.0 if base in WHOLE_MODEL_BASES else 0.1)


_LORA = Section("lora", LoRASettings, _plain(LoRASettings))

BASES: dict[str, MethodPart] = {
    p.name: p
    for p in (
        MethodPart("full", "Full training: every weight trains, AdamW state for each"),
        MethodPart("lora", "LoRA adapters (peft) on a frozen base", (_LORA,)),
        MethodPart(
            "qlora",
            "LoRA on a 4-bit NF4 base (bitsandbytes)",
            (_LORA, Section("quant", QuantSettings, _plain(QuantSettings))),
        ),
        MethodPart(
            "galore",
            "Full training with GaLore: gradients projected to low rank, AdamW state of that rank "
            "(galore-torch)",
            (Section("galore", GaLoreSettings, _plain(GaLoreSettings)),),
        ),
        MethodPart(
            "lora-fa",
            "LoRA-FA: LoRA with lora_A frozen, so only lora_B's narrow input is kept (peft's optimizer)",
            (_LORA,),
        ),
    )
}

TECHNIQUES: dict[str, MethodPart] = {
    p.name: p
    for p in (
        MethodPart(
            "velora",
            "VeLoRA: each targeted layer keeps its input as rank-1 sub-token projections",
            (Section("velora", VeLoRAConfig, _velora_default),),
        ),
        MethodPart(
            "gc",
            "Gradient checkpointing (transformers, non-reentrant): each decoder layer keeps only its "
            "inputs and recomputes its forward during backward",
        ),
        MethodPart(
            "8bit",
            "8-bit AdamW state (bitsandbytes, block-wise quantised moments)",
            (Section("adam8bit", Adam8bitSettings, _plain(Adam8bitSettings)),),
        ),
        MethodPart(
            "offload",
            "Saved activations copied to host memory during forward, back for backward "
            "(torch.autograd.graph.save_on_cpu)",
            (Section("offload", OffloadSettings, _plain(OffloadSettings)),),
            needs_cuda="it moves saved activations from the GPU to host memory (on the CPU they are "
            "already there)",
        ),
    )
}

#: The order of the techniques after the base in a canonical name (``velora`` comes before the base).
TECHNIQUE_ORDER = ("gc", "8bit", "offload")
assert set(TECHNIQUES) == {"velora", *TECHNIQUE_ORDER}

#: Parts that cannot go together, and why.
CONFLICTS: dict[frozenset[str], str] = {
    frozenset({"lora-fa", "velora"}): (
        "LoRA-FA freezes lora_A, whose input is what VeLoRA compresses (lora_B's input is already "
        "r features wide): use velora+lora, or lora-fa alone"
    ),
    frozenset({"lora-fa", "8bit"}): (
        "LoRA-FA brings its own optimizer (peft's LoraFAOptimizer, 32-bit state); 8-bit AdamW would "
        "replace it: use lora+8bit, or lora-fa alone"
    ),
}

#: Pairs of parts that need CUDA together, and why.
CUDA_PAIRS: dict[frozenset[str], str] = {
    frozenset({"galore", "8bit"}): "galore-torch's 8-bit GaLore optimizer synchronises CUDA on every step",
}


@dataclass(frozen=True)
class Composition:
    """A parsed method: its base and its techniques in canonical order."""

    base: str
    techniques: tuple[str, ...]

    @property
    def name(self) -> str:
        """The canonical spelling."""
        first = ("velora",) if "velora" in self.techniques else ()
        rest = tuple(t for t in TECHNIQUE_ORDER if t in self.techniques)
        return SEPARATOR.join((*first, self.base, *rest))

    @property
    def parts(self) -> tuple[MethodPart, ...]:
        return (BASES[self.base], *(TECHNIQUES[t] for t in self.techniques))

    def has(self, technique: str) -> bool:
        return technique in self.techniques

    def cuda_reasons(self) -> list[str]:
        """Why this method needs CUDA (empty if it runs anywhere)."""
        names = {self.base, *self.techniques}
        reasons = [f"{p.name!r}: {p.needs_cuda}" for p in self.parts if p.needs_cuda]
        reasons += [
            f"{' with '.join(repr(n) for n in sorted(pair))}: {why}"
            for pair, why in CUDA_PAIRS.items()
            if pair <= names
        ]
        return reasons


def valid_parts() -> str:
    """The valid bases and techniques, in words (for error messages)."""
    return (
        f"a method is a base ({', '.join(BASES)}) and techniques ({', '.join(TECHNIQUES)}) joined by "
        "'+', e.g. 'velora+lora', 'full+gc'"
    )


def unknown_parts(name: str) -> list[str]:
    """The parts of ``name`` that are neither a base nor a technique."""
    return [p for p in name.split(SEPARATOR) if p and p not in BASES and p not in TECHNIQUES]


@functools.lru_cache(maxsize=512)
def parse_method(name: str) -> Composition:
    """The :class:`Composition` of ``name`` (any order of its parts).

    Raises:
        ValueError: an empty or unknown part (the message lists the valid bases and techniques), no
            base or more than one, a repeated technique, or parts that cannot go together (why).
    """
    if not isinstance(name, str) or not name.strip():
        raise ValueError(f"method must not be empty; {valid_parts()}")
    parts = name.split(SEPARATOR)
    if any(not p for p in parts):
        raise ValueError(f"method {name!r} has an empty part; join a base and techniques by single '+'")
    unknown = unknown_parts(name)
    if unknown:
        detail = "" if unknown == [name] else f" (unknown part(s) {unknown})"
        raise ValueError(f"unknown method {name!r}{detail}; {valid_parts()}")
    bases = [p for p in parts if p in BASES]
    if len(bases) != 1:
        raise ValueError(
            f"method {name!r} needs exactly one base ({', '.join(BASES)}), got {bases if bases else 'none'}"
        )
    techniques = [p for p in parts if p in TECHNIQUES]
    repeated = sorted({t for t in techniques if techniques.count(t) > 1})
    if repeated:
        raise ValueError(f"method {name!r} repeats the technique(s) {repeated}")
    present = set(parts)
    for pair, why in CONFLICTS.items():
        if pair <= present:
            a, b = sorted(pair)
            raise ValueError(f"method {name!r}: {a!r} and {b!r} do not combine: {why}")
    ordered = tuple(t for t in ("velora", *TECHNIQUE_ORDER) if t in present)
    return Composition(bases[0], ordered)


def canonical_method(name: str) -> str:
    """The canonical spelling of ``name`` (see the module docstring). Raises ValueError as
    :func:`parse_method` does."""
    return parse_method(name).name


def canonical_methods(
    methods: list[str], configs: dict[str, dict[str, Any]]
) -> tuple[list[str], dict[str, dict[str, Any]]]:
    """``methods`` and the keys of ``configs`` in their canonical spelling.

    Raises:
        ValueError: an invalid method (named), or two spellings of one method.
    """
    unknown = [name for name in methods if unknown_parts(name)]
    if unknown:
        raise ValueError(f"unknown method(s) {unknown}; {valid_parts()}")
    canonical = []
    for name in methods:
        try:
            canonical.append(canonical_method(name))
        except ValueError as exc:
            raise ValueError(f"methods: {exc}") from None
    repeated = sorted({m for m in canonical if canonical.count(m) > 1})
    if repeated:
        spellings = {m: [n for n, c in zip(methods, canonical, strict=True) if c == m] for m in repeated}
        raise ValueError(f"methods must not repeat (after putting their parts in order): {spellings}")
    out: dict[str, dict[str, Any]] = {}
    for name, config in configs.items():
        try:
            key = canonical_method(name)
        except ValueError as exc:
            raise ValueError(f"method_configs: {exc}") from None
        if key in out:
            raise ValueError(f"method_configs gives {key!r} twice (spelled differently)")
        out[key] = config
    return canonical, out


def trains_all_weights(method: str) -> bool:
    """Whether ``method``'s model is a whole trained model (its base trains every weight)."""
    return parse_method(method).base in WHOLE_MODEL_BASES


def check_method_device(method: str, device: str) -> None:
    """Refuse a method that needs CUDA on an explicit non-CUDA ``device`` (``auto`` is checked
    where the run starts, when the device is known).

    Raises:
        ValueError: naming the part and the device it needs.
    """
    if device.startswith("cuda") or device == "auto":
        return
    reasons = parse_method(method).cuda_reasons()
    if reasons:
        raise ValueError(f"method {method!r} needs a CUDA device, not {device!r}: {'; '.join(reasons)}")


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

    def check_against_model(self, linear_layers: dict[str, int]) -> None:
        comp = self.composition
        lora: LoRASettings | None = getattr(self, "lora", None)
        galore: GaLoreSettings | None = getattr(self, "galore", None)
        velora: VeLoRAConfig | None = getattr(self, "velora", None)
        if lora is not None:
            check_lora(lora, linear_layers)
        if galore is not None:
            check_galore(galore, linear_layers)
        if velora is not None:
            check_velora(velora, linear_layers, lora, quantised=comp.base == "qlora")


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
        "order": ["velora", "<base>", *TECHNIQUE_ORDER],
        "conflicts": [{"parts": sorted(pair), "why": why} for pair, why in CONFLICTS.items()],
        "cuda_pairs": [{"parts": sorted(pair), "why": why} for pair, why in CUDA_PAIRS.items()],
    }
