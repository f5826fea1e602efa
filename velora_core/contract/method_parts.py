"""Methods as a base plus memory techniques, composed and checked without torch.

A method name is one **base** and any **techniques** joined by ``+``:

- bases: ``full`` (every weight trains), ``lora`` (peft adapters on a frozen base), ``qlora`` (LoRA
  on a 4-bit base), ``galore`` (full training, gradients projected to low rank in the optimizer),
  ``lora-fa`` (LoRA with ``lora_A`` frozen, peft's LoRA-FA optimizer);
- techniques: ``velora`` (compressed layer inputs), ``gc`` (gradient checkpointing), ``8bit``
  (8-bit AdamW state), ``offload`` (saved activations to host memory; CUDA only).

The order of the parts does not change the method. The one spelling stored and shown is the
**canonical** one: ``velora`` first, then the base, then the other techniques in the order of
registration (``gc``, ``8bit``, ``offload``): ``lora+gc+velora`` is ``velora+lora+gc``.
This keeps the six original names (``full``, ``lora``, ``qlora``, ``velora+full``,
``velora+lora``, ``velora+qlora``) as they were.

Each part is registered once, as one entry of :data:`BASES` or :data:`TECHNIQUES` (peft's
``register_peft_method`` in spirit; :func:`register_method_part` adds one): its description, the
settings sections it adds (models in :mod:`velora_core.contract.method_configs`), its apply step
*by reference* (``module:function``, resolved by ``velora_core.methods.registry`` on the torch
side), for a base the optimizer it trains with (a kind of ``velora_core.methods.optimizers``), and
the device it needs. A method's settings are the sections of its parts
(:mod:`velora_core.contract.method_settings`); :data:`CONFLICTS` says which parts cannot go
together, and why.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel

from velora_core.contract.method_configs import (
    Adam8bitSettings,
    FullSettings,
    GaLoreSettings,
    LoRASettings,
    OffloadSettings,
    QuantSettings,
    VeLoRAConfig,
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


#: The module of the methods' code: ``apply`` names a function in one of its modules.
METHOD_CODE = "velora_core.methods"


@dataclass(frozen=True)
class MethodPart:
    """A base or a technique, registered once.

    Attributes:
        name: its spelling in a method name.
        description: one sentence, for listings.
        apply: ``module:function`` under :data:`METHOD_CODE`: a base's builds the prepared model
            from a model source and the settings, a technique's changes it in place.
        sections: the settings sections it adds to its methods.
        optimizer: a base's optimizer kind (``velora_core.methods.optimizers.OPTIMIZERS``).
        needs_cuda: why it needs CUDA, None if it runs anywhere.
        before_base: a technique spelled before the base in the canonical name (``velora``).
    """

    name: str
    description: str
    apply: str
    sections: tuple[Section, ...] = ()
    optimizer: str | None = None
    needs_cuda: str | None = None
    before_base: bool = False


def _plain(model: type[BaseModel]) -> Callable[[str], BaseModel]:
    return lambda base: model()


def _velora_default(base: str) -> VeLoRAConfig:
    # The paper's fine-tuning scale (0.1) where adapters train; 1.0 where the base weights train.
    return VeLoRAConfig(scale=1.0 if base in WHOLE_MODEL_BASES else 0.1)


_LORA = Section("lora", LoRASettings, _plain(LoRASettings))

BASES: dict[str, MethodPart] = {
    p.name: p
    for p in (
        MethodPart(
            "full",
            "Full training: every weight trains, AdamW state for each",
            "bases:prepare_full",
            (Section("full", FullSettings, _plain(FullSettings)),),
            optimizer="adamw",
        ),
        MethodPart(
            "lora",
            "LoRA adapters (peft) on a frozen base",
            "bases:prepare_lora",
            (_LORA,),
            optimizer="adamw",
        ),
        MethodPart(
            "qlora",
            "LoRA on a 4-bit NF4 base (bitsandbytes)",
            "bases:prepare_qlora",
            (_LORA, Section("quant", QuantSettings, _plain(QuantSettings))),
            optimizer="adamw",
        ),
        MethodPart(
            "galore",
            "Full training with GaLore: gradients projected to low rank, AdamW state of that rank "
            "(galore-torch)",
            "bases:prepare_galore",
            (Section("galore", GaLoreSettings, _plain(GaLoreSettings)),),
            optimizer="galore",
        ),
        MethodPart(
            "lora-fa",
            "LoRA-FA: LoRA with lora_A frozen, so only lora_B's narrow input is kept (peft's optimizer)",
            "bases:prepare_lora_fa",
            (_LORA,),
            optimizer="lorafa",
        ),
    )
}

TECHNIQUES: dict[str, MethodPart] = {
    p.name: p
    for p in (
        MethodPart(
            "velora",
            "VeLoRA: each targeted layer keeps its input as rank-1 sub-token projections",
            "techniques:apply_velora_technique",
            (Section("velora", VeLoRAConfig, _velora_default),),
            before_base=True,
        ),
        MethodPart(
            "gc",
            "Gradient checkpointing (transformers, non-reentrant): each decoder layer keeps only its "
            "inputs and recomputes its forward during backward",
            "techniques:apply_gradient_checkpointing",
        ),
        MethodPart(
            "8bit",
            "8-bit AdamW state (bitsandbytes, block-wise quantised moments)",
            "techniques:apply_8bit",
            (Section("adam8bit", Adam8bitSettings, _plain(Adam8bitSettings)),),
        ),
        MethodPart(
            "offload",
            "Saved activations copied to host memory during forward, back for backward "
            "(torch.autograd.graph.save_on_cpu)",
            "techniques:apply_offload",
            (Section("offload", OffloadSettings, _plain(OffloadSettings)),),
            needs_cuda="it moves saved activations from the GPU to host memory (on the CPU they are "
            "already there)",
        ),
    )
}


def _before_base() -> tuple[str, ...]:
    """The techniques spelled before the base in a canonical name (``velora``), in registry order."""
    return tuple(t for t, part in TECHNIQUES.items() if part.before_base)


def _after_base() -> tuple[str, ...]:
    """The techniques spelled after the base, in registry order (``gc``, ``8bit``, ``offload``)."""
    return tuple(t for t, part in TECHNIQUES.items() if not part.before_base)


def canonical_order() -> list[str]:
    """The order of a canonical name's parts, in words: ``["velora", "<base>", "gc", "8bit", "offload"]``."""
    return [*_before_base(), "<base>", *_after_base()]


def register_method_part(part: MethodPart, *, base: bool) -> None:
    """Register a new base (``base=True``) or technique: its name must be new, and a base must name
    its optimizer. A technique goes after those registered before it in the canonical order.

    Raises:
        ValueError: a name already taken, a ``+`` in it, or a base without an optimizer.
    """
    if part.name in BASES or part.name in TECHNIQUES or SEPARATOR in part.name or not part.name:
        raise ValueError(f"method part {part.name!r} is already registered or not a valid name")
    if base and part.optimizer is None:
        raise ValueError(f"base {part.name!r} must name its optimizer")
    # Cached compositions and settings classes stay valid: a new part only makes new names.
    (BASES if base else TECHNIQUES)[part.name] = part


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
        first = tuple(t for t in _before_base() if t in self.techniques)
        rest = tuple(t for t in _after_base() if t in self.techniques)
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
    ordered = tuple(t for t in (*_before_base(), *_after_base()) if t in present)
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
