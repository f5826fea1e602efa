"""``velora-bench submit`` and ``velora-bench up --submit`` (real processes: API, worker, CLI)."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import httpx

from tests.backend.harness import free_port, new_api_token, service_env, start_api
from tests.backend.test_cli import run_cli


def test_up_submit_runs_a_preset_prints_the_table_and_exits(tmp_path: Path) -> None:
    port = free_port()
    done = run_cli(
        "up",
        "--submit",
        "cpu-smoke",
        "--set",
        "steps=2",
        "--set",
        "pretrain.steps=3",
        "--set",
        "eval.max_examples=4",
        "--methods",
        "full",
        "velora+lora",
        "--no-dashboard",
        "--exit-when-done",
        "--data-dir",
        str(tmp_path / "data"),
        "--api-port",
        str(port),
        "--out",
        str(tmp_path / "out"),
        timeout=600,
    )
    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    assert "Comparison 1 (cpu-smoke) queued: 2 run(s), after 1 base run(s)" in done.stdout
    assert f"http://127.0.0.1:{port}/api/v1/comparisons/1" in done.stdout
    # The base model's pre-training ran as a run of its own, first, and is reported on its own line.
    assert "base model: pre-training full on tiny, 3 steps: completed; perplexity " in done.stdout
    table = done.stdout[done.stdout.index("VeLoRA Bench comparison") :]
    assert "│ full " in table and "│ velora+lora " in table
    assert table.count("completed") == 2
    assert "Stopped." in done.stderr
    results = json.loads((tmp_path / "out" / "comparison.json").read_text())
    assert [r["method"] for r in results] == ["full", "velora+lora"]
    assert all(r["status"] == "completed" and r["steps_done"] == 2 for r in results)
    with (tmp_path / "out" / "comparison.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert [r["method"] for r in rows] == ["full", "velora+lora"]
    assert rows[0]["delta_vs_full_pts"] == "0.0"
    assert rows[1]["measured_peak_bytes"].isdigit()  # integer byte counts
    # Everything was stopped: the API no longer answers.
    try:
        httpx.get(f"http://127.0.0.1:{port}/api/v1/health", timeout=2)
    except httpx.ConnectError:
        pass
    else:
        raise AssertionError("the API still answers after --exit-when-done")


def test_submit_queues_and_rejects_bad_input(tmp_path: Path) -> None:
    port, token = free_port(), new_api_token()
    api = start_api(
        service_env(VELORA_DATA_DIR=str(tmp_path / "data"), VELORA_API_TOKEN=token), port, tmp_path
    )
    url = f"http://127.0.0.1:{port}"
    try:
        # The API is on loopback, and still wants the token.
        anonymous = run_cli(
            "submit", "--preset", "cpu-smoke", "--api", url, "--data-dir", str(tmp_path / "none")
        )
        assert anonymous.returncode == 2
        assert anonymous.stderr.startswith("velora-bench: error: API 401: Missing bearer token")

        bad = run_cli("submit", "--preset", "no-such-preset", "--api", url, "--token", token)
        assert bad.returncode == 2
        message = bad.stderr.strip()
        assert "\n" not in message
        assert message.startswith("velora-bench: error: API 422: preset: unknown preset 'no-such-preset'")

        too_big = run_cli(
            "submit", "--preset", "cpu-smoke", "--set", "steps=-1", "--api", url, "--token", token
        )
        assert too_big.returncode == 2 and "steps" in too_big.stderr and "\n" not in too_big.stderr.strip()

        # The token from the environment (as compose and scripts give it).
        ok = run_cli(
            "submit", "--preset", "cpu-smoke", "--methods", "full", "--api", url, VELORA_API_TOKEN=token
        )
        assert ok.returncode == 0, ok.stderr
        assert "Comparison 1 (cpu-smoke) queued: 1 run(s), after 1 base run(s)" in ok.stdout
        assert "/compare?comparison=1" in ok.stdout
        body = httpx.get(
            f"{url}/api/v1/comparisons/1", headers={"Authorization": f"Bearer {token}"}, timeout=5
        ).json()
        assert [(r["role"], r["method"]) for r in body["runs"]] == [("base", "full"), ("method", "full")]
        assert body["status"] == "queued"
        # --token comes first: a wrong one is refused even with a good one in the environment.
        wrong = run_cli(
            "submit", "--preset", "cpu-smoke", "--api", url, "--token", "vb_wrong", VELORA_API_TOKEN=token
        )
        assert wrong.returncode == 2 and "API 401: Invalid or revoked API token" in wrong.stderr
    finally:
        api.stop()

    spec = tmp_path / "bad.yaml"
    spec.write_text("base: {steps: 0}\nmethods: [full]\n")
    no_api = run_cli("submit", "--spec", str(spec), "--api", "http://127.0.0.1:1")
    assert no_api.returncode == 2 and "invalid ComparisonSpec" in no_api.stderr
    malformed = run_cli("submit", "--preset", "cpu-smoke", "--set", "steps", "--api", "http://127.0.0.1:1")
    assert malformed.returncode == 2 and "--set expects key=value" in malformed.stderr


def test_submit_reads_specs_and_prints_tables_without_torch(tmp_path: Path) -> None:
    """``submit`` shares the engine CLI's spec reading and table (velora_core.cli.spec_input, cli_output)
    and still never imports torch: the service's machines need not have it."""
    spec = tmp_path / "spec.yaml"
    spec.write_text(
        "name: t\nmethods: [full, lora]\nbase:\n  workload: pretrain\n  steps: 3\n"
        "  model: {source: preset, name: tiny}\n  dataset: {source: builtin, name: stdlib-corpus}\n"
    )
    code = f"""
import argparse, sys
from backend.submit import request_body
from velora_core.cli.table_output import print_table, progress_columns
from velora_core.contract.result import RunResult
args = argparse.Namespace(spec={str(spec)!r}, set=[], methods=None, seeds=None, preset=None)
body = request_body(args)
assert body["methods"] == ["full", "lora"] and body["base"]["steps"] == 3, body
assert len(progress_columns()) == 5
from velora_core.contract.table import comparison_table
print_table(comparison_table([RunResult(method="full", status="completed")]))
assert "torch" not in sys.modules, "torch was imported"
"""
    done = subprocess.run(
        [sys.executable, "-c", code], env=service_env(), capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "VeLoRA Bench comparison" in done.stdout and "full" in done.stdout
