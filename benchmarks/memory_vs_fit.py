"""A comparison preset's memory, measured on a real run, against ``velora-bench fit``'s prediction.

For each method of the preset (``memory-7b`` by default: LLaMA-7B's shape, 8×512 tokens, bf16): the
prediction (``velora_core.bench.fit_estimate``, on the CPU: the allocated peak, the caching allocator's
reserved bytes over the run and the card family's CUDA context) and a real two-step run on the device
(the engine's tracked step, which the memory tracker measures; on CUDA also ``max_memory_allocated``
and ``max_memory_reserved``, and the CUDA context as ``torch.cuda.mem_get_info``'s used bytes less the
reserved ones). Prints the ratios and writes JSON named after the device.

    python benchmarks/memory_vs_fit.py [--preset memory-7b] [--device cuda] [--out benchmarks/results]
    python benchmarks/memory_vs_fit.py --model tiny --device cpu    # the same path, small, on a CPU
    python benchmarks/memory_vs_fit.py --predict-only               # the CPU side alone: fit's numbers
"""

from __future__ import annotations

import argparse
import gc
import json
import re
import time
from pathlib import Path

import torch

from velora_core.bench.engine import execute
from velora_core.bench.environment import cpu_name
from velora_core.bench.fit_estimate import estimate
from velora_core.contract.fit_request import FitRequest
from velora_core.contract.presets.comparisons import comparison_preset


def _ratio(a: int | None, b: int | None) -> float | None:
    return round(a / b, 4) if a is not None and b else None


def _card_family() -> str:
    """The card family of ``velora_core.contract.cards`` this card belongs to (by compute capability)."""
    if not torch.cuda.is_available():
        return "hopper"
    major, minor = torch.cuda.get_device_capability(0)
    return {9: "hopper", 7: "volta"}.get(major, "ada" if (major, minor) == (8, 9) else "ampere")


def _context_bytes() -> int | None:
    """The CUDA context and anything else outside the allocator: the card's used bytes less reserved."""
    if not torch.cuda.is_available():
        return None
    free, total = torch.cuda.mem_get_info()
    return int(total - free - torch.cuda.memory_reserved())


def measure(
    preset: str,
    model: str | None,
    device: str,
    seq_len: int | None,
    micro_batch: int | None,
    predict_only: bool = False,
) -> dict:
    overrides: dict = {"steps": 2, "device": device}
    if model is not None:
        overrides["model"] = {"source": "preset", "name": model, "memory_only": True}
    if seq_len is not None:
        overrides["seq_len"] = seq_len
    if micro_batch is not None:
        overrides["micro_batch"] = micro_batch
    comparison = comparison_preset(preset, overrides)
    cases = []
    for spec in comparison.runs():
        start = time.perf_counter()
        request = FitRequest(spec=spec.model_dump(mode="json"), card_family=_card_family())
        (predicted,) = estimate(request)
        fit_s = time.perf_counter() - start
        prediction = {
            "method": spec.method,
            "predicted_peak_bytes": predicted.peak_bytes,
            "predicted_phase": predicted.peak_phase,
            "predicted_components": predicted.components(),
            "predicted_reserved_bytes": predicted.reserved_bytes,
            "predicted_context_bytes": predicted.context_bytes,
            "traced_layers": predicted.traced_layers,
            "fit_s": round(fit_s, 1),
        }
        if predict_only:
            cases.append(prediction)
            print(
                f"{spec.method:<13} allocated {predicted.peak_bytes / 2**30:7.2f} GiB  reserved "
                f"{predicted.reserved_bytes / 2**30:7.2f} GiB  + context {predicted.card_bytes_needed / 2**30:7.2f} "
                f"GiB  ({fit_s:.1f} s)",
                flush=True,
            )
            continue
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        baseline = int(torch.cuda.memory_allocated()) if spec.device.startswith("cuda") else None
        start = time.perf_counter()
        result = execute(spec)
        memory = result.memory
        case = {
            **prediction,
            "status": str(result.status),
            "error": result.error,
            "tracked_peak_bytes": memory.measured_peak_bytes,
            "tracked_phase": memory.peak_phase,
            "tracked_components": memory.peak_components,
            "max_memory_allocated": memory.peak_bytes,
            "max_memory_reserved": memory.cuda_reserved_bytes,
            "run_peak_reserved_bytes": getattr(memory, "run_peak_reserved_bytes", None),
            "measured_context_bytes": _context_bytes(),
            "allocated_before_run": baseline,
            "tracked_over_predicted": _ratio(memory.measured_peak_bytes, predicted.peak_bytes),
            "allocated_over_predicted": _ratio(memory.peak_bytes, predicted.peak_bytes),
            "allocated_over_tracked": _ratio(memory.peak_bytes, memory.measured_peak_bytes),
            "reserved_over_tracked": _ratio(memory.cuda_reserved_bytes, memory.measured_peak_bytes),
            "reserved_over_predicted": _ratio(memory.cuda_reserved_bytes, predicted.reserved_bytes),
            "run_s": round(time.perf_counter() - start, 1),
        }
        del result, memory
        cases.append(case)
        print(
            f"{case['method']:<13} predicted {case['predicted_peak_bytes'] / 2**30:7.2f} GiB "
            f"tracked {(case['tracked_peak_bytes'] or 0) / 2**30:7.2f} GiB "
            f"allocated {(case['max_memory_allocated'] or 0) / 2**30:7.2f} GiB  "
            f"tracked/pred {case['tracked_over_predicted']}  alloc/pred {case['allocated_over_predicted']}  "
            f"alloc/tracked {case['allocated_over_tracked']}  reserved/pred {case['reserved_over_predicted']}  "
            f"({case['status']})",
            flush=True,
        )
    return {"preset": preset, "spec": comparison.base.model_dump(mode="json"), "cases": cases}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--preset", default="memory-7b")
    parser.add_argument("--model", help="another model preset (e.g. tiny, to check the path on a CPU)")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--seq-len", type=int)
    parser.add_argument("--micro-batch", type=int)
    parser.add_argument("--out", default="benchmarks/results")
    parser.add_argument("--predict-only", action="store_true", help="fit's predictions alone (no device)")
    args = parser.parse_args()
    if args.device.startswith("cuda") and not torch.cuda.is_available() and not args.predict_only:
        raise SystemExit("no CUDA device here: run with --device cpu --model tiny to check the path")
    on_cuda = args.device.startswith("cuda") and torch.cuda.is_available()
    card = torch.cuda.get_device_name(0) if on_cuda else f"{cpu_name()} (CPU)"
    payload = {
        "device": card,
        "torch": torch.__version__,
        "predict_only": args.predict_only,
        **measure(args.preset, args.model, args.device, args.seq_len, args.micro_batch, args.predict_only),
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    slug = re.sub(r"[^a-z0-9]+", "-", card.lower()).strip("-")[:60]
    kind = "fit_only" if args.predict_only else "memory_vs_fit"
    path = out / f"{kind}_{args.model or args.preset}_{slug}.json"
    path.write_text(json.dumps(payload, indent=2))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
