"""``velora-bench``: run a spec or a preset comparison and print the table.

    velora-bench run SPEC.yaml [--out DIR]           one RunSpec or a ComparisonSpec (YAML or JSON)
    velora-bench compare --preset NAME [--methods …] [--seeds …] [--set key=value …] [--out DIR]
    velora-bench presets                             list comparison presets, models, datasets, method parts

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

from velora_core.cli_input import BadInput, load_spec_file, parse_assignments
from velora_core.cli_output import print_table, progress_columns
from velora_core.contract.comparison_presets import COMPARISON_PRESETS, comparison_preset
from velora_core.contract.method_parts import BASES, TECHNIQUES
from velora_core.contract.presets import DATASETS, MODEL_PRESETS
from velora_core.contract.spec import ComparisonSpec, RunSpec

EXIT_BAD_INPUT = 2
DEFAULT_ARTIFACTS = ".velora-bench/artifacts"


def run_comparison(runs: list[RunSpec], artifacts: str, title: str) -> list:
    """Execute the runs one after another with progress bars; returns their RunResults."""
    from rich.progress import Progress

    from velora_core.bench.engine import execute

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


def _finish(results: list, out: str | None) -> int:
    from velora_core.contract.table import write_outputs

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
                    "method_parts": {
                        "bases": {k: p.description for k, p in BASES.items()},
                        "techniques": {k: p.description for k, p in TECHNIQUES.items()},
                    },
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
    print("Methods: a base and techniques joined by '+' (e.g. velora+lora+gc):")
    for kind, parts in (("base", BASES), ("technique", TECHNIQUES)):
        for name, part in parts.items():
            print(f"  {name:<8} {kind:<9} {part.description}")
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
