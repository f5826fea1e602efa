"""``velora-bench``: run a spec or a preset comparison and print the table.

    velora-bench run SPEC.yaml [--out DIR]           one RunSpec or a ComparisonSpec (YAML or JSON)
    velora-bench compare --preset NAME [--methods …] [--seeds …] [--set key=value …] [--out DIR]
    velora-bench presets                             list comparison presets, models, datasets, method parts
    velora-bench fit --model M --methods A B … [--micro-batch N --seq-len L --dtype D --gpu-gib G --json]
                                                     predicted memory per method (velora_core.bench.fit_estimate)

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

from rich.progress import Progress

from velora_core.cli.fit_command import add_fit_arguments
from velora_core.cli.spec_input import BadInput, load_spec_file, parse_assignments
from velora_core.cli.table_output import base_run_line, print_table, progress_columns
from velora_core.contract.exit_codes import EXIT_BAD_INPUT, EXIT_FAILED, EXIT_INTERRUPTED, EXIT_OK
from velora_core.contract.method_parts import BASES, TECHNIQUES
from velora_core.contract.plan import ROLE_BASE, dependency_outcome, plan_runs
from velora_core.contract.presets.comparisons import COMPARISON_PRESETS, comparison_preset
from velora_core.contract.presets.model_shapes import DATASETS, MODEL_PRESETS
from velora_core.contract.result import ANSWERED_RUN_STATUSES, RunResult, RunStatus
from velora_core.contract.spec import ComparisonSpec, RunSpec
from velora_core.contract.table import write_outputs

DEFAULT_ARTIFACTS = ".velora-bench/artifacts"


def run_comparison(runs: list[RunSpec], artifacts: str, title: str) -> tuple[list, list]:
    """Execute ``runs`` one after another with progress bars, each base run (the pre-training of a
    fine-tune's base model, ``contract/plan.py``) before the runs that need it.

    Returns:
        The runs' RunResults, in order, and the base runs' results.
    """
    from velora_core.bench.engine import execute, execute_base  # torch: imported when a run starts

    plan = plan_runs(runs)
    results: list = []
    with Progress(*progress_columns(), transient=False) as progress:
        progress.console.print(f"[bold]{title}[/]: {len(runs)} run(s)")
        for planned in plan:
            spec = planned.spec
            base = planned.role == ROLE_BASE
            label = f"base: pre-train {spec.method}" if base else f"{spec.method} (seed {spec.seed})"
            task = progress.add_task(label, total=None, info="starting")

            def on_progress(event, task=task) -> None:
                if event.phase == "train" and event.total_steps:
                    progress.update(
                        task, total=event.total_steps, completed=event.step, info=f"loss {event.loss:.3f}"
                    )
                else:
                    progress.update(task, info=f"{event.phase} {event.message}".strip())

            needs = [results[i] for i in planned.depends_on]
            blocked = next(
                (
                    outcome
                    for i, need in zip(planned.depends_on, needs, strict=True)
                    if (outcome := dependency_outcome(f"base run {i + 1}", need.status, need.error))
                ),
                None,
            )
            if blocked is not None:
                result = RunResult(
                    method=spec.method,
                    status=RunStatus(blocked[0]),
                    error=blocked[1],
                    spec_hash=spec.spec_hash(),
                    spec=spec.model_dump(mode="json"),
                )
            elif base:
                result = execute_base(spec, on_progress, artifacts)
            else:
                base_model = needs[0].artifact_path if needs else None
                result = execute(spec, on_progress, artifacts, base_model=base_model)
            progress.update(task, info=f"{result.status}" + (f": {result.error}" if result.error else ""))
            results.append(result)
    bases = [r for p, r in zip(plan, results, strict=True) if p.role == ROLE_BASE]
    return [r for p, r in zip(plan, results, strict=True) if p.role != ROLE_BASE], bases


def _finish(outcome: tuple[list, list], out: str | None) -> int:
    results, bases = outcome
    for base in bases:
        print(base_run_line(base))
    print_table(results)
    if out:
        json_path, csv_path = write_outputs(results, out)
        print(f"wrote {json_path} and {csv_path}")
    return EXIT_OK if all(r.status in ANSWERED_RUN_STATUSES for r in results) else EXIT_FAILED


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
        return EXIT_OK
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
    return EXIT_OK


def cmd_fit(args: argparse.Namespace) -> int:
    from velora_core.bench.fit_estimate import run  # torch: imported when the command runs

    return run(args)


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

    fit = sub.add_parser(
        "fit", help="predict each method's peak memory for a model and shape, without a GPU or weights"
    )
    add_fit_arguments(fit)
    fit.set_defaults(func=cmd_fit)

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
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
