"""Typed settings of the parts a training method is made of (pydantic, no torch), so specs validate
anywhere, and the checks of those settings against a model's layers.

A method is a base plus memory techniques (``velora_core.contract.method_parts`` composes them);
each part contributes sections (``lora``, ``quant``, ``galore``, ``velora``, ``adam8bit``,
``offload``) whose models live here. ``velora_core.methods.registry`` holds each part's code. They are kept
apart only so that the backend can validate a spec without importing torch.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from functools import lru_cache
from typing import Annotated, Any, Literal, get_args

import re2
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SerializerFunctionWrapHandler,
    field_validator,
    model_serializer,
    model_validator,
)

#: The paper's placement for LLaMA: value projection and MLP down projection.
PAPER_TARGETS = ("v_proj", "down_proj")
LORA_ALL_LINEAR = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
#: Where peft puts the original model inside a ``PeftModelForCausalLM`` (module names gain it).
PEFT_PREFIX = "base_model.model."

#: One target pattern: a module-name suffix or a regular expression.
TargetPattern = Annotated[str, Field(min_length=1, max_length=200)]
TargetList = Annotated[list[TargetPattern], Field(min_length=1, max_length=64)]
#: How VeLoRA's projection vector ``v`` is set (see ``VeLoRAConfig``).
VeLoRAInit = Literal["batch_average_once", "batch_average", "ema", "random"]


def check_velora_init(init: str, ema_decay: float | None) -> None:
    """``init`` must be one of ``VeLoRAInit``; ``ema`` needs a decay strictly between 0 and 1 and
    every other init takes none.

    Raises:
        ValueError: saying which.
    """
    if init not in get_args(VeLoRAInit):
        raise ValueError(f"unknown init {init!r}; choose one of {', '.join(get_args(VeLoRAInit))}")
    if init == "ema" and ema_decay is None:
        raise ValueError("init 'ema' needs ema_decay, a number strictly between 0 and 1 (e.g. 0.9)")
    if init != "ema" and ema_decay is not None:
        raise ValueError(f"ema_decay is only used with init 'ema', not {init!r}")
    if ema_decay is not None and not 0.0 < ema_decay < 1.0:
        raise ValueError(f"ema_decay {ema_decay} must lie strictly between 0 and 1")


def target_matches(name: str, patterns: Sequence[str]) -> bool:
    """VeLoRA's target matcher: a pattern matches a module's full name (regular-expression full
    match, RE2 syntax) or its last dotted component(s). The one definition, used by the injection
    and by the spec checks (the API's and the worker's)."""
    return any(name == p or name.endswith("." + p) or _compiled(p).fullmatch(name) for p in patterns)


#: The most memory RE2 may use for one compiled pattern (a 200-character pattern needs a few kB).
_RE2_MAX_MEM = 1 << 20


@lru_cache(maxsize=1024)
def _compiled(pattern: str) -> Any:
    """``pattern`` compiled by RE2: matching takes time linear in the name, whatever the pattern
    (no backtracking), so no target list can stall whoever checks it (issue 22, item 1).

    Raises:
        ValueError: the pattern is not valid RE2 syntax (back-references and look-arounds are not),
            or its program is too large (e.g. large counted repetitions).
    """
    options = re2.Options()
    options.max_mem = _RE2_MAX_MEM
    options.log_errors = False
    try:
        return re2.compile(pattern, options)
    except re2.error as exc:
        reason = exc.args[0].decode(errors="replace") if exc.args and isinstance(exc.args[0], bytes) else exc
        raise ValueError(
            f"target_modules entry {pattern!r} is not a regular expression this server accepts "
            f"(RE2 syntax: no back-references or look-arounds, repetition counts up to 1000): {reason}"
        ) from None


def lora_target_matches(name: str, patterns: Sequence[str]) -> bool:
    """peft's matcher for a list of ``target_modules``: the full name or its last component(s)."""
    return any(name == p or name.endswith("." + p) for p in patterns)


def check_target_patterns(patterns: list[str]) -> list[str]:
    """Each pattern must compile under RE2 (linear-time matching; see :func:`_compiled`).

    Raises:
        ValueError: naming the offending entry.
    """
    for p in patterns:
        _compiled(p)
    return patterns


class VeLoRAConfig(BaseModel):
    """VeLoRA settings (Miles et al., 2024).

    Args:
        num_groups: sub-tokens per token, ``G``; each has ``D / G`` features. Give this or
            ``sub_token_size``. When ``D % G != 0`` the input is zero-padded to ``G * ceil(D / G)``
            features, as peft does (the padding contributes nothing to ``z``).
        sub_token_size: ``S``, the features per sub-token; ``G = ceil(D / S)`` per layer.
        target_modules: module-name suffixes or regular expressions (full match) to wrap.
        init: how the projection vector ``v`` is set: ``batch_average_once`` (normalised mean of the
            first training batch's sub-tokens, then frozen; the paper's best), ``batch_average``
            (recomputed every training batch), ``ema`` (running average of batch means, weighted by
            ``ema_decay``), ``random`` (a fixed random unit vector, seeded). The older spelling
            ``"ema:<decay>"`` is accepted and read as ``init="ema", ema_decay=<decay>``.
        ema_decay: the weight of the running mean in ``ema``, ``0 < decay < 1``; required for
            ``ema`` and refused with any other init.
        scale: multiplies the weight gradient (``velora_scale``; 0.1 for fine-tuning in the paper).
    """

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    num_groups: int | None = Field(default=32, ge=1, le=65536)
    sub_token_size: int | None = Field(default=None, ge=1, le=65536)
    target_modules: TargetList = Field(default_factory=lambda: list(PAPER_TARGETS))
    init: VeLoRAInit = "batch_average_once"
    ema_decay: float | None = Field(
        default=None,
        gt=0,
        lt=1,
        title="EMA decay",
        description="Weight of the running mean; only with init 'ema'.",
    )
    scale: float = Field(default=1.0, gt=0, le=1000)

    @model_validator(mode="before")
    @classmethod
    def _split_ema_string(cls, data: Any) -> Any:
        """Read the older ``init="ema:<decay>"`` as ``init="ema", ema_decay=<decay>``."""
        if not isinstance(data, dict):
            return data
        init = data.get("init")
        if not isinstance(init, str) or not init.startswith("ema:"):
            return data
        try:
            decay = float(init.removeprefix("ema:"))
        except ValueError:
            raise ValueError(
                f"init {init!r}: the decay after 'ema:' must be a number, e.g. 'ema:0.9'"
            ) from None
        if data.get("ema_decay") is not None:
            raise ValueError(f"init {init!r} and ema_decay both give the decay; give only ema_decay")
        return dict(data, init="ema", ema_decay=decay)

    @field_validator("target_modules")
    @classmethod
    def _check_patterns(cls, patterns: list[str]) -> list[str]:
        return check_target_patterns(patterns)

    @model_validator(mode="before")
    @classmethod
    def _one_of_groups_or_size(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("sub_token_size") is not None and "num_groups" not in data:
            data = dict(data, num_groups=None)
        return data

    @model_validator(mode="after")
    def _check_groups(self) -> VeLoRAConfig:
        if (self.num_groups is None) == (self.sub_token_size is None):
            raise ValueError("give exactly one of num_groups and sub_token_size")
        check_velora_init(self.init, self.ema_decay)
        return self

    @model_serializer(mode="wrap")
    def _omit_unused_decay(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        # Without ``ema`` there is no decay: leaving it out keeps the specs (and their hashes, which
        # name pre-trained artifacts) exactly as they were before the field existed.
        data = handler(self)
        if self.ema_decay is None:
            data.pop("ema_decay", None)
        return data

    def groups_for(self, in_features: int) -> int:
        """Number of groups for a layer with ``in_features`` inputs.

        Raises:
            ValueError: if there would be more groups than features.
        """
        if self.num_groups is not None:
            groups = self.num_groups
        else:
            assert self.sub_token_size is not None  # the validator requires one of the two
            groups = -(-in_features // self.sub_token_size)
        if groups > in_features:
            raise ValueError(f"num_groups={groups} exceeds the layer's {in_features} input features")
        return groups


class OwnLearningRate(BaseModel):
    """A settings section with an optional ``lr`` of its own (LoRA's, full fine-tuning's), left out of
    the dump when unset, so the specs (and hashes) written before the field existed stay the same."""

    @model_serializer(mode="wrap")
    def _omit_unset_lr(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        data = handler(self)
        if data.get("lr") is None:
            data.pop("lr", None)
        return data


class LoRASettings(OwnLearningRate):
    """LoRA adapter settings, passed to peft's ``LoraConfig``."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    r: int = Field(default=8, ge=1, le=4096)
    alpha: float = Field(default=16, gt=0, le=1e6)
    dropout: float = Field(default=0.0, ge=0, lt=1)
    target_modules: TargetList = Field(default_factory=lambda: list(LORA_ALL_LINEAR))
    lr: float | None = Field(
        default=None,
        gt=0,
        le=10,
        description=(
            "The learning rate of the whole run under this LoRA method (adapters usually want a higher "
            "one than full training); None keeps optimizer.lr."
        ),
    )


class FullSettings(OwnLearningRate):
    """Settings of the bases that update every weight (``full`` and what composes it: ``full+gc``,
    ``velora+full``)."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    lr: float | None = Field(
        default=None,
        gt=0,
        le=10,
        description=(
            "The learning rate of the whole run under this method (full fine-tuning usually wants about "
            "a tenth of LoRA's); None keeps optimizer.lr."
        ),
    )


class QuantSettings(BaseModel):
    """bitsandbytes 4-bit settings, passed to transformers' ``BitsAndBytesConfig``."""

    model_config = ConfigDict(extra="forbid")

    quant_type: Literal["nf4", "fp4"] = "nf4"
    double_quant: bool = True
    compute_dtype: Literal["bf16", "fp32", "fp16"] = "bf16"


class GaLoreSettings(BaseModel):
    """GaLore settings (Zhao et al., 2024), passed as a parameter group to galore-torch's optimizer.

    Args:
        rank: the rank of the gradient projection (the paper: 128 for LLaMA-60M, 256 for 130M); a
            layer smaller than ``rank`` keeps its full size (the SVD has no more directions).
        update_proj_gap: optimizer steps between recomputing the projection by SVD (``T``, 200).
        scale: multiplies the projected-back update (``alpha``, 0.25).
        proj_type: which side is projected (``std``: the smaller one).
        target_modules: the linear layers whose weights get the projection (suffixes or regular
            expressions, as for VeLoRA); every other trainable parameter gets plain AdamW state.
        lr: the learning rate of the whole run under GaLore (GaLore tunes it per method: 0.01);
            None keeps ``optimizer.lr``.
    """

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    rank: int = Field(default=128, ge=1, le=65536)
    update_proj_gap: int = Field(default=200, ge=1, le=1_000_000)
    scale: float = Field(default=0.25, gt=0, le=1000)
    proj_type: Literal["std", "reverse_std", "right", "left", "full"] = "std"
    target_modules: TargetList = Field(default_factory=lambda: list(LORA_ALL_LINEAR))
    lr: float | None = Field(default=None, gt=0, le=10)

    @field_validator("target_modules")
    @classmethod
    def _check_patterns(cls, patterns: list[str]) -> list[str]:
        return check_target_patterns(patterns)


class Adam8bitSettings(BaseModel):
    """bitsandbytes' 8-bit AdamW state (block-wise quantised moments, Dettmers et al., 2022)."""

    model_config = ConfigDict(extra="forbid")

    min_8bit_size: int = Field(
        default=4096,
        ge=1,
        le=2**31 - 1,
        description="Tensors with fewer elements keep 32-bit state (bitsandbytes' default).",
    )


class OffloadSettings(BaseModel):
    """Saved activations to host memory during forward (``torch.autograd.graph.save_on_cpu``)."""

    model_config = ConfigDict(extra="forbid")

    pin_memory: bool = Field(default=True, description="Copy into pinned host memory (asynchronous).")


class MethodSettings(BaseModel):
    """Base of every method's settings (``velora_core.contract.method_parts`` composes them)."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    def check_against_model(self, linear_layers: dict[str, int]) -> None:
        """Check, before anything is loaded, the settings that depend on the model's layers;
        ``linear_layers`` maps each ``nn.Linear``'s full name (``model.layers.0.self_attn.v_proj``,
        ``lm_head``) to its input width. Raises ValueError with what the worker would report."""


def _short_names(names: Iterable[str]) -> list[str]:
    return sorted({n.rsplit(".", 1)[-1] for n in names})


def lora_layers(lora: LoRASettings, linear_layers: dict[str, int]) -> dict[str, int]:
    """The linear layers peft gives an adapter."""
    return {n: w for n, w in linear_layers.items() if lora_target_matches(n, lora.target_modules)}


def check_lora(lora: LoRASettings, linear_layers: dict[str, int]) -> None:
    """peft refuses a LoraConfig whose targets match nothing (the embedding is a target too)."""
    names = [*linear_layers, "model.embed_tokens"]
    if not any(lora_target_matches(n, lora.target_modules) for n in names):
        raise ValueError(
            f"lora.target_modules {lora.target_modules} match no layer of this model; its "
            f"linear layers: {_short_names(linear_layers)}"
        )


def check_galore(galore: GaLoreSettings, linear_layers: dict[str, int]) -> None:
    """GaLore's targets must name at least one linear layer."""
    if not any(target_matches(n, galore.target_modules) for n in linear_layers):
        raise ValueError(
            f"galore.target_modules {galore.target_modules} match no linear layer of this model; its "
            f"linear layers: {_short_names(linear_layers)}"
        )


def _velora_candidates(
    linear_layers: dict[str, int], lora: LoRASettings | None, quantised: bool
) -> dict[str, tuple[int, str | None]]:
    """The modules ``apply_velora`` sees, by full name: (input width, why it cannot take VeLoRA or None).

    Without LoRA they are the model's linear layers. With LoRA (names under peft's prefix), a layer
    with an adapter has its ``lora_A``/``lora_B`` (trainable) and its frozen ``base_layer`` (4-bit
    with QLoRA, which VeLoRA skips); a layer without an adapter is frozen.
    """
    if lora is None:
        return {name: (width, None) for name, width in linear_layers.items()}
    frozen = (
        "a frozen nn.Linear without a LoRA adapter: VeLoRA only saves memory for a layer whose weight trains"
    )
    adapted = lora_layers(lora, linear_layers)
    out: dict[str, tuple[int, str | None]] = {}
    for name, width in linear_layers.items():
        full = PEFT_PREFIX + name
        if name not in adapted:
            out[full] = (width, frozen if not quantised or name == "lm_head" else "a 4-bit layer")
            continue
        out[full] = (width, None)
        if not quantised:
            out[f"{full}.base_layer"] = (width, frozen)
        out[f"{full}.lora_A.default"] = (width, None)
        out[f"{full}.lora_B.default"] = (lora.r, None)
    return out


def check_velora(
    velora: VeLoRAConfig,
    linear_layers: dict[str, int],
    lora: LoRASettings | None = None,
    quantised: bool = False,
) -> None:
    """What ``apply_velora`` would refuse, checked on the known layers: a targeted layer with fewer
    input features than groups (with LoRA the compressed input is ``lora_A``'s, the base layer's
    width), a targeted layer that cannot take VeLoRA, or targets that match nothing."""
    matched = False
    for name, (width, refusal) in _velora_candidates(linear_layers, lora, quantised).items():
        if not target_matches(name, velora.target_modules):
            continue
        if refusal is not None:
            raise ValueError(f"VeLoRA target {name!r} is {refusal}")
        try:
            velora.groups_for(width)
        except ValueError as exc:
            raise ValueError(f"VeLoRA target {name!r}: {exc}") from None
        matched = True
    if not matched:
        raise ValueError(
            f"VeLoRA target_modules {velora.target_modules} match no module; linear layers in this "
            f"model: {_short_names(linear_layers)}"
        )
