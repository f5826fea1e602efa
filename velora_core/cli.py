"""``velora-bench``: run a spec or a preset comparison and print the table.

    velora-bench run SPEC.yaml [--out DIR]           one RunSpec or a ComparisonSpec (YAML or JSON)
    velora-bench compare --preset NAME [--methods …] [--seeds …] [--set key=value …] [--out DIR]
    velora-bench presets                             list comparison presets, models and datasets

Service commands (``up``, ``token``) are added by the installed backend through the
``velora_bench.commands`` entry-point group, so this engine module imports no web code.
A bad spec or file gives one clear line on stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from velora_core.bench.comparison_presets import COMPARISON_PRESETS, comparison_preset
from velora_core.presets import DATASETS, MODEL_PRESETS
from velora_core.spec import ComparisonSpec, RunSpec

EXIT_BAD_INPUT = 2
DEFAULT_ARTIFACTS = ".velora-bench/artifacts"


class BadInput(Exception):
    """A problem with what the user gave: printed as one line, exit code 2."""


def _validation_message(exc: ValidationError) -> str:
    return "; ".join(f"{'.'.join(str(p) for p in e['loc']) or '(spec)'}: {e['msg']}" for e in exc.errors())


def _yaml_error(path: str, exc: yaml.YAMLError) -> str:
    """``path:line:column: problem`` (1-based, as editors count) from a YAML/JSON parse error."""
    mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
    problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
    where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark is not None else path
    return f"{where}: not valid YAML/JSON: {problem}"


def load_spec_file(path: str) -> RunSpec | ComparisonSpec:
    """A RunSpec or ComparisonSpec from a YAML/JSON file (a ComparisonSpec has ``base`` and ``methods``)."""
    file = Path(path)
    if not file.exists():
        raise BadInput(f"spec file {path!r} not found")
    if file.is_dir():
        raise BadInput(f"{path!r} is a directory; give the path of a YAML or JSON spec file")
    if not file.is_file():
        raise BadInput(f"{path!r} is not a regular file; give the path of a YAML or JSON spec file")
    try:
        data = yaml.safe_load(file.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise BadInput(f"{path}: not a text file (a spec is YAML or JSON in UTF-8)") from None
    except yaml.YAMLError as exc:
        raise BadInput(_yaml_error(path, exc)) from None
    if data is None:
        raise BadInput(f"{path}: the file is empty; a spec is a mapping of fields")
    if not isinstance(data, dict):
        raise BadInput(f"{path}: the spec must be a mapping of fields, got {type(data).__name__}")
    kind = ComparisonSpec if "base" in data or "methods" in data else RunSpec
    try:
        return kind.model_validate(data)
    except ValidationError as exc:
        raise BadInput(f"{path}: invalid {kind.__name__}: {_validation_message(exc)}") from None


def parse_assignments(items: Sequence[str]) -> dict[str, Any]:
    """``["steps=5", "optimizer.lr=1e-3", "pretrain.steps=10"]`` → a nested overrides dict; values
    are parsed as YAML scalars (numbers, booleans, lists)."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise BadInput(f"--set expects key=value, got {item!r}")
        try:
            value = yaml.safe_load(raw)
        except yaml.YAMLError:
            value = raw
        node = out
        parts = key.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise BadInput(f"--set {item!r} conflicts with another --set")
        node[parts[-1]] = value
    return out


def progress_columns() -> tuple:
    """The columns of a run's progress bar (label, bar, step/total, info, elapsed): shared with the
    service's ``submit`` command so both look alike."""
    from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn

    return (
        TextColumn("{task.description:<28}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[info]}"),
        TimeElapsedColumn(),
    )


def run_comparison(runs: list[RunSpec], artifacts: str, title: str) -> list:
    """Execute the runs one after another with progress bars; returns their RunResults."""
    from rich.progress import Progress

    from velora_core.bench import execute

    results = []
    with Progress(*progress_columns(), transient=False) as progress:
        progress.console.print(f"[bold]{title}[/]: {len(runs)} run(s)")
        for spec in runs:
            label = f"{spec.method} (seed {spec.seed})"
            task = progress.add_task(label, total=None, info="starting")

            def on_progress(event, task=task, label=label) -> None:
                if event.phase.endswith("train") and event.total_steps:
                    prefix = "base " if event.phase.startswith("base") else ""
                    progress.update(
                        task,
                        total=event.total_steps,
                        completed=event.step,
                        description=f"{label} {prefix}".strip(),
                        info=f"{prefix}loss {event.loss:.3f}",
                    )
                else:
                    progress.update(task, info=f"{event.phase} {event.message}".strip())

            result = execute(spec, on_progress, artifacts)
            progress.update(task, info=f"{result.status}" + (f": {result.error}" if result.error else ""))
            results.append(result)
    return results


def print_table(results: list) -> None:
    from rich.console import Console
    from rich.table import Table

    from velora_core.bench.report import summary_rows

    def fmt(value: Any, pattern: str = "{:.1f}") -> str:
        return "–" if value is None else pattern.format(value)

    table = Table(
        title="VeLoRA Bench comparison (memory in MiB; total = weights+trainable+grads+optimizer+activations)"
    )
    for column in (
        "method",
        "status",
        "peak",
        "weights",
        "activations",
        "total",
        "metric",
        "value",
        "chance",
        "Δ vs full",
        "mem vs full",
        "tok/s",
    ):
        table.add_column(column, justify="left" if column in ("method", "status", "metric") else "right")
    for row in summary_rows(results):
        percent = row["metric"] == "mc_accuracy"
        value_fmt = "{:.1%}" if percent else "{:.2f}"
        delta_fmt = "{:+.1%}" if percent else "{:+.2f}"
        table.add_row(
            row["method"] + (f" s{row['seed']}" if row["seed"] else ""),
            row["status"],
            fmt(row["peak_mb"]),
            fmt(row["weight_mb"], "{:.2f}"),
            fmt(row["activation_mb"], "{:.2f}"),
            fmt(row["total_mb"], "{:.2f}"),
            row["metric"],
            fmt(row["value"], value_fmt),
            fmt(row["chance"], "{:.0%}"),
            fmt(row["delta_vs_full"], delta_fmt),
            fmt(row["memory_vs_full"], "{:.2f}x"),
            fmt(row["tokens_per_s"], "{:.0f}"),
        )
    console = Console()
    if not console.is_terminal:
        console = Console(width=170)  # logs and pipes: the whole table, not an 80-column squeeze
    console.print(table)
    for row in summary_rows(results):
        if row["error"]:
            print(f"{row['method']}: {row['error']}", file=sys.stderr)


def _finish(results: list, out: str | None) -> int:
    from velora_core.bench.report import write_outputs

    print_table(results)
    if out:
        json_path, csv_path = write_outputs(results, out)
        print(f"wrote {json_path} and {csv_path}")
    return 0 if all(r.status in ("completed", "out_of_memory") for r in results) else 1


def cmd_run(args: argparse.Namespace) -> int:
    spec = load_spec_file(args.spec)
    if isinstance(spec, ComparisonSpec):
        runs, title = spec.runs(), spec.name
    else:
        runs, title = [spec], f"run {spec.spec_hash()}"
    return _finish(run_comparison(runs, args.artifacts, title), args.out)


def cmd_compare(args: argparse.Namespace) -> int:
    overrides = parse_assignments(args.set or [])
    if args.methods:
        overrides["methods"] = args.methods
    if args.seeds:
        overrides["seeds"] = args.seeds
    try:
        spec = comparison_preset(args.preset, overrides)
    except KeyError as exc:
        raise BadInput(exc.args[0]) from None
    except ValueError as exc:
        raise BadInput(str(exc)) from None
    out = args.out if args.out is not None else f"out/{args.preset}"
    return _finish(run_comparison(spec.runs(), args.artifacts, spec.name), out)


def cmd_presets(args: argparse.Namespace) -> int:
    if args.json:
        print(
            json.dumps(
                {
                    "comparisons": COMPARISON_PRESETS,
                    "models": {k: v.description for k, v in MODEL_PRESETS.items()},
                    "datasets": {k: v[1] for k, v in DATASETS.items()},
                },
                indent=2,
            )
        )
        return 0
    print("Comparison presets (velora-bench compare --preset NAME):")
    for name, description in COMPARISON_PRESETS.items():
        print(f"  {name:<12} {description}")
    print("Model presets:")
    for name, preset in MODEL_PRESETS.items():
        print(f"  {name:<12} {preset.description}")
    print("Built-in datasets:")
    for name, (_, description) in DATASETS.items():
        print(f"  {name:<14} {description}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="velora-bench", description="Compare VeLoRA, QLoRA, LoRA and full fine-tuning."
    )
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run a RunSpec or ComparisonSpec file")
    run.add_argument("spec", help="YAML or JSON file")
    run.add_argument("--out", help="folder for comparison.json and comparison.csv")
    run.add_argument(
        "--artifacts", default=DEFAULT_ARTIFACTS, help="folder for saved models (default %(default)s)"
    )
    run.set_defaults(func=cmd_run)

    compare = sub.add_parser("compare", help="run a preset comparison")
    compare.add_argument("--preset", required=True, help=f"one of: {', '.join(COMPARISON_PRESETS)}")
    compare.add_argument("--methods", nargs="+", help="subset of methods")
    compare.add_argument("--seeds", nargs="+", type=int, help="seeds (default 0)")
    compare.add_argument(
        "--set",
        action="append",
        metavar="KEY=VALUE",
        help="override a field, e.g. steps=50 or pretrain.steps=100",
    )
    compare.add_argument("--out", help="folder for comparison.json and comparison.csv (default out/PRESET)")
    compare.add_argument(
        "--artifacts", default=DEFAULT_ARTIFACTS, help="folder for saved models (default %(default)s)"
    )
    compare.set_defaults(func=cmd_compare)

    presets = sub.add_parser("presets", help="list presets, models and datasets")
    presets.add_argument("--json", action="store_true")
    presets.set_defaults(func=cmd_presets)

    for entry in entry_points(group="velora_bench.commands"):
        try:
            register = entry.load()
        except ImportError as exc:  # a broken optional plugin must not take the engine commands down
            print(f"velora-bench: warning: commands from {entry.value} unavailable: {exc}", file=sys.stderr)
            continue
        register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except BadInput as exc:
        print(f"velora-bench: error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print("velora-bench: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
