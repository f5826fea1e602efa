""""Will it fit?" answered for the card: each method's step predicted (``velora_core.bench.step_prediction``),
with the allocated peak, the caching allocator's reserved bytes, the CUDA context and the card side by side.

A run fits when the allocator's peak reserved bytes over the run plus the CUDA context are within the
card (``velora_core.contract.cards``; what runs out on a GPU is reserved memory, not live tensors).
The largest micro-batch: activation memory grows linearly in the micro-batch at a fixed sequence
length, so the reserved bytes are close to a line through the steps at ``N`` and ``2N``; its solution
for the card is tried, and the size beside it, until a size that fits sits next to one that does not
(reserved memory grows in whole segments, so the line is redrawn through the nearest sizes tried).

    python -m velora_core.bench.fit_estimate --model llama-7b --methods full lora qlora --micro-batch 8 \\
        --seq-len 512 --dtype bf16 [--gpu-gib 80] [--json]
    python -m velora_core.bench.fit_estimate --spec my_run.yaml --set method_config.lora.r=32 --gpu-gib 24

is the same as ``velora-bench fit …`` (the service runs this module in a subprocess, the request on
standard input: ``--request -``).
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing
import os
import sys
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor

from velora_core.bench.step_prediction import StepPrediction, StepPredictor
from velora_core.cli.fit_command import add_fit_arguments, jobs_from_args, request_from_args
from velora_core.contract.cards import CARD_FAMILIES
from velora_core.contract.exit_codes import EXIT_BAD_INPUT, EXIT_FAILED, EXIT_OK
from velora_core.contract.fit_request import MAX_SEARCHED_MICRO_BATCH, FitEstimate, FitRequest, fit_run
from velora_core.contract.result import PEAK_COMPONENTS
from velora_core.contract.spec import RunSpec

ALLOCATOR_NOTE = (
    "reserved: PyTorch's caching-allocator rules replayed over two steps on one stream, the cache never "
    "emptied and never short of memory (velora_core/memory/allocator.py); evaluation and generation "
    "are not part of the run predicted"
)
#: Rounds of the largest-micro-batch search (one size each, two in the first), after the first two sizes.
_MAX_ROUNDS = 9


def _first_guess(first: StepPrediction, second: StepPrediction, micro_batch: int, budget: int) -> int:
    """Each phase's peak as a line through the steps at ``micro_batch`` and twice it, solved for the
    budget less the allocator's overhead at ``micro_batch`` (reserved minus the allocated peak); the
    smallest solution (a phase whose peak does not grow sets no limit)."""
    overhead = first.reserved_bytes - first.peak_bytes
    limits = []
    for phase, low in first.phase_peaks.items():
        slope = (second.phase_peaks.get(phase, low) - low) / micro_batch
        if slope > 0:
            limits.append(math.floor((budget - overhead - (low - slope * micro_batch)) / slope))
    return min(limits, default=MAX_SEARCHED_MICRO_BATCH)


def largest_micro_batch(
    step_at: Callable[[int], StepPrediction], first: StepPrediction, micro_batch: int, budget: int
) -> tuple[int | None, list[str]]:
    """The largest micro-batch whose run reserves at most ``budget`` bytes (None if 1 does not):
    a first guess from the phases' lines (:func:`_first_guess`), tried with the size beside it; then
    a size from the line through the bracket's ends, or its middle every other round, until a size
    that fits sits next to one that does not. Reserved memory is not monotonic in the micro-batch
    (a tensor crossing 10 MiB changes segment), so the answer is a size that fits next to one that
    does not, not always the largest of all."""
    steps = {micro_batch: first}

    def at(size: int) -> int:
        if size not in steps:
            steps[size] = step_at(size)
        return steps[size].reserved_bytes

    if first.reserved_bytes > budget and micro_batch > 1 and at(1) > budget:
        return None, []  # not even one sequence: no line needed
    at(2 * micro_batch)
    cap = MAX_SEARCHED_MICRO_BATCH
    guess = _first_guess(first, steps[2 * micro_batch], micro_batch, budget)
    for round_ in range(_MAX_ROUNDS):
        fitting = [m for m in steps if at(m) <= budget]
        failing = [m for m in steps if at(m) > budget]
        low, high = max(fitting, default=0), min(failing, default=cap + 1)
        if high - low <= 1:
            notes = [f"capped at {cap} (a run's limit)"] if low == cap else []
            return (low or None), notes
        if round_ > 0:  # the line through the bracket's ends (the nearest sizes tried), or its middle
            a, b = (
                (low, high)
                if low > 0 and high <= cap
                else sorted(steps, key=lambda m: abs(at(m) - budget))[:2]
            )
            slope = (at(b) - at(a)) / (b - a) if a != b else 0
            guess = (
                (low + high) // 2
                if round_ % 2 == 0 or slope <= 0
                else math.floor(a + (budget - at(a)) / slope)
            )
        guess = min(max(guess, low + 1), high - 1)
        beside = guess + 1 if at(guess) <= budget else guess - 1
        if round_ == 0 and low < beside < high:  # the first line is usually right: close it at once
            at(beside)
    low = max((m for m in steps if at(m) <= budget), default=None)
    closed = low is not None and any(at(m) > budget for m in (low + 1,) if m in steps)
    return low, [] if closed else ["the search stopped before a size that fits met one that does not"]


def search_micro_batch(
    predictor: StepPredictor, micro_batch: int, budget: int
) -> tuple[int | None, list[str]]:
    """:func:`largest_micro_batch` over ``predictor``'s steps: sizes read off the micro-batch line where
    it holds, then the answer traced (or 1, where nothing fits), and the size above it too unless the
    answer's log was the line's byte for byte; where a traced size disagrees with the line's verdict,
    the search runs again on traced steps only."""
    largest, notes = largest_micro_batch(
        predictor.reserved_at, predictor.reserved_at(micro_batch), micro_batch, budget
    )
    if not predictor.from_line:
        return largest, notes

    def traced(size: int) -> int:
        return predictor.reserved_at(size, traced=True).reserved_bytes

    def above(size: int) -> bool:  # the size above the answer does not fit (off a confirmed line)
        return (
            size > MAX_SEARCHED_MICRO_BATCH
            or (
                predictor.reserved_at(size)
                if predictor.line_confirmed
                else predictor.reserved_at(size, traced=True)
            ).reserved_bytes
            > budget
        )

    confirmed = traced(1) > budget if largest is None else traced(largest) <= budget and above(largest + 1)
    if confirmed:
        return largest, notes
    largest, notes = largest_micro_batch(
        lambda size: predictor.reserved_at(size, traced=True),
        predictor.reserved_at(micro_batch, traced=True),
        micro_batch,
        budget,
    )
    return largest, [*notes, "the micro-batch line missed the answer: every size searched was traced"]


def estimate_one(request: FitRequest, spec: RunSpec) -> FitEstimate:
    """The row of ``request`` for one method's run ``spec`` (see :func:`estimate`)."""
    workspace = CARD_FAMILIES[request.card_family].cublas_workspace_bytes
    context = request.context_bytes
    start = time.perf_counter()
    predictor = StepPredictor(spec, workspace, request.expandable_segments)
    step = predictor.at(spec.micro_batch)
    row = FitEstimate(
        method=spec.method,
        micro_batch=spec.micro_batch,
        seq_len=spec.seq_len,
        dtype=spec.dtype,
        autocast=spec.autocast,
        peak_bytes=step.peak_bytes,
        peak_phase=step.peak_phase,
        first_step_peak_bytes=step.first_peak_bytes,
        **step.peak_components,
        reserved_bytes=step.reserved_bytes,
        context_bytes=context,
        traced_layers=step.traced_layers,
        notes=[*step.notes, ALLOCATOR_NOTE],
    )
    gpu = request.gpu_bytes
    if gpu is not None:
        largest, search_notes = search_micro_batch(predictor, spec.micro_batch, gpu - context)
        row = row.model_copy(
            update={
                "gpu_bytes": gpu,
                "fits": row.card_bytes_needed <= gpu,
                "max_micro_batch": largest,
                "notes": row.notes + search_notes,
            }
        )
    return row.model_copy(update={"seconds": round(time.perf_counter() - start, 2)})


def available_cpus() -> int:
    """The CPUs this process may run on (its affinity, else the machine's count)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def _one_thread() -> None:
    """A forked process's first act: no thread pool. One the parent used (a real op on a tensor big
    enough to split) does not survive the fork, and the next parallel op would wait on it forever;
    the few real ops of a prediction are too small to gain from threads."""
    import torch

    torch.set_num_threads(1)


def estimate(request: FitRequest, allow_local: bool = True, jobs: int = 1) -> list[FitEstimate]:
    """One :class:`FitEstimate` per method of ``request``, in its order.

    Args:
        jobs: methods predicted at once, each in a process forked from this one (its libraries
            imported, nothing else shared; each runs single-threaded: see :func:`_one_thread`).
            1: one after another, in this process. Fork where the platform has it, else 1.
    Raises:
        ValueError: a method's spec or model cannot be built (named).
    """
    specs = [fit_run(run, allow_local) for run in request.runs()]  # every spec checked before any step
    jobs = min(jobs, len(specs)) if "fork" in multiprocessing.get_all_start_methods() else 1
    if jobs <= 1:
        return [estimate_one(request, spec) for spec in specs]
    with ProcessPoolExecutor(
        jobs, mp_context=multiprocessing.get_context("fork"), initializer=_one_thread
    ) as pool:
        return list(pool.map(estimate_one, [request] * len(specs), specs))


# --- command line -------------------------------------------------------------------------------


def print_estimates(rows: Sequence[FitEstimate], as_json: bool) -> None:
    """A table (GiB, or MiB for small models): the allocated peak by component, the reserved bytes,
    what the card must hold (reserved + context) and the card, with the notes under it; or the JSON list."""
    if as_json:
        print(json.dumps([r.model_dump(mode="json") for r in rows], indent=2))
        return
    big = max(r.card_bytes_needed for r in rows) >= 1024**3
    unit, scale = ("GiB", 1024**3) if big else ("MiB", 1024**2)
    header = ["method", f"alloc {unit}", "phase", *PEAK_COMPONENTS, f"reserved {unit}", f"+context {unit}"]
    searched = any(r.gpu_bytes is not None for r in rows)
    if searched:
        header += [f"card {unit}", "fits", "max batch"]
    header += ["seconds"]
    print("  ".join(f"{h:>12}" for h in header))
    for r in rows:
        cells = [r.method, f"{r.peak_bytes / scale:.2f}", r.peak_phase]
        cells += [f"{v / scale:.2f}" for v in r.components().values()]
        cells += [f"{r.reserved_bytes / scale:.2f}", f"{r.card_bytes_needed / scale:.2f}"]
        if searched:
            cells += [
                f"{(r.gpu_bytes or 0) / scale:.2f}",
                "yes" if r.fits else "no",
                str(r.max_micro_batch or "none"),
            ]
        cells += [f"{r.seconds:.1f}"]
        print("  ".join(f"{c:>12}" for c in cells))
    print(f"context: {rows[0].context_bytes / 1024**2:.0f} MiB (CUDA context, outside the allocator)")
    for note in dict.fromkeys(n for r in rows for n in r.notes):
        print(f"note: {note}")


def run(args: argparse.Namespace) -> int:
    """The command: print the estimates; a bad input is one line on stderr and exit code 2."""
    try:
        jobs = jobs_from_args(args) or available_cpus()
        rows = estimate(request_from_args(args), allow_local=not args.no_local, jobs=jobs)
    except (ValueError, OSError) as exc:
        print(f"velora-bench fit: error: {' '.join(str(exc).split())}", file=sys.stderr)  # one line
        return EXIT_BAD_INPUT
    except Exception as exc:  # a method the fake step cannot run: say which error, in one line
        words = " ".join(str(exc).split())[:500]
        print(f"velora-bench fit: the fake step failed: {type(exc).__name__}: {words}", file=sys.stderr)
        return EXIT_FAILED
    print_estimates(rows, args.json)
    return EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="velora-bench fit", description=__doc__.splitlines()[0])
    add_fit_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    # How the service runs it (one request per process): the answer is written, so skip the
    # interpreter's teardown of torch and the rest (~1.2 s on a 2-core CPU, docs/service.md).
    status = main()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)
