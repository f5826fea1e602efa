"""Load check of the REST API (a benchmark, not a test): concurrent clients polling on loopback.

Starts the API under uvicorn on the embedded default (SQLite in a temporary directory), seeds it
with runs and per-step metrics, then lets ``--clients`` clients poll ``GET /runs`` and
``GET /runs/{id}/metrics?after_step=…`` for ``--duration`` seconds, as dashboards do. Prints
requests/s and latency percentiles per endpoint and writes them as JSON.

    python benchmarks/api_load.py                       # 50 clients, 30 s, one poll pair each per 0.5 s
    python benchmarks/api_load.py --interval 0          # closed loop: every client as fast as it can
    python benchmarks/api_load.py --url http://127.0.0.1:8000 --token vb_…   # a running server
    git worktree add /tmp/base HEAD~3 && python benchmarks/api_load.py --baseline /tmp/base
        # alternates rounds of that checkout's API and this one's, and prints the ratios

Only loopback addresses are accepted: this is not a tool for loading other people's servers.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import platform
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import urlparse

import httpx

from velora_core.contract.http_api import API_PREFIX

REPO_ROOT = Path(__file__).resolve().parents[1]
LOOPBACK = {"127.0.0.1", "localhost", "::1", "[::1]"}


def seed(data_dir: Path, runs: int, steps: int) -> str:
    """Create ``runs`` runs with ``steps`` metrics each; returns a bearer token."""
    sys.path.insert(0, str(REPO_ROOT))
    from backend import store
    from backend.db import Database
    from backend.migrate import upgrade
    from backend.settings import Settings
    from velora_core.contract.result import ProgressEvent
    from velora_core.contract.spec import ComparisonSpec

    db = Database(Settings(data_dir=data_dir).sqlalchemy_url)
    upgrade(db)
    base = {
        "workload": "pretrain",
        "model": {"source": "preset", "name": "tiny"},
        "dataset": {"source": "builtin", "name": "stdlib-corpus"},
        "steps": steps,
        "device": "cpu",
    }
    methods = ["full", "lora", "qlora", "velora+full", "velora+lora", "velora+qlora"]
    with db.write_session() as session:
        _, token = store.create_token(session, name="api_load")
        made = 0
        while made < runs:
            spec = ComparisonSpec(name=f"load-{made}", base=base, methods=methods[: min(6, runs - made)])
            comparison = store.create_comparison(session, spec=spec, queue="cpu")
            for run in comparison.runs:
                claim = store.claim_run(session, run_id=run.id, worker_host="load@bench", worker_device="cpu")
                points = [
                    ProgressEvent(
                        phase="train",
                        step=s,
                        total_steps=steps,
                        loss=5.0 / s,
                        lr=1e-3,
                        tokens_per_s=1e4,
                        step_time_s=0.1,
                    )
                    for s in range(1, steps + 1)
                ]
                store.record_progress(session, run_id=run.id, claim_id=claim, state=points[-1], points=points)
            made += len(comparison.runs)
    db.dispose()
    return token


def start_server(data_dir: Path, port: int, workers: int, source: Path = REPO_ROOT) -> subprocess.Popen:
    """The API of the checkout at ``source`` (this one, or a ``--baseline``) on ``port``."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("VELORA_") and k not in ("DATABASE_URL", "REDIS_URL")
    }
    env.update(VELORA_DATA_DIR=str(data_dir), VELORA_REAPER_ENABLED="false", PYTHONPATH=str(source))
    from backend.launcher import api_command  # importable: seed() put this checkout on the path

    server = subprocess.Popen(
        api_command(host="127.0.0.1", port=port, access_log=False, workers=workers),
        cwd=source,
        env=env,
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}{API_PREFIX}/health", timeout=2).status_code in (200, 503):
                return server
        except httpx.HTTPError:
            time.sleep(0.2)
    server.terminate()
    raise SystemExit("the API did not start")


async def client_loop(
    base: str,
    headers: dict,
    run_ids: list[int],
    stop_at: float,
    interval: float,
    samples: dict[str, list[float]],
    errors: dict[str, int],
) -> None:
    rng = random.Random()
    async with httpx.AsyncClient(base_url=base, headers=headers, timeout=30) as client:
        after = {run_id: -1 for run_id in run_ids}
        await asyncio.sleep(rng.uniform(0, interval or 0.05))  # spread the clients out
        while time.monotonic() < stop_at:
            started = time.monotonic()
            run_id = rng.choice(run_ids)
            # A dashboard's poll: the run list, then the new points of one run (from a random
            # place, so the answers are not all empty).
            after[run_id] = rng.randrange(-1, 150)
            for name, path, params in (
                ("GET /runs", f"{API_PREFIX}/runs", {"limit": 50}),
                (
                    "GET /runs/{id}/metrics",
                    f"{API_PREFIX}/runs/{run_id}/metrics",
                    {"after_step": after[run_id]},
                ),
            ):
                t0 = time.perf_counter()
                try:
                    response = await client.get(path, params=params)
                    ok = response.status_code == 200
                except httpx.HTTPError:
                    ok = False
                if time.monotonic() >= stop_at:
                    break
                samples[name].append(time.perf_counter() - t0)
                if not ok:
                    errors[name] += 1
            if interval:
                await asyncio.sleep(max(0.0, interval - (time.monotonic() - started)) * rng.uniform(0.8, 1.2))


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


async def run_load(base: str, token: str | None, clients: int, duration: float, interval: float) -> dict:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with httpx.AsyncClient(base_url=base, headers=headers, timeout=30) as probe:
        listing = (await probe.get(f"{API_PREFIX}/runs", params={"limit": 500})).json()
    run_ids = [run["id"] for run in listing["data"]] or [1]
    samples: dict[str, list[float]] = {"GET /runs": [], "GET /runs/{id}/metrics": []}
    errors = dict.fromkeys(samples, 0)
    started = time.monotonic()
    stop_at = started + duration
    await asyncio.gather(
        *(client_loop(base, headers, run_ids, stop_at, interval, samples, errors) for _ in range(clients))
    )
    elapsed = time.monotonic() - started
    every = [s for values in samples.values() for s in values]
    report = {"overall": summarize(every, sum(errors.values()), elapsed)}
    for name, values in samples.items():
        report[name] = summarize(values, errors[name], elapsed)
    return report


def summarize(values: list[float], errors: int, elapsed: float) -> dict:
    count = len(values)
    if not values:
        values = [float("nan")]
    return {
        "requests": count,
        "errors": errors,
        "requests_per_s": round(count / elapsed, 1),
        "p50_ms": round(percentile(values, 50) * 1000, 2),
        "p90_ms": round(percentile(values, 90) * 1000, 2),
        "p99_ms": round(percentile(values, 99) * 1000, 2),
        "max_ms": round(max(values) * 1000, 2),
        "mean_ms": round(statistics.fmean(values) * 1000, 2),
    }


def commit_of(path: Path) -> str | None:
    """The checkout's commit (with ``+dirty`` for uncommitted changes), for the JSON."""
    try:
        head = subprocess.run(
            ["git", "-C", str(path), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(path), "status", "--porcelain"], capture_output=True, text=True
        )
        return head + ("+dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.CalledProcessError):
        return None


def measure(args: argparse.Namespace, source: Path | None) -> dict:
    """One round of load: against ``args.url``, or a fresh seeded API of the checkout at ``source``."""
    server = None
    workdir = None
    if args.url:
        base, token = args.url.rstrip("/"), args.token
    else:
        workdir = tempfile.TemporaryDirectory(prefix="velora-load-")
        data_dir = Path(workdir.name)
        token = seed(data_dir, args.runs, args.steps)
        import socket

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        server = start_server(data_dir, port, args.api_workers, source or REPO_ROOT)
        base = f"http://127.0.0.1:{port}"
    # Seeding imported the whole backend into this process: keep its objects out of the collector,
    # so that the clients' own garbage collections do not show up as server latency.
    gc.collect()
    gc.freeze()
    try:
        return asyncio.run(run_load(base, token, args.clients, args.duration, args.interval))
    finally:
        if server is not None:
            server.terminate()
            server.wait(30)
        if workdir is not None:
            workdir.cleanup()


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--duration", type=float, default=30.0, help="seconds (default %(default)s)")
    parser.add_argument(
        "--interval",
        type=float,
        default=0.5,
        help="seconds between a client's polls; 0 = closed loop (default %(default)s)",
    )
    parser.add_argument("--runs", type=int, default=60, help="runs to seed (default %(default)s)")
    parser.add_argument("--steps", type=int, default=200, help="metrics per seeded run (default %(default)s)")
    parser.add_argument(
        "--api-workers", type=int, default=1, help="uvicorn worker processes (default %(default)s)"
    )
    parser.add_argument("--url", help="an already running API on loopback (default: start one)")
    parser.add_argument("--token", help="bearer token for --url")
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "benchmarks" / "results" / "api_load.json")
    parser.add_argument("--target-p99-ms", type=float, default=100.0)
    parser.add_argument(
        "--baseline",
        type=Path,
        help="a checkout of another commit (git worktree add): alternate rounds against it, print ratios",
    )
    parser.add_argument("--rounds", type=int, default=2, help="rounds of each with --baseline (default 2)")
    args = parser.parse_args()

    if args.url:
        if urlparse(args.url).hostname not in LOOPBACK:
            parser.error("--url must be a loopback address (127.0.0.1, localhost or ::1)")
        if args.baseline:
            parser.error("--baseline starts its own servers; it does not go with --url")
    if args.baseline and not (args.baseline / "backend" / "api" / "main.py").is_file():
        parser.error(f"--baseline {args.baseline} is not a checkout of this project")
    load_before = os.getloadavg()[0]
    if args.baseline:
        # Alternate baseline and current rounds in one run, so both see the same machine.
        rounds: dict[str, list[dict]] = {"baseline": [], "current": []}
        for _ in range(args.rounds):
            for label, source in (("baseline", args.baseline.resolve()), ("current", REPO_ROOT)):
                report = measure(args, source)
                rounds[label].append(report)
                print(
                    f"{label:<9} overall p50 {report['overall']['p50_ms']:>8} ms  p99 {report['overall']['p99_ms']:>8} ms"
                )
        report = rounds["current"][-1]
        comparison = {
            stat: round(
                statistics.median(r["overall"][stat] for r in rounds["current"])
                / statistics.median(r["overall"][stat] for r in rounds["baseline"]),
                3,
            )
            for stat in ("p50_ms", "p99_ms", "mean_ms")
        }
        print(
            "current / baseline (medians over rounds): "
            + ", ".join(f"{k.removesuffix('_ms')} {v:g}x" for k, v in comparison.items())
        )
    else:
        report = measure(args, None)
        rounds, comparison = None, None

    print(
        f"{args.clients} clients, {args.duration:g} s, poll interval {args.interval:g} s "
        f"({'closed loop' if not args.interval else 'polling'}), SQLite, {os.cpu_count()} CPUs, "
        f"load average {load_before:.2f} before the run"
    )
    print(
        f"{'endpoint':<26}{'requests':>10}{'errors':>8}{'req/s':>9}{'p50 ms':>9}{'p90 ms':>9}{'p99 ms':>9}"
        f"{'max ms':>9}"
    )
    for name, row in report.items():
        print(
            f"{name:<26}{row['requests']:>10}{row['errors']:>8}{row['requests_per_s']:>9}{row['p50_ms']:>9}"
            f"{row['p90_ms']:>9}{row['p99_ms']:>9}{row['max_ms']:>9}"
        )
    p99 = report["overall"]["p99_ms"]
    verdict = "meets" if p99 < args.target_p99_ms else "misses"
    print(f"p99 {p99} ms {verdict} the target of {args.target_p99_ms:g} ms")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps(
            {
                "clients": args.clients,
                "duration_s": args.duration,
                "interval_s": args.interval,
                "database": "sqlite" if not args.url else "as configured",
                "cpus": os.cpu_count(),
                "python": platform.python_version(),
                "commit": commit_of(REPO_ROOT),
                "target_p99_ms": args.target_p99_ms,
                # Other processes on the machine inflate the tail: the 1-minute load average around the run.
                "load_average_1m": {"before": round(load_before, 2), "after": round(os.getloadavg()[0], 2)},
                "results": report,
                "baseline": None
                if rounds is None
                else {
                    "path": str(args.baseline),
                    "commit": commit_of(args.baseline),
                    "rounds": rounds,
                    "current_over_baseline": comparison,
                },
            },
            indent=2,
        )
        + "\n"
    )
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
