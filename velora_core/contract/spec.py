"""The run specification: the one contract shared by the CLI, the API, the worker and the dashboard.

A :class:`RunSpec` describes one training run completely (workload, model, data, method, schedule,
evaluation). It is validated once, serialises to JSON and has a stable hash. A
:class:`ComparisonSpec` is one workload run under a list of methods (and seeds).

This module imports no torch, so the backend can validate specs without loading it.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SerializerFunctionWrapHandler,
    ValidationError,
    field_validator,
    model_serializer,
    model_validator,
)

from velora_core.contract.errors import validation_message
from velora_core.contract.hashing import content_hash
from velora_core.contract.method_parts import (
    canonical_method,
    canonical_methods,
    check_method_device,
    trains_all_weights,
)
from velora_core.contract.method_settings import method_config_for
from velora_core.contract.names import check_hub_id, check_local_path
from velora_core.contract.precision import Autocast, check_precision, follow_autocast
from velora_core.contract.presets.model_shapes import DATASETS, MODEL_PRESETS
from velora_core.contract.workload_registry import WORKLOAD_NAMES, WORKLOADS, check_workload

Dtype = Literal["fp32", "bf16", "fp16"]
#: The registered workloads (``workload_registry.WORKLOADS``), in their order.
WorkloadName = Literal[WORKLOAD_NAMES]  # type: ignore[valid-type]

#: Bounds that keep a single request from asking for something absurd.
MAX_STEPS = 1_000_000
MAX_MICRO_BATCH = 4096
MAX_SEQ_LEN = 131_072
MAX_SEEDS = 16
#: The longest local path or hub id a spec may name.
MAX_NAME_LENGTH = 4096


class StrictModel(BaseModel):
    """Base for spec models: unknown fields are an error, not silently dropped; NaN and infinity
    are refused ("Input should be a finite number") rather than compared against a bound."""

    model_config = ConfigDict(extra="forbid", frozen=False, allow_inf_nan=False)


class ModelSpec(StrictModel):
    """Where the model comes from.

    - ``preset``: a built-in shape (``tiny``, ``llama-60m`` … ``llama-13b``), random weights.
    - ``hub``: a Hugging Face hub id (``trust_remote_code`` is never enabled).
    - ``local``: a directory written by ``save_pretrained``.
    - ``artifact``: the saved model of an earlier run, named by that run's spec (``pretrain``); the
      engine runs it first if its artifact is not in the artifact directory yet. One level only:
      the pre-training run's own model is a preset, a hub id or a local directory.

    ``pooling`` (sequence classification): what the head reads, ``cls`` (transformers' own head) or
    ``mean`` (``velora_core/models/heads.py``).
    """

    source: Literal["preset", "hub", "local", "artifact"] = "preset"
    name: str | None = Field(
        default=None, max_length=MAX_NAME_LENGTH, description="Preset name, hub id or local directory."
    )
    revision: str | None = Field(
        default=None,
        max_length=255,
        pattern=r"^[\w.\-/]+$",
        description="Hub revision (branch, tag or commit).",
    )
    pretrain: RunSpec | None = Field(
        default=None, description="For source='artifact': the run that makes it."
    )
    memory_only: bool = Field(
        default=False,
        description="Random weights of the model's shape: measures memory, reports no accuracy.",
    )
    # Left out of the dump when 'cls', so the specs and hashes of every earlier run stay as they were.
    pooling: Literal["cls", "mean"] = Field(
        default="cls",
        description=(
            "What a sequence-classification head reads: 'cls' the first token's output (transformers' "
            "own head), 'mean' the mean of the encoder's outputs over the real tokens (RoBERTa)."
        ),
    )

    @model_serializer(mode="wrap")
    def _omit_default_pooling(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        data = handler(self)
        if data.get("pooling") == "cls":
            data.pop("pooling")
        return data

    @model_validator(mode="after")
    def _check_source(self) -> ModelSpec:
        if self.source == "artifact":
            if self.pretrain is None:
                raise ValueError(
                    "model.source='artifact' needs model.pretrain (the spec of the run that makes it)"
                )
            if not trains_all_weights(self.pretrain.method):
                raise ValueError(
                    "model.pretrain must train all weights (a method on base 'full' or 'galore') so that its "
                    f"artifact is a whole model, got {self.pretrain.method!r}"
                )
            if self.pretrain.model.source == "artifact":
                raise ValueError(
                    "model.pretrain.model.source='artifact' is not supported: a pre-training run starts "
                    "from a preset, a hub id or a local directory (one level of pre-training)"
                )
        else:
            if not self.name:
                raise ValueError(f"model.source={self.source!r} needs model.name")
            if self.pretrain is not None:
                raise ValueError("model.pretrain is only allowed with model.source='artifact'")
            if self.source == "preset" and self.name not in MODEL_PRESETS:
                raise ValueError(
                    f"unknown model preset {self.name[:200]!r}; choose one of {sorted(MODEL_PRESETS)}"
                )
            if self.source == "hub":
                check_hub_id(self.name, "model.name")
            if self.source == "local":
                check_local_path(self.name, "model.name")
        return self

    def max_positions(self) -> int | None:
        """The model's sequence-length limit where it is known without loading anything."""
        if self.source == "preset" and self.name is not None:
            return MODEL_PRESETS[self.name].max_position_embeddings
        if self.source == "artifact" and self.pretrain is not None:
            return self.pretrain.model.max_positions()
        return None

    def linear_layers(self) -> dict[str, int] | None:
        """Full name -> input width of the model's linear layers, where known without loading."""
        if self.source == "preset" and self.name is not None:
            return MODEL_PRESETS[self.name].linear_layers()
        if self.source == "artifact" and self.pretrain is not None:
            return self.pretrain.model.linear_layers()
        return None


class DatasetSpec(StrictModel):
    """Where the training data comes from.

    - ``builtin``: ``stdlib-corpus`` (language modelling on the running Python's standard-library
      sources), ``stdlib-mc`` (multiple choice built from the same sources), ``c4``, ``alpaca`` (hub).
    - ``hub``: a dataset id with ``config`` and ``split``; ``text_field`` names the text column.
    - ``local``: a JSON Lines file (``text_field``, Alpaca's instruction/input/output, or multiple
      choice question/choices/answer), a JSON array or a text file, with ``eval_split`` the path of
      an evaluation file; or a folder laid out like a hub dataset repository, read like ``hub``.
    """

    source: Literal["builtin", "hub", "local"] = "builtin"
    name: str = Field(max_length=MAX_NAME_LENGTH)
    config: str | None = Field(default=None, max_length=200)
    split: str = Field(default="train", min_length=1, max_length=200)
    eval_split: str | None = Field(default=None, min_length=1, max_length=MAX_NAME_LENGTH)
    text_field: str = Field(default="text", min_length=1, max_length=200)
    max_examples: int | None = Field(default=None, ge=1, le=100_000_000)
    # Classification columns (velora_core/contract/workload_registry.py); left out of the dump when unset,
    # so the specs and hashes of the causal-LM workloads stay as they were.
    text_pair_field: str | None = Field(
        default=None, min_length=1, max_length=200, description="Second text column (sentence pairs)."
    )
    image_field: str | None = Field(
        default=None, min_length=1, max_length=200, description="Image column (default 'image')."
    )
    label_field: str | None = Field(
        default=None, min_length=1, max_length=200, description="Label column (default 'label')."
    )

    @model_serializer(mode="wrap")
    def _omit_unset_columns(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        data = handler(self)
        for name in ("text_pair_field", "image_field", "label_field"):
            if data.get(name, "") is None:
                data.pop(name)
        return data

    @model_validator(mode="after")
    def _check_name(self) -> DatasetSpec:
        if self.source == "builtin" and self.name not in DATASETS:
            raise ValueError(
                f"unknown built-in dataset {self.name[:200]!r}; choose one of {sorted(DATASETS)}"
            )
        if self.source == "hub":
            check_hub_id(self.name, "dataset.name")
        if self.source == "local":
            check_local_path(self.name, "dataset.name")
            if self.eval_split is not None:
                check_local_path(self.eval_split, "dataset.eval_split")
        return self


class OptimizerSpec(StrictModel):
    """AdamW with linear warm-up and cosine decay to ``min_lr_ratio`` of the peak (GaLore's schedule)."""

    name: Literal["adamw"] = "adamw"
    lr: float = Field(default=1e-3, gt=0, le=10)
    weight_decay: float = Field(default=0.0, ge=0, le=10)
    betas: tuple[float, float] = (0.9, 0.999)
    warmup_steps: int = Field(default=0, ge=0, le=MAX_STEPS)
    min_lr_ratio: float = Field(default=0.1, ge=0, le=1)
    max_grad_norm: float | None = Field(default=1.0, gt=0, le=1e6)

    @field_validator("betas")
    @classmethod
    def _check_betas(cls, betas: tuple[float, float]) -> tuple[float, float]:
        if not all(0.0 <= b < 1.0 for b in betas):
            raise ValueError(f"betas must lie in [0, 1), got {betas}")
        return betas


#: An lm-evaluation-harness task or group name (``mmlu``, ``arc_easy``, ``tiny_mmlu_anatomy``).
HarnessTask = Annotated[str, Field(min_length=1, max_length=200, pattern=r"^[A-Za-z0-9_.\-]+$")]


class EvalSpec(StrictModel):
    """How the run is evaluated.

    ``metric``: ``perplexity`` on held-out text, ``mc_accuracy`` (k-shot multiple choice scored by the
    log-likelihood of the answer letters, lm-evaluation-harness's mmlu protocol), for the
    classification workloads ``accuracy``, ``matthews`` (Matthews correlation, CoLA) or ``pearson``
    (STS-B), or ``none``. ``dataset`` defaults to the training data's evaluation split; for
    ``mc_accuracy`` it is ``stdlib-mc``, ``mmlu`` or multiple-choice records.

    ``harness_tasks`` (with ``num_fewshot``, ``limit`` and ``include_path``, a folder of task YAML
    files) evaluates with lm-evaluation-harness instead (``docs/evaluation.md``); the metric is then
    ``mc_accuracy``, the first task's accuracy. These fields are left out of the spec when unset, so
    the specs and hashes of every earlier run stay as they were.
    """

    metric: Literal["perplexity", "mc_accuracy", "accuracy", "matthews", "pearson", "none"] = "perplexity"
    dataset: DatasetSpec | None = None
    num_shots: int = Field(default=5, ge=0, le=25)
    max_examples: int = Field(default=200, ge=1, le=100_000)
    batch_size: int = Field(default=8, ge=1, le=MAX_MICRO_BATCH)
    harness_tasks: list[HarnessTask] = Field(
        default_factory=list,
        max_length=32,
        description="lm-evaluation-harness tasks; the first is the headline.",
    )
    num_fewshot: int | None = Field(
        default=None, ge=0, le=25, description="Harness exemplars per question (None: each task's default)."
    )
    limit: int | None = Field(
        default=None, ge=1, le=1_000_000, description="At most this many items of each harness task."
    )
    include_path: str | None = Field(
        default=None,
        min_length=1,
        max_length=MAX_NAME_LENGTH,
        description="A folder of harness task YAML files.",
    )

    @model_serializer(mode="wrap")
    def _omit_unset_harness(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        data = handler(self)
        if not data.get("harness_tasks"):
            data.pop("harness_tasks", None)
        for name in ("num_fewshot", "limit", "include_path"):
            if data.get(name, "") is None:
                data.pop(name)
        return data

    @model_validator(mode="after")
    def _check_harness(self) -> EvalSpec:
        if not self.harness_tasks:
            given = [n for n in ("num_fewshot", "limit", "include_path") if getattr(self, n) is not None]
            if given:
                raise ValueError(f"eval.{given[0]} only applies to eval.harness_tasks, which is empty")
            return self
        if "metric" not in self.model_fields_set:
            self.metric = "mc_accuracy"
        if self.metric != "mc_accuracy":
            raise ValueError(
                f"eval.harness_tasks report an accuracy: eval.metric must be 'mc_accuracy', not {self.metric!r}"
            )
        if self.dataset is not None:
            raise ValueError("eval.harness_tasks bring their own data: leave eval.dataset unset")
        if self.include_path is not None:
            check_local_path(self.include_path, "eval.include_path")
        return self


class RunSpec(StrictModel):
    """One training run. See the module docstring."""

    workload: WorkloadName
    model: ModelSpec
    dataset: DatasetSpec
    method: str = Field(default="full", max_length=50)
    method_config: dict[str, Any] = Field(default_factory=dict)
    seq_len: int = Field(default=256, ge=8, le=MAX_SEQ_LEN)
    micro_batch: int = Field(default=8, ge=1, le=MAX_MICRO_BATCH)
    grad_accum: int = Field(default=1, ge=1, le=1024)
    steps: int | None = Field(default=100, ge=1, le=MAX_STEPS)
    epochs: float | None = Field(default=None, gt=0, le=1000)
    optimizer: OptimizerSpec = Field(default_factory=OptimizerSpec)
    dtype: Dtype = "fp32"
    # Left out of the dump when unset, so the specs and hashes of every earlier run stay as they were.
    autocast: Autocast | None = Field(
        default=None,
        description=(
            "Mixed precision: run the forward under torch.autocast in this dtype, the weights staying in "
            "dtype (which must be 'fp32'); 'fp16' adds a GradScaler. None: everything in dtype."
        ),
    )
    seed: int = Field(default=0, ge=0, le=2**31 - 1)
    device: str = Field(default="auto", pattern=r"^(auto|cpu|cuda(:\d+)?)$")
    eval: EvalSpec = Field(default_factory=EvalSpec)
    progress_every: int = Field(default=1, ge=1, le=10_000)
    max_batch_search: bool = False
    save_artifact: bool = True

    @model_serializer(mode="wrap")
    def _omit_unset_autocast(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        data = handler(self)
        if data.get("autocast", "") is None:
            data.pop("autocast")
        return data

    @model_validator(mode="after")
    def _check(self) -> RunSpec:
        self.method = canonical_method(self.method)  # any order of its parts; one spelling stored
        check_method_device(self.method, self.device)
        check_precision(self.dtype, self.autocast, self.model.memory_only)
        # Validate the method's settings now (typed, with their own clear errors), keep them as plain JSON.
        parsed = method_config_for(self.method, self.method_config)
        self.method_config = follow_autocast(parsed.model_dump(mode="json"), self.autocast)
        if (self.steps is None) == (self.epochs is None):
            raise ValueError("give exactly one of steps and epochs")
        limit = self.model.max_positions()
        if limit is not None and self.seq_len > limit:
            raise ValueError(f"seq_len {self.seq_len} is beyond the model's limit of {limit} positions")
        if self.workload == "finetune" and self.model.source == "preset" and not self.model.memory_only:
            raise ValueError(
                "a finetune from a preset has no trained weights: use model.source='artifact' (with a "
                "pretrain spec), 'hub' or 'local', or set model.memory_only=true to measure memory only"
            )
        layers = self.model.linear_layers()
        if layers is not None:
            parsed.check_against_model(layers)
        if "metric" not in self.eval.model_fields_set:  # the workload's own default
            self.eval = self.eval.model_copy(update={"metric": WORKLOADS[self.workload].default_metric})
        if self.model.memory_only:
            self.eval = self.eval.model_copy(update={"metric": "none"})
        model = self.model
        base = model.pretrain.model if model.source == "artifact" and model.pretrain is not None else model
        check_workload(
            self.workload,
            base_preset=base.name if base.source == "preset" else None,
            builtin_datasets=[
                (where, data.name)
                for where, data in (("dataset", self.dataset), ("eval.dataset", self.eval.dataset))
                if data is not None and data.source == "builtin"
            ],
            metric=self.eval.metric,
            pooling=model.pooling,
            memory_only=model.memory_only,
            max_batch_search=self.max_batch_search,
        )
        evaluated = self.eval.dataset or self.dataset
        if (
            self.eval.metric == "mc_accuracy"
            and not self.eval.harness_tasks
            and evaluated.source == "builtin"
            and DATASETS[evaluated.name][0] != "mc"
        ):
            raise ValueError(
                f"eval.metric='mc_accuracy' needs multiple-choice data; built-in dataset {evaluated.name!r} "
                "holds text: set eval.dataset to stdlib-mc or mmlu, or use metric 'perplexity'"
            )
        return self

    def spec_hash(self) -> str:
        """A stable hash of everything that changes the result (sorted-key JSON, SHA-256, 16 hex digits)."""
        return content_hash(self.model_dump(mode="json"))


class ComparisonSpec(StrictModel):
    """One workload (a RunSpec without its method) run under each method, for each seed."""

    name: str = Field(default="comparison", min_length=1, max_length=200)
    base: RunSpec
    methods: list[Annotated[str, Field(max_length=50)]] = Field(min_length=1, max_length=16)
    method_configs: dict[str, dict[str, Any]] = Field(default_factory=dict)
    seeds: list[Annotated[int, Field(ge=0, le=2**31 - 1)]] = Field(
        default_factory=lambda: [0], max_length=MAX_SEEDS
    )

    @model_validator(mode="after")
    def _check(self) -> ComparisonSpec:
        self.methods, self.method_configs = canonical_methods(self.methods, self.method_configs)
        stray = sorted(set(self.method_configs) - set(self.methods))
        if stray:
            raise ValueError(f"method_configs names methods not in the comparison: {stray}")
        if not self.seeds:
            raise ValueError("seeds must not be empty")
        self.runs()  # every expanded run must itself be valid
        return self

    def runs(self) -> list[RunSpec]:
        """Expand into one RunSpec per (method, seed), each validated."""
        base = self.base.model_dump(mode="json")
        out = []
        for seed in self.seeds:
            for method in self.methods:
                data = dict(base, method=method, seed=seed, method_config=self.method_configs.get(method, {}))
                try:
                    out.append(RunSpec.model_validate(data))
                except ValidationError as exc:
                    raise ValueError(f"method {method!r}: {validation_message(exc, whole=None)}") from None
        return out


def read_spec(data: dict[str, Any]) -> RunSpec | ComparisonSpec:
    """A RunSpec or ComparisonSpec from its fields (a ComparisonSpec has ``base`` or ``methods``).

    Raises:
        ValueError: ``invalid <kind>: <the first problem, with its field>``.
    """
    kind = ComparisonSpec if "base" in data or "methods" in data else RunSpec
    try:
        return kind.model_validate(data)
    except ValidationError as exc:
        raise ValueError(f"invalid {kind.__name__}: {validation_message(exc)}") from None


ModelSpec.model_rebuild()
