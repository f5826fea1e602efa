"""Forward+backward time of velora_linear (and peft's VeloraFunction) over plain F.linear.

Each case is timed alternately (plain, ours, peft, plain, ours, peft, …) in one run, so the ratios
compare like with like on a machine whose speed drifts. Prints a table and writes JSON.

    python benchmarks/layer_speed.py [--out benchmarks/results] [--repeats 30]

Shapes: the CPU shape (4×512 tokens, 1024→1024, G=8, fp32) always; with CUDA also LLaMA-7B's
(8×2048 tokens, 4096→4096 with G=32 and 11008→4096 with G=86, bf16).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from peft.tuners.lora.velora import VeloraFunction

from velora_core.bench.environment import cpu_name
from velora_core.velora.projection import normalise, sub_token_size, velora_linear

CPU_CASES = [{"name": "cpu-1024", "tokens": (4, 512), "d": 1024, "m": 1024, "groups": 8, "dtype": "fp32"}]
GPU_CASES = [
    {"name": "7b-attn", "tokens": (8, 2048), "d": 4096, "m": 4096, "groups": 32, "dtype": "bf16"},
    {"name": "7b-down", "tokens": (8, 2048), "d": 11008, "m": 4096, "groups": 86, "dtype": "bf16"},
]
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_case(case: dict, device: torch.device, repeats: int, warmup: int = 3) -> dict:
    dtype = DTYPES[case["dtype"]]
    gen = torch.Generator(device="cpu").manual_seed(0)
    x = torch.randn(*case["tokens"], case["d"], generator=gen).to(device, dtype).requires_grad_()
    weight = (
        (torch.randn(case["m"], case["d"], generator=gen) / case["d"] ** 0.5)
        .to(device, dtype)
        .requires_grad_()
    )
    bias = torch.zeros(case["m"], device=device, dtype=dtype, requires_grad=True)
    v = normalise(torch.randn(sub_token_size(case["d"], case["groups"]), generator=gen)).to(device)
    v_peft = v.to(dtype)
    grad_out = torch.randn(*case["tokens"], case["m"], generator=gen).to(device, dtype)
    g = case["groups"]

    fns = {
        "plain": lambda: F.linear(x, weight, bias),
        "velora": lambda: velora_linear(x, weight, bias, v, g, 1.0),
        "peft": lambda: VeloraFunction.apply(x, weight, bias, v_peft, g, 1.0),
    }
    times: dict[str, list[float]] = {k: [] for k in fns}
    for i in range(warmup + repeats):
        for name, fn in fns.items():
            x.grad = weight.grad = bias.grad = None
            _sync(device)
            start = time.perf_counter()
            fn().backward(grad_out)
            _sync(device)
            if i >= warmup:
                times[name].append(time.perf_counter() - start)
    med = {k: statistics.median(t) for k, t in times.items()}
    return {
        **case,
        "tokens": list(case["tokens"]),
        "median_s": med,
        "ratio_velora": med["velora"] / med["plain"],
        "ratio_peft": med["peft"] / med["plain"],
        "repeats": repeats,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", default="benchmarks/results", help="folder for the JSON")
    parser.add_argument("--repeats", type=int, default=30)
    args = parser.parse_args()

    results = [time_case(c, torch.device("cpu"), args.repeats) for c in CPU_CASES]
    device_name = f"{cpu_name()} ({torch.get_num_threads()} threads)"
    if torch.cuda.is_available():
        results += [time_case(c, torch.device("cuda"), args.repeats) for c in GPU_CASES]
        device_name = torch.cuda.get_device_name(0)

    print(
        f"{'case':<10} {'dtype':<5} {'plain ms':>9} {'velora ms':>10} {'peft ms':>8} {'velora/plain':>13} {'peft/plain':>11}"
    )
    for r in results:
        m = r["median_s"]
        print(
            f"{r['name']:<10} {r['dtype']:<5} {m['plain'] * 1e3:9.2f} {m['velora'] * 1e3:10.2f} {m['peft'] * 1e3:8.2f}"
            f" {r['ratio_velora']:13.3f} {r['ratio_peft']:11.3f}"
        )
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    tag = "cuda" if torch.cuda.is_available() else "cpu"
    payload = {
        "device": device_name,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "cases": results,
    }
    path = out / f"layer_speed_{tag}.json"
    path.write_text(json.dumps(payload, indent=2))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
