"""Training-step time of VeLoRA against gradient checkpointing and plain training (VeLoRA Table 7).

Six methods on one LLaMA shape: ``velora+full`` against ``full+gc`` and ``full``, ``velora+lora``
against ``lora+gc`` and ``lora``. Each is built the way a run builds it (``prepare_model``, the
method's optimizer) and takes whole training steps (forward, backward, optimizer step); the steps
are alternated (full, full+gc, velora+full, lora, … , then again) so the ratios compare like with
like on a machine whose speed drifts, and the median is kept. Prints a table and writes JSON.

    python benchmarks/step_speed.py [--out benchmarks/results] [--repeats 15]

Shapes: the CPU shape (LLaMA-60M's layers: 512 hidden, 1376 intermediate, 8 heads; 2 layers,
1×512 tokens, fp32) always; with CUDA also LLaMA-7B's layers (4096 hidden, 11008 intermediate, 32
heads; 2 layers, 1×2048 tokens, bf16). Batch 1, as in the paper's Table 7. VeLoRA and LoRA use
their default settings (VeLoRA: 32 groups on ``v_proj`` and ``down_proj``; LoRA: r=8 on every
projection).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch
from transformers import LlamaConfig

from velora_core.bench.environment import cpu_name
from velora_core.contract.spec import OptimizerSpec
from velora_core.memory.saved_tensors import training_forward
from velora_core.methods.optimizers import build_optimizer
from velora_core.methods.registry import prepare_model
from velora_core.models.loading import ModelSource

METHODS = ["full", "full+gc", "velora+full", "lora", "lora+gc", "velora+lora"]
#: (method, reference): the ratios reported, with the targets this project set.
RATIOS = {
    ("velora+full", "full+gc"): 0.85,
    ("velora+full", "full"): None,
    ("full+gc", "full"): None,
    ("velora+lora", "lora"): 1.02,
    ("velora+lora", "lora+gc"): None,
    ("lora+gc", "lora"): None,
}
CPU_CASE = {
    "name": "cpu-60m-layers",
    "hidden": 512,
    "intermediate": 1376,
    "heads": 8,
    "layers": 2,
    "tokens": (1, 512),
    "vocab": 1024,
    "dtype": "fp32",
}
GPU_CASE = {
    "name": "7b-layers",
    "hidden": 4096,
    "intermediate": 11008,
    "heads": 32,
    "layers": 2,
    "tokens": (1, 2048),
    "vocab": 32000,
    "dtype": "bf16",
}
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _config(case: dict) -> LlamaConfig:
    return LlamaConfig(
        hidden_size=case["hidden"],
        intermediate_size=case["intermediate"],
        num_attention_heads=case["heads"],
        num_key_value_heads=case["heads"],
        num_hidden_layers=case["layers"],
        vocab_size=case["vocab"],
        max_position_embeddings=max(case["tokens"][1], 128),
        tie_word_embeddings=False,
    )


def time_case(case: dict, device: torch.device, repeats: int, warmup: int = 3) -> dict:
    dtype = DTYPES[case["dtype"]]
    config = _config(case)
    runs = {}
    for method in METHODS:
        torch.manual_seed(0)  # the same weights for every method
        source = ModelSource(config=config, dtype=dtype, device=str(device))
        prepared = prepare_model(method, source, {})
        prepared.model.train()
        runs[method] = (prepared, build_optimizer(prepared, OptimizerSpec(lr=1e-4)))
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(3, case["vocab"], case["tokens"], generator=gen).to(device)
    batch = {"input_ids": ids, "labels": ids.clone()}
    times: dict[str, list[float]] = {m: [] for m in METHODS}
    for i in range(warmup + repeats):
        for method, (prepared, optimizer) in runs.items():
            _sync(device)
            start = time.perf_counter()
            with training_forward(prepared.model, prepared.saved_tensors_hooks):
                loss = prepared.model(**batch).loss
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            _sync(device)
            if i >= warmup:
                times[method].append(time.perf_counter() - start)
    median = {m: statistics.median(t) for m, t in times.items()}
    ratios = [
        {
            "method": method,
            "reference": reference,
            "ratio": median[method] / median[reference],
            "target": target,
            "met": None if target is None else median[method] / median[reference] <= target,
        }
        for (method, reference), target in RATIOS.items()
    ]
    return {**case, "tokens": list(case["tokens"]), "median_s": median, "ratios": ratios, "repeats": repeats}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", default="benchmarks/results", help="folder for the JSON")
    parser.add_argument("--repeats", type=int, default=15)
    args = parser.parse_args()

    results = [time_case(CPU_CASE, torch.device("cpu"), args.repeats)]
    device_name = f"{cpu_name()} ({torch.get_num_threads()} threads)"
    if torch.cuda.is_available():
        results.append(time_case(GPU_CASE, torch.device("cuda"), args.repeats))
        device_name += f"; {torch.cuda.get_device_name(0)}"

    for r in results:
        print(
            f"{r['name']} ({r['dtype']}, {r['tokens'][0]}x{r['tokens'][1]} tokens), median of {r['repeats']}:"
        )
        for method, seconds in r["median_s"].items():
            print(f"  {method:<12} {seconds * 1e3:9.1f} ms/step")
        for ratio in r["ratios"]:
            target = "" if ratio["target"] is None else f"  (target <= {ratio['target']}: {ratio['met']})"
            print(f"  {ratio['method']:>12} / {ratio['reference']:<8} {ratio['ratio']:.3f}{target}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    tag = "cuda" if torch.cuda.is_available() else "cpu"
    payload = {
        "device": device_name,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "cases": results,
    }
    path = out / f"step_speed_{tag}.json"
    path.write_text(json.dumps(payload, indent=2))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
