"""Request and response bodies of the REST API (``XCreate`` / ``XPublic`` / ``XsPublic``)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from fastapi import Path, Query
from pydantic import BaseModel, ConfigDict, Field, field_validator

from velora_core.contract.fit_request import FitEstimate, FitRequest
from velora_core.contract.plan import RunRole
from velora_core.contract.result import ComparisonStatus, RunStatus
from velora_core.contract.table import MethodRow

#: The largest id, step or offset the API accepts: ids and steps are 32-bit INTEGER columns (in
#: PostgreSQL; SQLite overflows at 64 bits), so anything larger cannot name a row and is a 422.
MAX_DB_INT = 2**31 - 1

#: A run or comparison id in a path.
IdPath = Annotated[int, Path(ge=1, le=MAX_DB_INT, description="The id (1 or more).")]
#: A run or comparison id as a filter.
IdQuery = Annotated[int | None, Query(ge=1, le=MAX_DB_INT)]
#: Rows to skip (pagination).
OffsetQuery = Annotated[int, Query(ge=0, le=MAX_DB_INT, description="Rows to skip.")]
#: Only metric points after this step (-1: all of them).
AfterStepQuery = Annotated[
    int, Query(ge=-1, le=MAX_DB_INT, description="Only points after this step (incremental polling).")
]


class ComparisonFromPreset(BaseModel):
    """Queue a named comparison preset (see ``GET /presets``), optionally overriding its fields."""

    model_config = ConfigDict(extra="forbid")

    preset: str = Field(min_length=1, max_length=100, examples=["cpu-smoke"])
    overrides: dict[str, Any] | None = Field(default=None, description="Passed to the preset function.")


class RunPublic(BaseModel):
    """A run without its spec and result (cheap to list and poll)."""

    model_config = ConfigDict(from_attributes=True)

    id: int
    comparison_id: int | None
    method: str
    seed: int
    status: RunStatus
    role: RunRole = Field(
        description="`method`: a run of the request; `base`: it pre-trains the base model of the runs "
        "that list it in `depends_on` (not a row of the comparison table)."
    )
    depends_on: list[int] = Field(
        description="Runs that must complete before this one starts (it is `waiting` until then)."
    )
    queue: str
    spec_hash: str
    created_at: datetime
    started_at: datetime | None
    heartbeat_at: datetime | None
    finished_at: datetime | None
    attempts: int
    worker_host: str | None
    worker_device: str | None
    cancel_requested: bool
    phase: str | None
    step: int
    total_steps: int
    message: str | None
    error: str | None
    artifact_path: str | None

    @field_validator("depends_on", mode="before")
    @classmethod
    def _no_dependencies(cls, value: list[int] | None) -> list[int]:
        return value or []  # rows written before dependencies existed hold NULL


class RunDetail(RunPublic):
    """A run with its full spec and (once finished) its result (``velora_core.contract.result.RunResult``)."""

    spec: dict[str, Any]
    result: dict[str, Any] | None


class RunsPublic(BaseModel):
    data: list[RunPublic]
    count: int = Field(description="Runs matching the filters, over all pages.")
    offset: int
    limit: int


class MetricPublic(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    step: int
    loss: float | None
    lr: float | None
    tokens_per_s: float | None
    step_time_s: float | None
    memory_allocated_bytes: int | None


class MetricsPublic(BaseModel):
    run_id: int
    status: RunStatus
    data: list[MetricPublic]
    last_step: int = Field(description="Pass as ?after_step= to get only newer points.")


class SummaryRow(BaseModel):
    """One line of a comparison's table: what a method cost and what it achieved."""

    run_id: int
    method: str
    seed: int
    status: RunStatus
    steps_done: int
    workload: str | None = Field(
        default=None, description="The run's workload (finetune, image-classification …)."
    )
    eval_metric: str | None = None
    eval_value: float | None = None
    eval_chance: float | None = Field(default=None, description="Chance level of an accuracy metric.")
    eval_ci95: tuple[float, float] | None = Field(
        default=None,
        description="95 % interval of eval_value: Wilson for an accuracy, a t interval over evaluation "
        "blocks for a perplexity.",
    )
    eval_num_examples: int | None = Field(default=None, description="Questions or blocks evaluated.")
    eval_seeds_mean: float | None = Field(
        default=None, description="With several seeds: the mean eval_value of this method's completed runs."
    )
    eval_seeds_spread: float | None = Field(
        default=None, description="With several seeds: their sample standard deviation."
    )
    tokens_per_s: float | None = None
    train_time_s: float | None = None
    weight_bytes: int | None = None
    trainable_bytes: int | None = None
    gradient_bytes: int | None = None
    optimizer_bytes: int | None = None
    activation_bytes: int | None = None
    total_bytes: int | None = None
    peak_bytes: int | None = Field(default=None, description="CUDA's max_memory_allocated (None off CUDA).")
    measured_peak_bytes: int | None = Field(
        default=None, description="The memory tracker's peak of the tracked step (every device)."
    )
    peak_phase: str | None = Field(default=None, description="forward, backward or optimizer.")
    tracked_step: str | None = Field(
        default=None,
        description="Which step the memory figures hold: 'steady' (step 2, with the optimizer state), or "
        "'first' for results stored before the steady step (no optimizer state yet).",
    )
    temporary_bytes: int | None = Field(default=None, description="Temporaries at the measured peak.")
    predicted_activation_bytes: int | None = Field(
        default=None, description="Analytic bytes the VeLoRA-wrapped layers save for backward."
    )
    velora_measured_bytes: int | None = Field(
        default=None, description="Measured bytes those layers saved (compare with the prediction)."
    )
    trainable_params: int | None = None
    memory_vs_full: float | None = Field(
        default=None,
        description="This run's memory over that of 'full' (same seed, else any): the measured peak "
        "where there is one, else total_bytes.",
    )
    error: str | None = None


class ComparisonPublic(BaseModel):
    id: int
    name: str
    preset: str | None
    spec_hash: str
    created_at: datetime
    status: ComparisonStatus = Field(
        description="From its runs: queued (none started), running, completed (all completed), partial "
        "(some completed, others failed, ran out of memory or were cancelled), failed (none completed) "
        "or cancelled (all cancelled)."
    )
    run_ids: list[int]
    status_counts: dict[str, int]


class ComparisonDetail(ComparisonPublic):
    spec: dict[str, Any]
    runs: list[RunPublic]
    summary: list[SummaryRow] = Field(description="One row per run (kept for older clients; see `table`).")
    table: list[MethodRow] = Field(
        default_factory=list,
        description="The comparison table (velora_core.contract.table): one row per method over its "
        "seeds, with each seed's detail, memory vs full, deltas in points (method − full) and intervals. "
        "The CLI, the downloads and the dashboard format these rows.",
    )
    results: dict[str, dict[str, Any]] | None = Field(
        default=None,
        description="With ?include=results: each finished run's result (a RunResult) by run id, "
        "so one request gives what GET /runs/{id} would give per run.",
    )


class ComparisonsPublic(BaseModel):
    data: list[ComparisonPublic]
    count: int
    offset: int
    limit: int


class WorkerPublic(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    name: str
    host: str
    pid: int
    queues: str
    device: str | None
    started_at: datetime
    last_seen_at: datetime


class ErrorPublic(BaseModel):
    """The body of every error answer but 422 (whose ``detail`` is FastAPI's list of field errors)."""

    detail: str = Field(examples=["Run not found"])


class FitPublic(BaseModel):
    """``POST /fit``'s answer: the request as understood, one estimate per method in its order, and the
    seconds the prediction took."""

    request: FitRequest
    estimates: list[FitEstimate]
    seconds: float
    cached: bool = Field(default=False, description="Answered from the cache of earlier requests.")
    ahead_on_arrival: int = Field(default=0, description="Requests ahead of this one when it came.")
