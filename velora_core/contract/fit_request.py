""" "Will it fit?": the request and the per-method answer (no torch, so the API and dashboard share them).

``velora-bench fit`` and ``POST /api/v1/fit`` take a :class:`FitRequest` and answer with one
:class:`FitEstimate` per method: the peak bytes of a steady training step predicted under
``FakeTensorMode`` (``velora_core.bench.fit_prediction``), by component, and with a card size whether it fits and the
largest micro-batch that does.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SerializerFunctionWrapHandler,
    model_serializer,
    model_validator,
)

from velora_core.contract.method_parts import canonical_methods
from velora_core.contract.precision import Autocast, check_precision
from velora_core.contract.result import PEAK_COMPONENTS, ComponentBytes
from velora_core.contract.spec import MAX_MICRO_BATCH, MAX_NAME_LENGTH, Dtype

GIB = 1024**3
#: A fit request's bounds: a fake step costs CPU time that grows with the micro-batch and the layers.
MAX_FIT_METHODS = 12
MAX_FIT_MICRO_BATCH = 1024
MAX_FIT_SEQ_LEN = 32_768
MAX_GPU_GIB = 4096.0
#: The largest micro-batch the search reports: a run spec's own bound.
MAX_SEARCHED_MICRO_BATCH = MAX_MICRO_BATCH


class FitRequest(BaseModel):
    """One "will it fit" question.

    Args:
        model: a model preset (``llama-7b``), a hub id (its ``config.json`` only) or a local
            directory holding a ``config.json``.
        methods: the training methods to predict, each once.
        method_configs: settings per method (as in a ComparisonSpec).
        micro_batch, seq_len, dtype: the step's shape and the weights' dtype.
        autocast: mixed precision (``bf16`` or ``fp16`` on fp32 weights), as a RunSpec's ``autocast``.
        gpu_gib: the card's memory in GiB (2³⁰ bytes); with it, ``fits`` and ``max_micro_batch``.
    """

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    model: str = Field(min_length=1, max_length=MAX_NAME_LENGTH)
    methods: list[Annotated[str, Field(max_length=50)]] = Field(min_length=1, max_length=MAX_FIT_METHODS)
    method_configs: dict[str, dict[str, Any]] = Field(default_factory=dict)
    micro_batch: int = Field(default=8, ge=1, le=MAX_FIT_MICRO_BATCH)
    seq_len: int = Field(default=512, ge=8, le=MAX_FIT_SEQ_LEN)
    dtype: Dtype = "bf16"
    autocast: Autocast | None = None
    gpu_gib: float | None = Field(default=None, gt=0, le=MAX_GPU_GIB)

    @model_validator(mode="after")
    def _check(self) -> FitRequest:
        # Composed names (base + techniques) in their one canonical spelling, as a spec stores them.
        self.methods, self.method_configs = canonical_methods(self.methods, self.method_configs)
        check_precision(self.dtype, self.autocast, memory_only=True)
        stray = sorted(set(self.method_configs) - set(self.methods))
        if stray:
            raise ValueError(f"method_configs names methods not in the request: {stray}")
        return self

    @model_serializer(mode="wrap")
    def _omit_unset_autocast(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        data = handler(self)  # a request without autocast reads back as it did before the field
        if data.get("autocast", "") is None:
            data.pop("autocast")
        return data

    @property
    def gpu_bytes(self) -> int | None:
        return None if self.gpu_gib is None else int(self.gpu_gib * GIB)


class FitEstimate(ComponentBytes):
    """One method's predicted steady step (``tracked_step``; step 1's peak, with no optimizer state
    yet, in ``first_step_peak_bytes``): the peak and its phase, the bytes at the peak by component
    (:data:`~velora_core.contract.result.PEAK_COMPONENTS`, they add up to ``peak_bytes``), and with a
    card size ``fits`` and ``max_micro_batch`` (None: even 1 does not fit)."""

    method: str
    micro_batch: int
    seq_len: int
    dtype: str
    autocast: str | None = None
    peak_bytes: int
    peak_phase: str
    tracked_step: str = "steady"
    first_step_peak_bytes: int | None = None
    gpu_bytes: int | None = None
    fits: bool | None = None
    max_micro_batch: int | None = None
    notes: list[str] = Field(default_factory=list)
    seconds: float = 0.0

    def components(self) -> dict[str, int]:
        return {name: getattr(self, name) for name in PEAK_COMPONENTS}
