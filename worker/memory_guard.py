"""A run never asks its host for more memory than it has (issue 22.2).

Before the engine allocates anything, the worker predicts the run's peak with the fit machinery
(``velora_core.bench.step_prediction.predict_step``: a steady training step under fake tensors, no
weights; on a GPU the caching allocator's reserved bytes plus the CUDA context of the card's family, on
the CPU the allocated peak) and compares it with what the device has: the GPU's memory, or on the CPU
the host's available RAM minus
``VELORA_WORKER_HOST_RESERVE_BYTES`` (for the database, the other services, the Python runtime). A
run that cannot fit is stored as ``out_of_memory`` naming both numbers, without allocating.

A prediction can be wrong, so the training process also runs under a memory limit: the data segment
limit (``RLIMIT_DATA``: heap and private anonymous mappings, what tensors on the CPU take; unlike
``RLIMIT_AS`` it does not count address space merely reserved) of ``VELORA_WORKER_MAX_RSS`` bytes,
or for CPU runs by default the host's RAM minus the reserve. Past it an allocation fails in that
process (stored as ``out_of_memory``), and the kernel's OOM killer never has to pick a victim.
"""

from __future__ import annotations

import logging
import resource
from pathlib import Path
from typing import Any

from backend.settings import Settings
from velora_core.contract.result import RunResult, RunStatus
from velora_core.contract.spec import RunSpec

log = logging.getLogger(__name__)

GIB = 1024**3


def _meminfo(field: str) -> int | None:
    """A ``/proc/meminfo`` field in bytes (None off Linux)."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            name, _, value = line.partition(":")
            if name == field:
                return int(value.split()[0]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def device_budget(spec: RunSpec, settings: Settings) -> tuple[int, str] | None:
    """The bytes a run of ``spec`` may use on this worker's device, and what they are (in words)."""
    import torch

    device = spec.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            return None
        index = torch.device(device).index or 0
        props = torch.cuda.get_device_properties(index)
        return props.total_memory, f"the memory of {props.name} ({props.total_memory / GIB:.2f} GiB)"
    available = _meminfo("MemAvailable")
    if available is None:
        return None
    reserve = settings.worker_host_reserve_bytes
    budget = max(0, available - reserve)
    return budget, (
        f"this host's available RAM ({available / GIB:.2f} GiB) minus the reserve of "
        f"{reserve / GIB:.2f} GiB (VELORA_WORKER_HOST_RESERVE_BYTES) = {budget / GIB:.2f} GiB"
    )


def _card_family(name: str) -> str:
    """The card family (``velora_core.contract.cards``) of a CUDA device's name; Hopper when unknown."""
    from velora_core.contract.cards import CARD_FAMILIES, DEFAULT_CARD_FAMILY

    upper = name.upper()
    for family, card in CARD_FAMILIES.items():
        models = card.description.split("(")[0].replace(",", " ").split()
        if any(model.upper() in upper for model in models):
            return family
    return DEFAULT_CARD_FAMILY


def predicted_peak(spec: RunSpec) -> int | None:
    """What a steady training step of ``spec`` needs of its device, predicted by the fit machinery:
    on CUDA the allocator's reserved bytes plus the card family's context, on the CPU the allocated peak
    (None where it cannot predict: encoder workloads, a model made by a base run, a method the fake
    step cannot run)."""
    try:
        import torch

        from velora_core.bench.step_prediction import predict_step
        from velora_core.contract.cards import CARD_FAMILIES

        device = spec.device
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        if not device.startswith("cuda"):
            return predict_step(spec).peak_bytes
        card = CARD_FAMILIES[_card_family(torch.cuda.get_device_name(torch.device(device).index or 0))]
        predicted = predict_step(spec, card.cublas_workspace_bytes)
        return predicted.reserved_bytes + card.context_bytes
    except Exception as exc:  # the memory limit below still holds
        log.info("no memory prediction for %s: %s: %s", spec.method, type(exc).__name__, exc)
        return None


def refuse_if_too_large(spec: RunSpec, settings: Settings) -> RunResult | None:
    """An ``out_of_memory`` result naming the numbers if ``spec`` cannot fit its device, else None."""
    if not settings.worker_check_fit:
        return None
    budget = device_budget(spec, settings)
    if budget is None:
        return None
    peak = predicted_peak(spec)
    if peak is None or peak <= budget[0]:
        return None
    return RunResult(
        method=spec.method,
        status=RunStatus.OUT_OF_MEMORY,
        spec_hash=spec.spec_hash(),
        spec=spec.model_dump(mode="json"),
        failed_shape={"micro_batch": spec.micro_batch, "seq_len": spec.seq_len, "phase": "predicted"},
        error=f"refused before allocating: a steady training step is predicted to need {peak / GIB:.2f} GiB "
        f"({peak} bytes), more than {budget[1]} ({budget[0]} bytes)",
    )


def memory_limit(spec: RunSpec, settings: Settings) -> int | None:
    """The data-segment limit for a run of ``spec``: ``VELORA_WORKER_MAX_RSS``, else for CPU runs the
    host's RAM minus the reserve, else none."""
    if settings.worker_max_rss is not None:
        return settings.worker_max_rss
    if spec.device != "cpu":
        return None
    total = _meminfo("MemTotal")
    return None if total is None else max(GIB, total - settings.worker_host_reserve_bytes)


def apply_memory_limit(spec: RunSpec, settings: Settings) -> Any:
    """Lower this process's ``RLIMIT_DATA`` for the run (never raised again: a fresh pool process per
    run, ``VELORA_WORKER_MAX_TASKS_PER_CHILD=1``, starts with the worker's own limit)."""
    limit = memory_limit(spec, settings)
    if limit is None:
        return None
    soft, hard = resource.getrlimit(resource.RLIMIT_DATA)
    if soft != resource.RLIM_INFINITY and soft <= limit:
        return soft
    if hard != resource.RLIM_INFINITY:
        limit = min(limit, hard)
    resource.setrlimit(resource.RLIMIT_DATA, (limit, hard))
    return limit
