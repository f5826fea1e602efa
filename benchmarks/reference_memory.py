"""Published GPU memory measurements against ``velora-bench fit``: the signed error of each, in plain sight.

Each ``benchmarks/reference/*.json`` holds one source's measurements with the exact configuration that
produced them and what each statistic is (``docs/memory-references.md`` explains every row). For each
row this predicts the same run with ``fit`` (``velora_core.bench.fit_estimate``, on the CPU) and compares
the statistic it measured:

- ``accelerator_memory_max`` (``torch.cuda.max_memory_reserved()`` over a whole run) against fit's
  reserved bytes over the training run (the CUDA context is outside ``memory_reserved``, so not added);
- ``allocated_after_step`` (``torch.cuda.memory_allocated()`` after ``optimizer.step()``, activations
  gone) against what a steady run holds then: weights, trainable parameters, one gradient per trainable
  parameter and AdamW's two states (fit's trainable bytes times four, as torch's AdamW keeps them in
  the parameter's dtype).

    python benchmarks/reference_memory.py [--out benchmarks/results/reference_memory.json]

Prints a table with the signed error ((predicted - measured) / measured) and writes it as JSON.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from velora_core.bench.environment import cpu_name
from velora_core.bench.fit_estimate import estimate
from velora_core.contract.fit_request import FitEstimate, FitRequest

REFERENCES = Path(__file__).parent / "reference"
#: AdamW's state per trainable parameter, in the parameter's dtype: exp_avg and exp_avg_sq.
ADAMW_STATES = 2


def predicted_statistic(statistic: str, row: FitEstimate) -> int:
    """fit's number for a published ``statistic`` (see the module docstring)."""
    if statistic == "accelerator_memory_max":
        return row.reserved_bytes
    if statistic == "allocated_after_step":
        return row.weights + row.trainable * (2 + ADAMW_STATES)
    raise ValueError(f"unknown statistic {statistic!r}")


def predict(source: dict[str, Any]) -> list[dict[str, Any]]:
    """Each row of one reference file, predicted (rows with the same run share one prediction)."""
    cache: dict[str, FitEstimate] = {}
    out = []
    for entry in source["rows"]:
        spec = {**source["base"], "method": entry["method"], "method_config": entry["method_config"]}
        key = json.dumps(spec, sort_keys=True)
        start = time.perf_counter()
        if key not in cache:
            cache[key] = estimate(FitRequest(spec=spec, card_family=source["card_family"]))[0]
        row = cache[key]
        predicted = predicted_statistic(entry["statistic"], row)
        measured = entry["measured_bytes"]
        out.append(
            {
                "name": entry["name"],
                "source": source["source"],
                "file": entry["file"],
                "statistic": entry["statistic"],
                "exact": entry["exact"],
                "measured_bytes": measured,
                "predicted_bytes": predicted,
                "error": round((predicted - measured) / measured, 4),
                "predicted_allocated_peak_bytes": row.peak_bytes,
                "predicted_reserved_bytes": row.reserved_bytes,
                "traced_layers": row.traced_layers,
                "seconds": round(time.perf_counter() - start, 1),
            }
        )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="benchmarks/results/reference_memory.json")
    args = parser.parse_args()
    rows = []
    for path in sorted(REFERENCES.glob("*.json")):
        rows += predict(json.loads(path.read_text()))
    print(f"{'reference':<62} {'statistic':<24} {'measured GiB':>12} {'fit GiB':>9} {'error':>8}")
    for r in rows:
        print(
            f"{r['name']:<62} {r['statistic']:<24} {r['measured_bytes'] / 2**30:12.2f} "
            f"{r['predicted_bytes'] / 2**30:9.2f} {100 * r['error']:+7.1f}%"
        )
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"machine": f"{cpu_name()} (CPU)", "rows": rows}, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
