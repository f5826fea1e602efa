"""What a run produces: status, memory, evaluation, throughput, loss curve, environment.

Plain pydantic models without torch, so the backend and dashboard can read results.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from enum import StrEnum
from typing import Any, Literal, TypeVar, get_args

from pydantic import BaseModel, Field, field_validator


class RunStatus(StrEnum):
    WAITING = "waiting"  # for the runs it depends on (its base model's pre-training) to complete
    QUEUED = "queued"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    OUT_OF_MEMORY = "out_of_memory"
    CANCELLED = "cancelled"

    @property
    def finished(self) -> bool:
        return self not in (RunStatus.WAITING, RunStatus.QUEUED, RunStatus.RUNNING)


#: The run state machine, defined once: each status and the statuses a run may move to from it.
#: The store's UPDATEs check it (``backend/store``: ``status_moves``); a finished run never changes,
#: except a run the reaper failed while its (slow, not dead) worker still ran: that run takes the
#: result its worker then reports.
RUN_TRANSITIONS: dict[RunStatus, frozenset[RunStatus]] = {
    # its bases completed (queued), or one did not (failed, cancelled); or cancelled by request
    RunStatus.WAITING: frozenset({RunStatus.QUEUED, RunStatus.FAILED, RunStatus.CANCELLED}),
    # claimed by a worker, or cancelled before it started
    RunStatus.QUEUED: frozenset({RunStatus.RUNNING, RunStatus.CANCELLED}),
    # its result; requeued when its worker is gone
    RunStatus.RUNNING: frozenset(
        {
            RunStatus.QUEUED,
            RunStatus.COMPLETED,
            RunStatus.FAILED,
            RunStatus.OUT_OF_MEMORY,
            RunStatus.CANCELLED,
        }
    ),
    # failed by the reaper, then finished by its worker after all
    RunStatus.FAILED: frozenset(
        {RunStatus.COMPLETED, RunStatus.FAILED, RunStatus.OUT_OF_MEMORY, RunStatus.CANCELLED}
    ),
    RunStatus.COMPLETED: frozenset(),
    RunStatus.OUT_OF_MEMORY: frozenset(),
    RunStatus.CANCELLED: frozenset(),
}


def allowed_sources(
    target: RunStatus | str, sources: Iterable[RunStatus | str] | None = None
) -> tuple[str, ...]:
    """The statuses a run may move to ``target`` from, as the strings the database holds: all that
    :data:`RUN_TRANSITIONS` allows, or ``sources`` after checking that each is allowed.

    Raises:
        ValueError: ``target`` cannot be reached from one of ``sources`` (or from anywhere).
    """
    target = RunStatus(target)
    allowed = [s for s in RunStatus if target in RUN_TRANSITIONS[s]]
    if sources is None:
        chosen = allowed
    else:
        chosen = [RunStatus(s) for s in sources]
        refused = [s.value for s in chosen if s not in allowed]
        if refused:
            raise ValueError(f"a run cannot move from {refused} to {target.value!r}")
    if not chosen:
        raise ValueError(f"no run status moves to {target.value!r}")
    return tuple(s.value for s in chosen)


#: The status sets, as the strings the API and the database use (defined here once).
FINISHED_RUN_STATUSES = frozenset(s.value for s in RunStatus if s.finished)
#: Not finished yet: a run's ``waiting``, ``queued`` and ``running`` (a comparison's ``queued`` and ``running``).
ACTIVE_STATUSES = frozenset(s.value for s in RunStatus if not s.finished)
#: Runs whose result answers the question asked: an out-of-memory is an answer ("it does not fit").
ANSWERED_RUN_STATUSES = frozenset({RunStatus.COMPLETED.value, RunStatus.OUT_OF_MEMORY.value})


class ComparisonStatus(StrEnum):
    """A comparison's state, derived from its runs' (:meth:`of`); never stored."""

    QUEUED = "queued"  # no run has started (each is queued or waiting for another)
    RUNNING = "running"  # some run is queued or running, and some has started or finished
    COMPLETED = "completed"  # every run completed
    PARTIAL = "partial"  # all finished, some completed, others failed, ran out of memory or were cancelled
    FAILED = "failed"  # all finished, none completed (not all of them cancelled)
    CANCELLED = "cancelled"  # every run was cancelled

    @classmethod
    def of(cls, statuses: Iterable[str]) -> ComparisonStatus:
        """The status of a comparison whose runs have ``statuses`` (RunStatus values)."""
        runs = [RunStatus(s) for s in statuses]
        if all(s in (RunStatus.QUEUED, RunStatus.WAITING) for s in runs):
            return cls.QUEUED
        if not all(s.finished for s in runs):
            return cls.RUNNING
        completed = sum(s == RunStatus.COMPLETED for s in runs)
        if completed == len(runs):
            return cls.COMPLETED
        if completed:
            return cls.PARTIAL
        return cls.CANCELLED if all(s == RunStatus.CANCELLED for s in runs) else cls.FAILED

    @property
    def finished(self) -> bool:
        return self not in (ComparisonStatus.QUEUED, ComparisonStatus.RUNNING)


T = TypeVar("T")

#: The components of a run's memory, summed by :func:`total_memory_bytes`.
MEMORY_COMPONENTS = (
    "weight_bytes",
    "trainable_bytes",
    "gradient_bytes",
    "optimizer_bytes",
    "activation_bytes",
)


#: What the memory tracker attributes every live byte of a step to (``MemoryReport.peak_components``);
#: ``autocast_copies``: the lower-precision copies ``torch.autocast`` makes of the weights (held while
#: the forward caches them and, where backward needs them, until backward frees them).
PEAK_COMPONENTS = (
    "weights",
    "trainable",
    "gradients",
    "optimizer",
    "activations",
    "autocast_copies",
    "temporary",
)
#: The step a memory report holds: the first (no optimizer state yet; every result before the steady
#: step) or a steady one (optimizer state, accumulated gradients: everything a long run holds).
TrackedStep = Literal["first", "steady"]
TRACKED_STEPS: tuple[TrackedStep, TrackedStep] = get_args(TrackedStep)
#: The phases of a training step, in order (``MemoryReport.peak_phase``, the timeline's ``phase``).
PHASES = ("forward", "backward", "optimizer")


def total_memory_bytes(memory: Mapping[str, Any]) -> int:
    """Sum of the components of a :class:`MemoryReport` (as a model dump or an API row)."""
    return sum(int(memory.get(name) or 0) for name in MEMORY_COMPONENTS)


def headline_memory_bytes(memory: Mapping[str, Any]) -> int | float | None:
    """The one memory figure every view shows and ranks by: the tracker's measured peak
    (``measured_peak_bytes``, every device), else the CUDA allocator's peak of older results
    (``peak_bytes``), else the total of the components; None for a run without a memory report."""
    if not memory:
        return None
    peak = measured_peak_bytes(memory)
    return peak if peak is not None else memory.get("total_bytes", total_memory_bytes(memory))


def measured_peak_bytes(memory: Mapping[str, Any]) -> int | float | None:
    """The measured peak of a memory report (or row): the tracker's, else the CUDA allocator's of an
    older result, else None."""
    for key in ("measured_peak_bytes", "peak_bytes"):
        if memory.get(key) is not None:
            return memory[key]
    return None


def memory_vs_full(own: int | float | None, full: int | float | None) -> float | None:
    """A method's headline memory over full fine-tuning's (both from :func:`headline_memory_bytes`):
    the API summary, the CLI table and the dashboard all call this, so they cannot disagree."""
    return round(own / full, 4) if own is not None and full else None


def full_reference(by_seed: Mapping[Any, T], seed: Any) -> T | None:
    """The completed ``full`` run's value to compare a run of ``seed`` with: the same seed's, else the
    first seed's (a comparison may run ``full`` on fewer seeds), else None."""
    if seed in by_seed:
        return by_seed[seed]
    return next(iter(by_seed.values()), None)


class ComponentBytes(BaseModel):
    """Bytes by :data:`PEAK_COMPONENTS` (a timeline point, a predicted peak)."""

    weights: int = 0
    trainable: int = 0
    gradients: int = 0
    optimizer: int = 0
    activations: int = 0
    autocast_copies: int = 0
    temporary: int = 0


class MemoryPoint(ComponentBytes):
    """One point of a step's memory timeline: live bytes by :data:`PEAK_COMPONENTS` after ``event``
    allocations and frees, in ``phase``."""

    event: int
    phase: str


class MemoryReport(BaseModel):
    """Bytes one training step needs, by component (docs/architecture.md, "Memory accounting").

    ``weight_bytes``: frozen weights as stored (4-bit counted as packed bytes plus quantisation
    state); ``trainable_bytes``: trainable parameters; ``gradient_bytes``: their gradients;
    ``optimizer_bytes``: optimizer state; ``activation_bytes``: tensors saved for backward,
    measured, de-duplicated by storage, parameters excluded; ``predicted_activation_bytes``: the
    analytic bytes the VeLoRA-wrapped layers save (``T·G·elem`` + ``v``), and the measured bytes those
    layers saved in ``velora_measured_bytes``; ``peak_bytes``: CUDA peak allocated (None off CUDA);
    ``host_activation_bytes``: saved tensors that offloading copied to host memory (not device
    memory, so not in the total).

    Measured by the memory tracker at every allocation (``velora_core.memory.tracker``, every device):
    ``measured_peak_bytes`` the largest live total, ``peak_phase`` when (``forward``, ``backward``,
    ``optimizer``), ``peak_components`` its bytes by :data:`PEAK_COMPONENTS` (they add up to it),
    ``temporary_bytes`` the temporaries among them, ``timeline`` live bytes by component over the step,
    subsampled. CUDA's allocator in fields of its own: ``cuda_reserved_bytes``
    (``max_memory_reserved``) and ``allocator_gap_bytes`` (reserved minus the tracker's peak: what the
    caching allocator adds, which nvidia-smi shows). All default to empty, so older results validate.

    Which step (docs/architecture.md, "The steady step"): ``tracked_step`` is ``steady`` when the
    step measured is one in which the optimizer state and everything else a long run holds exist
    (step 2; a run of one step takes ``warmup_steps`` = 1 untimed warm-up step first, whose update is
    real: its model has been updated twice), ``first`` for older results, which measured step 1
    (no optimizer state yet). ``first_step_peak_bytes``: the tracker's peak of step 1, an extra beside
    the headline. On CUDA, ``run_peak_allocated_bytes`` / ``run_peak_reserved_bytes``: the allocator's
    peaks over the whole training loop (``peak_bytes`` and ``cuda_reserved_bytes`` are the tracked step's).
    """

    weight_bytes: int = 0
    trainable_bytes: int = 0
    gradient_bytes: int = 0
    optimizer_bytes: int = 0
    activation_bytes: int = 0
    predicted_activation_bytes: int = 0
    velora_measured_bytes: int = 0
    peak_bytes: int | None = None
    host_activation_bytes: int = 0
    weight_bytes_by_dtype: dict[str, int] = Field(default_factory=dict)
    trainable_params: int = 0
    total_params: int = 0
    measured_peak_bytes: int | None = None
    peak_phase: str | None = None
    peak_components: dict[str, int] = Field(default_factory=dict)
    temporary_bytes: int | None = None
    timeline: list[MemoryPoint] = Field(default_factory=list)
    cuda_reserved_bytes: int | None = None
    allocator_gap_bytes: int | None = None
    tracked_step: TrackedStep = "first"
    first_step_peak_bytes: int | None = None
    warmup_steps: int = 0
    run_peak_allocated_bytes: int | None = None
    run_peak_reserved_bytes: int | None = None

    @property
    def total_bytes(self) -> int:
        """Sum of the components (the analytic total, comparable with ``peak_bytes``)."""
        return total_memory_bytes(vars(self))  # the fields as they are: no dump of the whole report

    @property
    def headline_bytes(self) -> int | float | None:
        """See :func:`headline_memory_bytes`."""
        return headline_memory_bytes(vars(self))


class ItemRecords(BaseModel):
    """What an evaluation did with each item, column by column (one entry per item, in item order):
    compact enough to keep with every run, complete enough to recompute its accuracy and to compare
    two runs item by item (:func:`velora_core.contract.intervals.paired_difference`).

    ``prompt_hash``: :func:`~velora_core.contract.hashing.prompt_hash` of the prompt text (the
    context the choices were scored after; lm-evaluation-harness's ``prompt_hash`` cut to 16 hex
    digits), so two runs' items, or ours and the harness's, are matched by what was asked;
    ``loglikelihoods``: each choice's log-likelihood (nats, as lm-evaluation-harness computes it,
    rounded to 1e-6); ``choice``: the headline's pick; ``answer``: the right one; ``correct``;
    ``extra``: further columns of the same length (exemplars used, tokens cut, the other metrics'
    picks), named in the evaluation's ``details``.
    """

    prompt_hash: list[str] = Field(default_factory=list)
    loglikelihoods: list[list[float]] = Field(default_factory=list)
    choice: list[int] = Field(default_factory=list)
    answer: list[int] = Field(default_factory=list)
    correct: list[bool] = Field(default_factory=list)
    extra: dict[str, list[Any]] = Field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.prompt_hash)

    def rows(self, offset: int = 0, limit: int | None = None) -> list[dict[str, Any]]:
        """Items ``offset`` … ``offset + limit - 1`` (to the end by default) as one dict each."""
        end = len(self) if limit is None else min(len(self), offset + limit)
        columns: dict[str, list[Any]] = {
            "prompt_hash": self.prompt_hash,
            "loglikelihoods": self.loglikelihoods,
            "choice": self.choice,
            "answer": self.answer,
            "correct": self.correct,
            **self.extra,
        }
        return [{name: values[i] for name, values in columns.items()} for i in range(offset, end)]

    def jsonl(self, offset: int = 0, limit: int | None = None) -> str:
        """:meth:`rows` as JSON Lines, one item a line (what the API and the dashboard let one download)."""
        return "".join(json.dumps(row) + "\n" for row in self.rows(offset, limit))


class EvalResult(BaseModel):
    metric: str  # "perplexity", "mc_accuracy", "accuracy", "matthews", "pearson" or "none"
    value: float | None = None
    chance: float | None = None  # chance level for accuracy; None for perplexity
    num_examples: int = 0  # questions (accuracy) or evaluation blocks (perplexity)
    #: 95 % interval of ``value`` (velora_core.contract.intervals): Wilson for an accuracy, a t interval
    #: over blocks for a perplexity; None where there is none (under two blocks, no metric).
    ci95: tuple[float, float] | None = None
    details: dict[str, Any] = Field(default_factory=dict)
    #: Per-item records of a multiple-choice evaluation (None for perplexity and older results).
    items: ItemRecords | None = None

    @field_validator("details")
    @classmethod
    def _as_stored(cls, details: dict[str, Any]) -> dict[str, Any]:
        # Details are stored as JSON: hold them as JSON reads them back (tuples become lists), so a
        # result equals itself after a round trip through the database or a file.
        return json.loads(json.dumps(details))


class Throughput(BaseModel):
    tokens_per_s: float = 0.0
    step_time_s: float = 0.0
    train_time_s: float = 0.0
    tokens: int = 0


#: A loss curve has at least this many points when the run has that many steps (every step below).
LOSS_CURVE_POINTS = 100


def loss_curve_every(total_steps: int, progress_every: int = 1) -> int:
    """Record the loss every k steps: every step up to :data:`LOSS_CURVE_POINTS` steps, then k so that
    the curve keeps at least that many points (never sparser than ``progress_every`` asks)."""
    return max(1, min(progress_every, total_steps // LOSS_CURVE_POINTS))


class LossPoint(BaseModel):
    step: int
    loss: float
    lr: float


class ProgressEvent(BaseModel):
    """Sent to ``on_progress`` every ``progress_every`` steps (and on phase changes)."""

    phase: str  # "setup", "train", "eval", "done"
    step: int = 0
    total_steps: int = 0
    loss: float | None = None
    lr: float | None = None
    tokens_per_s: float | None = None
    step_time_s: float | None = None
    memory_allocated_bytes: int | None = None
    message: str = ""


class RunResult(BaseModel):
    method: str
    status: RunStatus
    error: str | None = None
    memory: MemoryReport = Field(default_factory=MemoryReport)
    eval: EvalResult = Field(default_factory=lambda: EvalResult(metric="none"))
    throughput: Throughput = Field(default_factory=Throughput)
    loss_curve: list[LossPoint] = Field(default_factory=list)
    environment: dict[str, Any] = Field(default_factory=dict)
    spec_hash: str = ""
    steps_done: int = 0
    artifact_path: str | None = None
    max_micro_batch: int | None = None
    failed_shape: dict[str, Any] | None = None
    spec: dict[str, Any] | None = None
