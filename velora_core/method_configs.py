"""Typed settings of the six training methods (pydantic, no torch), so specs validate anywhere.

``velora_core.methods.METHODS`` maps each name to its apply function; this module maps each name
to its settings class. They are kept apart only so that the backend can validate a spec without
importing torch.
"""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

#: The paper's placement for LLaMA: value projection and MLP down projection.
PAPER_TARGETS = ("v_proj", "down_proj")
LORA_ALL_LINEAR = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


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
            (recomputed every training batch), ``ema:<decay>`` (running average of batch means,
            ``0 < decay < 1``), ``random`` (a fixed random unit vector, seeded).
        scale: multiplies the weight gradient (``velora_scale``; 0.1 for fine-tuning in the paper).
    """

    model_config = ConfigDict(extra="forbid")

    num_groups: int | None = Field(default=32, ge=1, le=65536)
    sub_token_size: int | None = Field(default=None, ge=1, le=65536)
    target_modules: list[str] = Field(default_factory=lambda: list(PAPER_TARGETS), min_length=1)
    init: str = "batch_average_once"
    scale: float = Field(default=1.0, gt=0, le=1000)

    @field_validator("init")
    @classmethod
    def _check_init(cls, init: str) -> str:
        if init in ("batch_average_once", "batch_average", "random"):
            return init
        if init.startswith("ema:"):
            try:
                decay = float(init.removeprefix("ema:"))
            except ValueError:
                raise ValueError(
                    f"init {init!r}: the decay after 'ema:' must be a number, e.g. 'ema:0.9'"
                ) from None
            if not 0.0 < decay < 1.0:
                raise ValueError(f"init {init!r}: the ema decay must lie strictly between 0 and 1")
            return init
        raise ValueError(
            f"unknown init {init!r}; choose batch_average_once, batch_average, ema:<decay> or random"
        )

    @field_validator("target_modules")
    @classmethod
    def _check_patterns(cls, patterns: list[str]) -> list[str]:
        for p in patterns:
            try:
                re.compile(p)
            except re.error as exc:
                raise ValueError(
                    f"target_modules entry {p!r} is not a valid regular expression: {exc}"
                ) from None
        return patterns

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
        return self

    @property
    def ema_decay(self) -> float | None:
        return float(self.init.removeprefix("ema:")) if self.init.startswith("ema:") else None

    def groups_for(self, in_features: int) -> int:
        """Number of groups for a layer with ``in_features`` inputs.

        Raises:
            ValueError: if there would be more groups than features.
        """
        groups = self.num_groups if self.num_groups is not None else -(-in_features // self.sub_token_size)
        if groups > in_features:
            raise ValueError(f"num_groups={groups} exceeds the layer's {in_features} input features")
        return groups


class LoRASettings(BaseModel):
    """LoRA adapter settings, passed to peft's ``LoraConfig``."""

    model_config = ConfigDict(extra="forbid")

    r: int = Field(default=8, ge=1, le=4096)
    alpha: float = Field(default=16, gt=0)
    dropout: float = Field(default=0.0, ge=0, lt=1)
    target_modules: list[str] = Field(default_factory=lambda: list(LORA_ALL_LINEAR), min_length=1)


class QuantSettings(BaseModel):
    """bitsandbytes 4-bit settings, passed to transformers' ``BitsAndBytesConfig``."""

    model_config = ConfigDict(extra="forbid")

    quant_type: Literal["nf4", "fp4"] = "nf4"
    double_quant: bool = True
    compute_dtype: Literal["bf16", "fp32", "fp16"] = "bf16"


class MethodSettings(BaseModel):
    """Base of every method's settings."""

    model_config = ConfigDict(extra="forbid")

    def check_against_model(self, input_features: dict[str, int]) -> None:
        """Check settings that depend on the model's shape; ``input_features`` maps a module suffix
        (``v_proj``, ``down_proj``, …) to its input width. Raises ValueError."""


class FullSettings(MethodSettings):
    pass


class LoRAMethodSettings(MethodSettings):
    lora: LoRASettings = Field(default_factory=LoRASettings)


class QLoRAMethodSettings(LoRAMethodSettings):
    quant: QuantSettings = Field(default_factory=QuantSettings)


def _check_velora(velora: VeLoRAConfig, input_features: dict[str, int]) -> None:
    """Every targeted layer must have at least as many input features as groups. With LoRA the
    compressed input is that of ``lora_A``, whose width is the base layer's input."""
    for suffix, width in input_features.items():
        if any(re.fullmatch(p, suffix) or suffix.endswith(p) for p in velora.target_modules):
            velora.groups_for(width)


class VeLoRAFullSettings(MethodSettings):
    velora: VeLoRAConfig = Field(default_factory=lambda: VeLoRAConfig(scale=1.0))

    def check_against_model(self, input_features: dict[str, int]) -> None:
        _check_velora(self.velora, input_features)


class VeLoRALoRASettings(LoRAMethodSettings):
    velora: VeLoRAConfig = Field(default_factory=lambda: VeLoRAConfig(scale=0.1))

    def check_against_model(self, input_features: dict[str, int]) -> None:
        _check_velora(self.velora, input_features)


class VeLoRAQLoRASettings(QLoRAMethodSettings):
    velora: VeLoRAConfig = Field(default_factory=lambda: VeLoRAConfig(scale=0.1))

    def check_against_model(self, input_features: dict[str, int]) -> None:
        _check_velora(self.velora, input_features)


METHOD_CONFIGS: dict[str, type[MethodSettings]] = {
    "full": FullSettings,
    "lora": LoRAMethodSettings,
    "qlora": QLoRAMethodSettings,
    "velora+full": VeLoRAFullSettings,
    "velora+lora": VeLoRALoRASettings,
    "velora+qlora": VeLoRAQLoRASettings,
}


def method_config_for(method: str, settings: dict[str, Any] | MethodSettings | None) -> MethodSettings:
    """Parse ``settings`` with the settings class of ``method``.

    Raises:
        ValueError: unknown method, or settings that do not validate (the message names the field).
    """
    try:
        cls = METHOD_CONFIGS[method]
    except KeyError:
        raise ValueError(f"unknown method {method!r}; choose one of {sorted(METHOD_CONFIGS)}") from None
    if isinstance(settings, cls):
        return settings
    try:
        return cls.model_validate(settings or {})
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or '(settings)'}: {err['msg']}" for err in exc.errors()
        )
        raise ValueError(f"invalid settings for method {method!r}: {problems}") from None
