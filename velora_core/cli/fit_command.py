"""The flags of ``velora-bench fit`` (and ``python -m velora_core.bench.fit_estimate``) and the request they make.

Either a model and methods with the step's shape, or ``--spec FILE`` (a RunSpec or ComparisonSpec,
read as ``velora-bench run`` reads it) with ``--set key=value`` overrides (on a ComparisonSpec, a key
that is not one of its fields applies to ``base``). Torch-free, so the CLI's parser loads fast; the
prediction itself is ``velora_core.bench.fit_estimate``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, get_args

from pydantic import ValidationError

from velora_core.cli.spec_input import BadInput, load_spec_file, parse_assignments
from velora_core.contract.cards import CARD_FAMILIES, DEFAULT_CARD_FAMILY, CardFamilyName
from velora_core.contract.errors import validation_message
from velora_core.contract.fit_request import FitRequest
from velora_core.contract.presets.comparisons import deep_merge
from velora_core.contract.spec import ComparisonSpec


def add_fit_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", help="model preset, hub id (config only) or folder with a config.json")
    parser.add_argument("--methods", nargs="+", help="training methods to predict")
    parser.add_argument("--micro-batch", type=int, help="default 8")
    parser.add_argument("--seq-len", type=int, help="default 512")
    parser.add_argument("--dtype", help="fp32, bf16 or fp16 (default bf16)")
    parser.add_argument("--autocast", help="mixed precision on fp32 weights: bf16 or fp16 (default: none)")
    parser.add_argument(
        "--spec", metavar="FILE", help="a RunSpec or ComparisonSpec (YAML or JSON) to predict"
    )
    parser.add_argument(
        "--set",
        action="append",
        metavar="KEY=VALUE",
        help="override a field of --spec, e.g. micro_batch=4 or method_config.lora.r=32",
    )
    parser.add_argument(
        "--gpu-gib", type=float, help="the card's memory in GiB: adds fits and max_micro_batch"
    )
    parser.add_argument(
        "--card-family",
        choices=get_args(CardFamilyName),
        default=DEFAULT_CARD_FAMILY,
        help="CUDA context and cuBLAS workspace constants: "
        + "; ".join(f"{k}: {f.description}" for k, f in CARD_FAMILIES.items())
        + " (default %(default)s)",
    )
    parser.add_argument("--context-mib", type=float, help="the CUDA context in MiB (default: the family's)")
    parser.add_argument(
        "--expandable-segments",
        action="store_true",
        help="the allocator runs with PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True",
    )
    parser.add_argument("--json", action="store_true", help="print a JSON list of objects")
    parser.add_argument(
        "--no-local", action="store_true", help="never read a local folder (how the service runs it)"
    )
    parser.add_argument(
        "--jobs",
        metavar="N",
        help="methods predicted at once, one process each (default: the CPUs this process may use)",
    )
    parser.add_argument(
        "--request",
        metavar="FILE",
        help="the whole request as FitRequest JSON ('-': standard input; how the service runs it)",
    )


def _with_overrides(spec: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    if "base" not in spec:  # a RunSpec
        return deep_merge(spec, overrides)
    top = {k: v for k, v in overrides.items() if k in ComparisonSpec.model_fields}
    base = {k: v for k, v in overrides.items() if k not in ComparisonSpec.model_fields}
    return deep_merge(deep_merge(spec, top), {"base": base})


#: The most processes --jobs may ask for.
MAX_JOBS = 64


def jobs_from_args(args: argparse.Namespace) -> int | None:
    """``--jobs``: a whole number from 1 to :data:`MAX_JOBS`, or None when not given.

    Raises:
        ValueError: the one-line message naming the flag.
    """
    text = getattr(args, "jobs", None)
    if text is None:
        return None
    try:
        value = int(text)
    except ValueError:
        raise ValueError(f"--jobs: a whole number from 1 to {MAX_JOBS}, not {text!r}") from None
    if not 1 <= value <= MAX_JOBS:
        raise ValueError(f"--jobs: a whole number from 1 to {MAX_JOBS}, not {value}")
    return value


#: The message of a process whose standard input closed without a request: the API that started it as
#: its spare (docs/service.md) has shut down or died, and the process exits with it, in one line.
NO_REQUEST = "no request on standard input (closed empty, as when the API that started this process stops)"


def _stdin_request() -> str:
    """The request on standard input, read after the warm-up (the API starts such a process before
    its request exists: velora_core/cli/fit_warmup.py). Empty input is bad input (:data:`NO_REQUEST`),
    not a JSON error."""
    from velora_core.cli.fit_warmup import warm_up  # imports torch: only in a process that will predict

    warm_up()
    text = sys.stdin.read()
    if not text.strip():
        raise ValueError(NO_REQUEST)
    return text


def request_from_args(args: argparse.Namespace) -> FitRequest:
    """The :class:`FitRequest` the flags describe.

    Raises:
        ValueError: the one-line message naming the bad flag's field (or the spec file's problem).
    """
    try:
        if args.request is not None:
            text = _stdin_request() if args.request == "-" else Path(args.request).read_text(encoding="utf-8")
            return FitRequest.model_validate(json.loads(text))
        given = {
            "model": args.model,
            "methods": args.methods,
            "micro_batch": args.micro_batch,
            "seq_len": args.seq_len,
            "dtype": args.dtype,
            "autocast": args.autocast,
        }
        fields: dict[str, Any] = {k: v for k, v in given.items() if v is not None}
        if args.spec is not None:
            if fields:
                raise ValueError(
                    f"--spec says the run; leave out --{'/--'.join(sorted(fields)).replace('_', '-')}"
                )
            spec = load_spec_file(args.spec).model_dump(mode="json")
            fields = {"spec": _with_overrides(spec, parse_assignments(args.set or []))}
        elif args.set:
            raise ValueError("--set overrides fields of --spec; give --spec FILE")
        return FitRequest(
            **fields,
            gpu_gib=args.gpu_gib,
            card_family=args.card_family,
            context_mib=args.context_mib,
            expandable_segments=args.expandable_segments,
        )
    except ValidationError as exc:
        raise ValueError(validation_message(exc, whole=None)) from None
    except (BadInput, OSError, json.JSONDecodeError) as exc:
        raise ValueError(str(exc)) from None
