"""The flags of ``velora-bench fit`` (and ``python -m velora_core.bench.fit_prediction``) and the request they make.

Torch-free, so the CLI's parser loads fast; the prediction itself is ``velora_core.bench.fit_prediction``.
"""

from __future__ import annotations

import argparse

from pydantic import ValidationError

from velora_core.contract.errors import validation_message
from velora_core.contract.fit_request import FitRequest


def add_fit_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model", required=True, help="model preset, hub id (config only) or folder with a config.json"
    )
    parser.add_argument("--methods", nargs="+", required=True, help="training methods to predict")
    parser.add_argument("--micro-batch", type=int, default=8, help="default %(default)s")
    parser.add_argument("--seq-len", type=int, default=512, help="default %(default)s")
    parser.add_argument("--dtype", default="bf16", help="fp32, bf16 or fp16 (default %(default)s)")
    parser.add_argument("--autocast", help="mixed precision on fp32 weights: bf16 or fp16 (default: none)")
    parser.add_argument(
        "--gpu-gib", type=float, help="the card's memory in GiB: adds fits and max_micro_batch"
    )
    parser.add_argument("--json", action="store_true", help="print a JSON list of objects")
    parser.add_argument(
        "--no-local", action="store_true", help="never read a local folder (how the service runs it)"
    )


def request_from_args(args: argparse.Namespace) -> FitRequest:
    """The :class:`FitRequest` the flags describe.

    Raises:
        ValueError: the one-line message naming the bad flag's field.
    """
    try:
        return FitRequest(
            model=args.model,
            methods=args.methods,
            micro_batch=args.micro_batch,
            seq_len=args.seq_len,
            dtype=args.dtype,
            autocast=args.autocast,
            gpu_gib=args.gpu_gib,
        )
    except ValidationError as exc:
        raise ValueError(validation_message(exc, whole=None)) from None
