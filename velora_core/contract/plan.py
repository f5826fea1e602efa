"""The runs a request becomes: its own runs, plus a run of its own for each base model they need.

A fine-tune from ``model.source='artifact'`` starts from the model that its ``model.pretrain`` run
saves. :func:`plan_runs` makes that pre-training an explicit run (role ``base``) which the fine-tunes
list in ``depends_on``; every run with the same pre-training spec (all methods, all seeds) shares one.
The store keeps a dependent run ``waiting`` until its bases completed, and fails or cancels it when one
did not (``docs/architecture.md``, "Pre-training runs"); the in-process CLI runs the plan in order.
Base runs come first, so a plan can be executed front to back.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

from velora_core.contract.result import RunStatus
from velora_core.contract.spec import RunSpec

RunRole = Literal["method", "base"]
#: A run of the request itself (a method under comparison).
ROLE_METHOD: RunRole = "method"
#: A run that makes a base model for others (their ``model.pretrain``); not a row of the comparison table.
ROLE_BASE: RunRole = "base"


@dataclass(frozen=True)
class PlannedRun:
    """One run of a plan; ``depends_on`` holds indices of earlier entries of the same plan."""

    spec: RunSpec
    role: RunRole = ROLE_METHOD
    depends_on: tuple[int, ...] = field(default=())


def base_spec(spec: RunSpec) -> RunSpec | None:
    """The run that makes ``spec``'s base model (its ``model.pretrain``, saving its artifact), if any."""
    if spec.model.source != "artifact" or spec.model.pretrain is None:
        return None
    pretrain = spec.model.pretrain
    return pretrain if pretrain.save_artifact else pretrain.model_copy(update={"save_artifact": True})


def plan_runs(specs: Sequence[RunSpec]) -> list[PlannedRun]:
    """``specs`` with a base run before them for each distinct pre-training they need (by spec hash)."""
    bases: dict[str, int] = {}
    plan: list[PlannedRun] = []
    for spec in specs:
        base = base_spec(spec)
        if base is not None and base.spec_hash() not in bases:
            bases[base.spec_hash()] = len(plan)
            plan.append(PlannedRun(spec=base, role=ROLE_BASE))
    for spec in specs:
        base = base_spec(spec)
        needs = (bases[base.spec_hash()],) if base is not None else ()
        plan.append(PlannedRun(spec=spec, role=ROLE_METHOD, depends_on=needs))
    return plan


def dependency_outcome(label: str, status: str, error: str | None) -> tuple[RunStatus, str] | None:
    """What becomes of a run whose base run (``label``, e.g. "run 12 (full)") finished as ``status``:
    None when it completed (the run may start), else the run's own final status and error.

    A cancelled base cancels its dependents; any other ending (failed, out of memory) fails them.
    """
    if status == RunStatus.COMPLETED:
        return None
    outcome = RunStatus.CANCELLED if status == RunStatus.CANCELLED else RunStatus.FAILED
    reason = f": {' '.join(error.split())[:500]}" if error else ""
    return outcome, f"its base model's pre-training, {label}, {status.replace('_', ' ')}{reason}"
