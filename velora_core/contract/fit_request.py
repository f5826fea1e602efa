""" "Will it fit?": the request and the per-method answer (no torch, so the API and dashboard share them).

``velora-bench fit`` and ``POST /api/v1/fit`` take a :class:`FitRequest` — a model and methods with
the step's shape, or a whole RunSpec / ComparisonSpec (``spec``), as ``run`` would run it — and
answer with one :class:`FitEstimate` per method: a steady step's peak *allocated* bytes predicted under
``FakeTensorMode`` (``velora_core.bench.fit_prediction``), by component; the caching allocator's
peak *reserved* bytes over the run (``velora_core.memory.reserved``); the CUDA context
(``velora_core.contract.cards``); and with a card size whether reserved + context fits and the
largest micro-batch that does.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SerializerFunctionWrapHandler,
    ValidationError,
    model_serializer,
    model_validator,
)

from velora_core.contract.cards import CARD_FAMILIES, DEFAULT_CARD_FAMILY, MIB, CardFamilyName
from velora_core.contract.errors import validation_message
from velora_core.contract.method_parts import canonical_methods
from velora_core.contract.precision import Autocast, check_precision
from velora_core.contract.presets.model_shapes import MODEL_PRESETS
from velora_core.contract.result import PEAK_COMPONENTS, ComponentBytes
from velora_core.contract.spec import MAX_MICRO_BATCH, MAX_NAME_LENGTH, Dtype, RunSpec, read_spec

GIB = 1024**3
#: A fit request's bounds: a fake step costs CPU time that grows with the micro-batch and the layers.
MAX_FIT_METHODS = 12
MAX_FIT_MICRO_BATCH = 1024
MAX_FIT_SEQ_LEN = 32_768
MAX_GPU_GIB = 4096.0
#: The largest micro-batch the search reports: a run spec's own bound.
MAX_SEARCHED_MICRO_BATCH = MAX_MICRO_BATCH
#: Workloads whose step fit predicts (a causal language model's training step).
FIT_WORKLOADS = ("pretrain", "finetune")
#: The fields that describe the run when no ``spec`` is given.
_SHAPE_FIELDS = {"model", "methods", "method_configs", "micro_batch", "seq_len", "dtype", "autocast"}


def model_spec(name: str, allow_local: bool = True) -> dict[str, Any]:
    """A preset name, a local directory with a ``config.json`` (when ``allow_local``) or a hub id,
    as a RunSpec's ``model`` (``memory_only``: random weights of that shape, config only)."""
    if name in MODEL_PRESETS:
        return {"source": "preset", "name": name, "memory_only": True}
    if allow_local and (Path(name) / "config.json").is_file():
        return {"source": "local", "name": name, "memory_only": True}
    return {"source": "hub", "name": name, "memory_only": True}


def fit_run(spec: RunSpec, allow_local: bool = True) -> RunSpec:
    """``spec`` as fit steps it: the same method, settings, shape, precision and optimizer; the model's
    shape only (``memory_only``; an artifact is its pre-training run's model); on the CPU.

    Raises:
        ValueError: a workload fit does not predict, or a local folder where none may be read.
    """
    if spec.workload not in FIT_WORKLOADS:
        raise ValueError(f"fit predicts the {' and '.join(FIT_WORKLOADS)} workloads, not {spec.workload!r}")
    model = (
        spec.model.pretrain.model if spec.model.source == "artifact" and spec.model.pretrain else spec.model
    )
    if model.source == "local" and not allow_local:
        raise ValueError("model.source 'local' is not offered here; name a preset or a hub id")
    data = spec.model_dump(mode="json")
    data["model"] = {**model.model_dump(mode="json", exclude={"pretrain"}), "memory_only": True}
    data.update(device="cpu", save_artifact=False, max_batch_search=False, eval={"metric": "none"})
    try:
        return RunSpec.model_validate(data)
    except ValidationError as exc:
        raise ValueError(f"method {spec.method!r}: {validation_message(exc, whole=None)}") from None


class FitRequest(BaseModel):
    """One "will it fit" question.

    Args:
        model: a model preset (``llama-7b``), a hub id (its ``config.json`` only) or a local
            directory holding a ``config.json``.
        methods: the training methods to predict, each once.
        method_configs: settings per method (as in a ComparisonSpec).
        micro_batch, seq_len, dtype: the step's shape and the weights' dtype.
        autocast: mixed precision (``bf16`` or ``fp16`` on fp32 weights), as a RunSpec's ``autocast``.
        spec: instead of the six above, a whole RunSpec or ComparisonSpec (as ``velora-bench run``
            reads it): every setting of the run (LoRA rank and targets, VeLoRA groups, GaLore rank,
            ``grad_accum``, the optimizer, gradient clipping, precision) is predicted as it would run.
        gpu_gib: the card's memory in GiB (2³⁰ bytes); with it, ``fits`` and ``max_micro_batch``.
        card_family: which constants of ``velora_core.contract.cards`` apply (context, cuBLAS workspace).
        context_mib: the CUDA context in MiB, instead of the family's.
        expandable_segments: the allocator runs with ``expandable_segments:True``.
    """

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    model: str | None = Field(default=None, min_length=1, max_length=MAX_NAME_LENGTH)
    methods: list[Annotated[str, Field(max_length=50)]] | None = Field(
        default=None, min_length=1, max_length=MAX_FIT_METHODS
    )
    method_configs: dict[str, dict[str, Any]] = Field(default_factory=dict)
    micro_batch: int = Field(default=8, ge=1, le=MAX_FIT_MICRO_BATCH)
    seq_len: int = Field(default=512, ge=8, le=MAX_FIT_SEQ_LEN)
    dtype: Dtype = "bf16"
    autocast: Autocast | None = None
    spec: dict[str, Any] | None = None
    gpu_gib: float | None = Field(default=None, gt=0, le=MAX_GPU_GIB)
    card_family: CardFamilyName = DEFAULT_CARD_FAMILY
    context_mib: float | None = Field(default=None, ge=0, le=MAX_GPU_GIB * 1024)
    expandable_segments: bool = False

    @model_validator(mode="after")
    def _check(self) -> FitRequest:
        if self.spec is not None:
            both = sorted(_SHAPE_FIELDS & self.model_fields_set)
            if both:
                raise ValueError(f"give either spec or {', '.join(both)}, not both (the spec says them)")
            runs = self.runs()
            if len(runs) > MAX_FIT_METHODS:
                raise ValueError(f"the spec has {len(runs)} methods; fit takes {MAX_FIT_METHODS} at most")
            bad = [
                r.method for r in runs if r.micro_batch > MAX_FIT_MICRO_BATCH or r.seq_len > MAX_FIT_SEQ_LEN
            ]
            if bad:
                raise ValueError(
                    f"fit predicts micro-batches up to {MAX_FIT_MICRO_BATCH} and sequences up to "
                    f"{MAX_FIT_SEQ_LEN} tokens; method(s) {bad} ask for more"
                )
            return self
        if self.model is None or self.methods is None:
            raise ValueError("give model and methods (with micro_batch, seq_len, dtype), or a spec")
        # Composed names (base + techniques) in their one canonical spelling, as a spec stores them.
        self.methods, self.method_configs = canonical_methods(self.methods, self.method_configs)
        check_precision(self.dtype, self.autocast, memory_only=True)
        stray = sorted(set(self.method_configs) - set(self.methods))
        if stray:
            raise ValueError(f"method_configs names methods not in the request: {stray}")
        return self

    def runs(self) -> list[RunSpec]:
        """The run of each method, as given (a ComparisonSpec's first seed; the spec not yet
        turned into fit's form, :func:`fit_run`).

        Raises:
            ValueError: the spec, or a method's run, does not validate (named).
        """
        if self.spec is not None:
            spec = read_spec(self.spec)
            return [spec] if isinstance(spec, RunSpec) else spec.runs()[: len(spec.methods)]
        out = []
        for method in self.methods or []:
            data = {
                "workload": "finetune",
                "model": model_spec(self.model or "", allow_local=True),
                "dataset": {"name": "stdlib-corpus"},
                "method": method,
                "method_config": self.method_configs.get(method, {}),
                "seq_len": self.seq_len,
                "micro_batch": self.micro_batch,
                "steps": 1,
                "dtype": self.dtype,
                **({"autocast": self.autocast} if self.autocast else {}),
                "device": "cpu",
                "eval": {"metric": "none"},
                "save_artifact": False,
            }
            try:
                out.append(RunSpec.model_validate(data))
            except ValidationError as exc:
                raise ValueError(f"method {method!r}: {validation_message(exc, whole=None)}") from None
        return out

    @model_serializer(mode="wrap")
    def _omit_unset_autocast(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        data = handler(self)  # a request without autocast reads back as it did before the field
        if data.get("autocast", "") is None:
            data.pop("autocast")
        return data

    @property
    def gpu_bytes(self) -> int | None:
        return None if self.gpu_gib is None else int(self.gpu_gib * GIB)

    @property
    def context_bytes(self) -> int:
        """The CUDA context assumed (the override, else the card family's)."""
        if self.context_mib is not None:
            return int(self.context_mib * MIB)
        return CARD_FAMILIES[self.card_family].context_bytes


class FitEstimate(ComponentBytes):
    """One method's predicted steady step (``tracked_step``; step 1's peak, with no optimizer state
    yet, in ``first_step_peak_bytes``): the peak allocated bytes and their phase, the bytes at the peak
    by component (:data:`~velora_core.contract.result.PEAK_COMPONENTS`, they add up to
    ``peak_bytes``), the allocator's peak reserved bytes over the run and the CUDA context; with a
    card size, ``fits`` (reserved + context within the card) and ``max_micro_batch`` (None: even 1
    does not fit)."""

    method: str
    micro_batch: int
    seq_len: int
    dtype: str
    autocast: str | None = None
    peak_bytes: int
    peak_phase: str
    tracked_step: str = "steady"
    first_step_peak_bytes: int | None = None
    reserved_bytes: int = 0
    context_bytes: int = 0
    traced_layers: list[int] = Field(default_factory=list)
    gpu_bytes: int | None = None
    fits: bool | None = None
    max_micro_batch: int | None = None
    notes: list[str] = Field(default_factory=list)
    seconds: float = 0.0

    def components(self) -> dict[str, int]:
        return {name: getattr(self, name) for name in PEAK_COMPONENTS}

    @property
    def card_bytes_needed(self) -> int:
        """What the card must hold: the allocator's reserved bytes plus the CUDA context."""
        return self.reserved_bytes + self.context_bytes
