"""``POST /fit`` answered cold and by the warm spare (a benchmark, not a test), and the spare's memory.

The same request, alternated: once to an API with ``VELORA_FIT_WARM_SPARE=false`` (a process started
for the request, which imports torch, transformers, peft and bitsandbytes first) and once to one
with the spare (started ahead, its libraries imported and warmed up). Both APIs run in this
process (FastAPI's TestClient, SQLite in a temporary directory); the answers' cache is emptied
before each request, and each request waits until no prediction process is busy (the spare's CPU
time has stopped growing: its warm-up is over), so neither shares the CPU with an import. Prints
each round and the medians, the idle spare's resident memory (``VmRSS``, and ``Pss``: its share of
pages it shares with others), and writes ``benchmarks/results/fit_spare.json``.

    python benchmarks/fit_spare.py                          # llama-7b, lora, 1×128, bf16, 3 rounds
    python benchmarks/fit_spare.py --methods full lora qlora --micro-batch 8 --seq-len 512 --gpu-gib 80 \
        --out …                                              # as the page asks: one request
    python benchmarks/fit_spare.py --model tiny --seq-len 16 --dtype fp32 --rounds 5
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from fastapi.testclient import TestClient  # noqa: E402

from backend import store  # noqa: E402
from backend.api.main import create_app  # noqa: E402
from backend.db import Database  # noqa: E402
from backend.migrate import upgrade  # noqa: E402
from backend.settings import Settings  # noqa: E402
from benchmarks.api_load import commit_of  # noqa: E402


def cpu_ticks(pid: int) -> int:
    """The process's user + system CPU time, in clock ticks (/proc/PID/stat)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return int(fields[11]) + int(fields[12])


def wait_idle(pid: int, quiet_s: float = 1.0, timeout_s: float = 120.0) -> float:
    """Wait until ``pid`` has used no CPU for ``quiet_s``: the spare blocked on its input. Returns
    the seconds waited."""
    start = time.monotonic()
    last, since = cpu_ticks(pid), time.monotonic()
    while time.monotonic() - start < timeout_s:
        time.sleep(0.25)
        now = cpu_ticks(pid)
        if now != last:
            last, since = now, time.monotonic()
        elif time.monotonic() - since >= quiet_s:
            return time.monotonic() - start
    raise TimeoutError(f"process {pid} still busy after {timeout_s:g} s")


def memory_kib(pid: int) -> dict[str, int]:
    """Resident (``VmRSS``) and proportional (``Pss``) memory of ``pid``, in KiB."""
    status = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines())
    rollup = dict(
        line.split(":", 1)
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()[1:]
        if ":" in line
    )
    return {"rss_kib": int(status["VmRSS"].split()[0]), "pss_kib": int(rollup["Pss"].split()[0])}


def ask(client: TestClient, body: dict[str, Any], token: str) -> tuple[float, float]:
    """One uncached ``POST /fit``: the client's wall seconds and the answer's ``seconds``."""
    line = getattr(client.app.state, "fit_line", None)  # type: ignore[attr-defined]
    if line is not None:
        line.cache.clear()
    start = time.perf_counter()
    response = client.post("/api/v1/fit", json=body, headers={"Authorization": f"Bearer {token}"})
    wall = time.perf_counter() - start
    response.raise_for_status()
    assert not response.json()["cached"]
    return wall, response.json()["seconds"]


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default="llama-7b")
    parser.add_argument("--methods", nargs="+", default=["lora"])
    parser.add_argument(
        "--per-method",
        action="store_true",
        help="ask each method on its own, one request after another (as the dashboard's page did until "
        "2026-12-07; it now sends one request)",
    )
    parser.add_argument("--micro-batch", type=int, default=1)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--dtype", default="bf16")
    parser.add_argument("--gpu-gib", type=float, help="the card: with it, the largest-micro-batch search")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "benchmarks" / "results" / "fit_spare.json")
    args = parser.parse_args()
    body = {
        "model": args.model,
        "methods": args.methods,
        "micro_batch": args.micro_batch,
        "seq_len": args.seq_len,
        "dtype": args.dtype,
        **({"gpu_gib": args.gpu_gib} if args.gpu_gib is not None else {}),
    }
    bodies = [{**body, "methods": [m]} for m in args.methods] if args.per_method else [body]
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="velora-fit-spare-") as folder:
        settings = Settings(data_dir=Path(folder), reaper_enabled=False, allowed_hosts=["testserver"])
        db = Database(settings.sqlalchemy_url)
        upgrade(db)
        with db.write_session() as session:
            _, token = store.create_token(session, name="bench")
        cold_app = create_app(settings.model_copy(update={"fit_warm_spare": False}))
        warm_app = create_app(settings)
        rounds, memory = [], []
        with TestClient(cold_app) as cold, TestClient(warm_app) as warm:
            first, _ = ask(warm, bodies[0], token)  # starts the first spare (this request is cold)
            print(f"first request to the API with the spare (cold, and starts it): {first:.2f} s")
            for number in range(1, args.rounds + 1):
                waited = wait_idle(warm_app.state.fit_line.spare.pid)
                memory.append(memory_kib(warm_app.state.fit_line.spare.pid))
                cold_s = [ask(cold, b, token)[0] for b in bodies]
                wait_idle(warm_app.state.fit_line.spare.pid)  # idle still: nothing asked it
                warm_s = [
                    ask(warm, b, token)[0] for b in bodies
                ]  # back to back: the next spare may be warming
                rounds.append(
                    {
                        "cold_s": round(sum(cold_s), 2),
                        "warm_s": round(sum(warm_s), 2),
                        "cold_requests_s": [round(t, 2) for t in cold_s],
                        "warm_requests_s": [round(t, 2) for t in warm_s],
                        "spare_idle_after_s": round(waited, 1),
                    }
                )
                print(
                    f"round {number}: cold {sum(cold_s):.2f} s {[round(t, 1) for t in cold_s]}, warm "
                    f"{sum(warm_s):.2f} s {[round(t, 1) for t in warm_s]}; the spare: idle after "
                    f"{waited:.1f} s, {memory[-1]['rss_kib'] / 1024:.0f} MiB resident"
                )
        db.dispose()
    cold_median = statistics.median(r["cold_s"] for r in rounds)
    warm_median = statistics.median(r["warm_s"] for r in rounds)
    rss = statistics.median(m["rss_kib"] for m in memory) / 1024
    pss = statistics.median(m["pss_kib"] for m in memory) / 1024
    print(
        f"median: cold {cold_median:.2f} s, warm {warm_median:.2f} s; "
        f"the idle spare: {rss:.0f} MiB resident ({pss:.0f} MiB PSS)"
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps(
            {
                "requests": bodies,
                "cpus": os.cpu_count(),
                "python": platform.python_version(),
                "commit": commit_of(REPO_ROOT),
                # Other processes on the machine slow both sides: the 1-minute load average around the run.
                "load_average_1m": {"before": round(load_before, 2), "after": round(os.getloadavg()[0], 2)},
                "first_request_s": round(first, 2),
                "rounds": rounds,
                "median_cold_s": cold_median,
                "median_warm_s": warm_median,
                "spare_memory_kib": memory,
                "median_spare_rss_mib": round(rss),
                "median_spare_pss_mib": round(pss),
            },
            indent=2,
        )
        + "\n"
    )
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
