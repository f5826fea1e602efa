"""The tables of one run (memory report, training curve, where and when it ran) and of "Will it
fit?". Pure functions of API responses, no Streamlit."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from dashboard.formatting import COMPONENTS, METRIC_LABELS, format_bytes
from velora_core.contract.result import ItemRecords, total_memory_bytes


def memory_table(memory: dict[str, Any]) -> list[dict[str, str]]:
    """A run's memory report: each component, the predicted total, the measured peak, the bytes
    VeLoRA's wrapped layers were predicted to save and did save, and those offloading kept in host
    memory."""

    def line(label: str, value: int | None, missing: str = "–") -> dict[str, str]:
        return {
            "Component": label,
            "Bytes": missing if value is None else f"{value:,}",
            "Size": format_bytes(value),
        }

    return [
        *(line(label, memory.get(key) or 0) for key, label in COMPONENTS),
        line("Total (predicted)", total_memory_bytes(memory)),
        line("Measured peak (tracker)", memory.get("measured_peak_bytes"), missing="not tracked"),
        line("Temporaries at the peak", memory.get("temporary_bytes"), missing="not tracked"),
        line("CUDA peak allocated", memory.get("peak_bytes"), missing="not measured off CUDA"),
        line("CUDA peak reserved", memory.get("cuda_reserved_bytes"), missing="not measured off CUDA"),
        line("Allocator gap (reserved − tracked)", memory.get("allocator_gap_bytes"), missing="–"),
        line("VeLoRA layers, predicted", memory.get("predicted_activation_bytes") or 0),
        line("VeLoRA layers, measured", memory.get("velora_measured_bytes") or 0),
        line("Activations offloaded to host (not in the total)", memory.get("host_activation_bytes") or 0),
    ]


#: The metrics table's columns, in order, with the words it shows.
METRIC_COLUMNS = {
    "step": "Step",
    "loss": "Loss",
    "lr": "Learning rate",
    "tokens_per_s": "Tokens/s",
    "step_time_s": "Step time (s)",
    "memory_allocated_bytes": "Memory allocated (bytes)",
}


def metric_rows(points: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """A run's training curve as table rows with readable column names, leaving out a column that no
    point has a value for (memory allocated is recorded on CUDA only, step time not by every engine)."""
    shown = {
        key: label for key, label in METRIC_COLUMNS.items() if any(p.get(key) is not None for p in points)
    }
    return [{label: point.get(key) for key, label in shown.items()} for point in points]


def run_facts(run: dict[str, Any]) -> list[dict[str, str]]:
    """Where and when a run ran, and where its artifact is."""
    result = run.get("result") or {}
    spec = run.get("spec") or result.get("spec") or {}
    evaluation = result.get("eval") or {}
    facts = [
        ("Workload", spec.get("workload")),
        ("Metric", METRIC_LABELS.get(evaluation.get("metric") or "", evaluation.get("metric"))),
        ("Artifact", run.get("artifact_path") or result.get("artifact_path") or "none"),
        ("Worker", run.get("worker_host")),
        ("Device", run.get("worker_device")),
        ("Queue", run.get("queue")),
        ("Spec hash", run.get("spec_hash")),
        ("Attempts", run.get("attempts")),
        ("Created", run.get("created_at")),
        ("Started", run.get("started_at")),
        ("Finished", run.get("finished_at")),
    ]
    return [{"Fact": name, "Value": "–" if value is None else str(value)} for name, value in facts]


def fit_rows(estimates: Sequence[dict[str, Any]]) -> list[dict[str, str]]:
    """The "Will it fit?" table: per method its predicted allocated peak, when it happens, the caching
    allocator's reserved bytes and what the card must hold (reserved + CUDA context), whether it fits
    and the largest micro-batch that does (``POST /fit``'s estimates)."""
    rows = []
    for e in estimates:
        fits = e.get("fits")
        largest = e.get("max_micro_batch")
        rows.append(
            {
                "Method": e["method"],
                "Allocated": format_bytes(e["peak_bytes"]),
                "Peak during": e["peak_phase"],
                "Reserved": format_bytes(e.get("reserved_bytes", 0)),
                "Card needs": format_bytes(e.get("reserved_bytes", 0) + e.get("context_bytes", 0)),
                "Activations": format_bytes(e["activations"]),
                "Temporaries": format_bytes(e["temporary"]),
                "Fits": "–" if fits is None else ("yes" if fits else "no"),
                "Largest micro-batch": "–" if e.get("gpu_bytes") is None else str(largest or "none"),
            }
        )
    return rows


#: Items of a run's per-item records the Run detail page shows.
ITEM_SAMPLE = 10


def item_sample(records: ItemRecords, count: int = ITEM_SAMPLE) -> list[dict[str, Any]]:
    """The first ``count`` item records, one row each: the prompt hash, each choice's
    log-likelihood (the pick marked ``*``), the pick, the answer and whether it is right."""
    rows = []
    for row in records.rows(0, count):
        lls = [f"{'*' if i == row['choice'] else ''}{v:.3f}" for i, v in enumerate(row["loglikelihoods"])]
        rows.append(
            {
                "prompt hash": row["prompt_hash"],
                "log-likelihoods": "  ".join(lls),
                "choice": row["choice"],
                "answer": row["answer"],
                "correct": "yes" if row["correct"] else "no",
            }
        )
    return rows
