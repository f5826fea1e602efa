"""The velora-bench CLI as a user runs it: a real subprocess, exit codes, files written."""

from __future__ import annotations

import csv
import json
import subprocess
import sys

import pytest
import yaml


def cli(*args: str, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "velora_core.cli.main", *args],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=cwd,
    )


def test_presets_lists_comparisons_models_and_datasets():
    out = cli("presets")
    assert out.returncode == 0, out.stderr
    for name in ("cpu-smoke", "demo", "c4-60m", "alpaca-7b", "memory-7b", "llama-7b", "stdlib-mc"):
        assert name in out.stdout
    for part in ("galore", "lora-fa", "velora", "gc", "8bit", "offload"):
        assert f"\n  {part} " in out.stdout


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "not found"),
        ("workload: [unclosed", "spec.yaml:1:20: not valid YAML/JSON"),
        (
            "workload: pretrain\nmodel: {source: preset\n  name: [x\n",
            "spec.yaml:3:7: not valid YAML/JSON: expected ','",
        ),
        ("", "the file is empty"),
        (
            "workload: pretrain\nmodel: {name: tiny}\ndataset: {name: stdlib-corpus}\noptimizer: {lr: .nan}\n",
            "optimizer.lr: Input should be a finite number",
        ),
        ("- a list", "must be a mapping"),
        (
            "workload: pretrain\nmodel: {source: preset, name: tiny}\ndataset: {name: stdlib-corpus}\nmethod: dora\n",
            "unknown method 'dora'",
        ),
        (
            "workload: pretrain\nmodel: {source: preset, name: tiny}\ndataset: {name: stdlib-corpus}\nseq_len: 4096\n",
            "beyond the model's limit of 512",
        ),
        (
            "workload: pretrain\nmodel: {source: preset, name: huge}\ndataset: {name: stdlib-corpus}\n",
            "unknown model preset 'huge'",
        ),
        (
            "base: {workload: pretrain, model: {name: tiny}, dataset: {name: stdlib-corpus}}\nmethods: [full, full]\n",
            "must not repeat",
        ),
    ],
)
def test_bad_spec_files_give_one_line_and_exit_2(tmp_path, content, message):
    path = tmp_path / "spec.yaml"
    if content is not None:
        path.write_text(content)
    out = cli("run", str(path))
    assert out.returncode == 2
    assert message in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1 and "Traceback" not in out.stderr


@pytest.mark.parametrize(
    ("path", "message"),
    [("/dev/null", "'/dev/null' is not a regular file"), (".", "'.' is a directory")],
)
def test_spec_paths_that_are_not_files_say_what_they_are(path, message):
    out = cli("run", path)
    assert out.returncode == 2 and message in out.stderr and "not found" not in out.stderr, out.stderr
    assert len(out.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--preset", "cpu-smoke", "--set", "base=x"], "overrides.base must be an object"),
        (["--preset", "cpu-smoke", "--set", "methods=5"], "overrides.methods: Input should be a valid list"),
        (["--preset", "cpu-smoke", "--set", "pretrain=[1]"], "overrides.pretrain must be an object"),
        (["--preset", "nope"], "unknown preset 'nope'"),
        (["--preset", "cpu-smoke", "--methods", "full", "magic"], "unknown method(s) ['magic']"),
        (["--preset", "cpu-smoke", "--set", "steps"], "--set expects key=value"),
        (["--preset", "cpu-smoke", "--set", "micro_batch=0"], "micro_batch"),
    ],
)
def test_bad_compare_arguments_exit_2(args, message):
    out = cli("compare", *args)
    assert out.returncode == 2 and message in out.stderr, out.stderr
    assert len(out.stderr.strip().splitlines()) == 1 and "Traceback" not in out.stderr


def test_run_reads_any_local_path_its_user_gives(tmp_path):
    """The in-process CLI is not confined to VELORA_LOCAL_ROOTS; a file that is not a dataset fails
    the run with a message that says so (not a bare JSONDecodeError)."""
    corpus = tmp_path / "anywhere" / "notes.txt"
    corpus.parent.mkdir()
    corpus.write_text("\n\n".join(f"paragraph {i} " * 20 for i in range(40)))
    base = {
        "workload": "pretrain",
        "model": {"source": "preset", "name": "tiny"},
        "seq_len": 32,
        "micro_batch": 2,
        "steps": 2,
        "eval": {"metric": "none"},
        "save_artifact": False,
    }
    (tmp_path / "ok.yaml").write_text(
        yaml.safe_dump({**base, "dataset": {"source": "local", "name": str(corpus)}})
    )
    out = cli("run", "ok.yaml", "--out", "out", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert json.loads((tmp_path / "out" / "comparison.json").read_text())[0]["status"] == "completed"

    (tmp_path / "bad.yaml").write_text(
        yaml.safe_dump({**base, "dataset": {"source": "local", "name": "/etc/passwd"}})
    )
    out = cli("run", "bad.yaml", cwd=tmp_path)
    assert out.returncode == 1
    assert "/etc/passwd: line 1 is not JSON" in out.stderr and "JSONDecodeError" not in out.stderr


def test_run_writes_comparison_json_and_csv(tmp_path):
    spec = {
        "workload": "pretrain",
        "model": {"source": "preset", "name": "tiny"},
        "dataset": {"source": "builtin", "name": "stdlib-corpus", "max_examples": 64},
        "method": "velora+full",
        "method_config": {"velora": {"num_groups": 8}},
        "seq_len": 64,
        "micro_batch": 4,
        "steps": 4,
        "eval": {"metric": "perplexity", "max_examples": 4},
    }
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump(spec))
    out = cli("run", "spec.yaml", "--out", "out", "--artifacts", "artifacts", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert "velora+full" in out.stdout and "perplexity" in out.stdout
    results = json.loads((tmp_path / "out" / "comparison.json").read_text())
    assert len(results) == 1
    result = results[0]
    assert {"method", "status", "memory", "eval", "throughput", "loss_curve", "environment"} <= set(result)
    assert result["status"] == "completed" and result["eval"]["metric"] == "perplexity"
    assert result["memory"]["predicted_activation_bytes"] > 0
    rows = list(csv.DictReader((tmp_path / "out" / "comparison.csv").open()))
    assert rows[0]["method"] == "velora+full" and float(rows[0]["value"]) == pytest.approx(
        result["eval"]["value"]
    )


def test_compare_preset_with_overrides(tmp_path):
    out = cli(
        "compare",
        "--preset",
        "cpu-smoke",
        "--methods",
        "full",
        "velora+qlora",
        "--set",
        "steps=2",
        "--set",
        "pretrain.steps=3",
        "--set",
        "eval.max_examples=4",
        "--out",
        "out",
        "--artifacts",
        "artifacts",
        cwd=tmp_path,
    )
    assert out.returncode == 0, out.stderr
    results = json.loads((tmp_path / "out" / "comparison.json").read_text())
    assert [r["method"] for r in results] == ["full", "velora+qlora"]
    assert all(r["status"] == "completed" and r["steps_done"] == 2 for r in results)
    assert all(r["eval"]["chance"] == pytest.approx(0.25) for r in results)
    assert "Δ vs full" in out.stdout
