"""A run's artifact on disk: where it lives (by spec hash), how it is saved, and reading one back.

An artifact is a directory named by the spec hash under the artifact root, holding the model (full
weights, or the adapter for LoRA methods), the tokenizer, ``spec.json``, a ``COMPLETE`` marker and,
once the run completed, ``result.json``. It is written under a temporary name and renamed into place,
so a reader never sees half of one and two workers saving the same spec do not mix their files.

A base run (one that pre-trains the model other runs fine-tune, ``contract/plan.py``) whose artifact is
already saved, by an earlier comparison, is answered from ``result.json`` instead of training again.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from pathlib import Path

from torch import nn

from velora_core.contract.hashing import content_hash
from velora_core.contract.plan import base_spec
from velora_core.contract.result import RunResult, RunStatus
from velora_core.contract.spec import RunSpec
from velora_core.models.tokenizers import Tokenizer
from velora_core.velora.layer import remove_velora

COMPLETE_MARKER = "COMPLETE"
RESULT_FILE = "result.json"


def artifact_path(root: str | Path, spec: RunSpec) -> Path:
    return Path(root) / spec.spec_hash()


def save_artifact(spec: RunSpec, model: nn.Module, tokenizer: Tokenizer, root: str | Path) -> Path:
    """Save the model (full weights, or the adapter for LoRA methods), tokenizer and spec."""
    path = artifact_path(root, spec)
    staging = Path(root) / f".{spec.spec_hash()}.{uuid.uuid4().hex[:12]}.partial"
    staging.mkdir(parents=True)
    try:
        remove_velora(model)  # so checkpoints and adapters keep their usual names
        model.save_pretrained(staging)
        tokenizer.save(staging)
        (staging / "spec.json").write_text(json.dumps(spec.model_dump(mode="json"), indent=2))
        (staging / COMPLETE_MARKER).write_text("")
        if path.exists() and not (path / COMPLETE_MARKER).exists():
            shutil.rmtree(path, ignore_errors=True)  # a partial save by an older version
        try:
            os.rename(staging, path)
        except OSError:  # another run saved the same spec first: its files are as good as ours
            if not (path / COMPLETE_MARKER).exists():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return path


def write_result(result: RunResult) -> None:
    """Keep a completed run's result beside its artifact (what :func:`stored_result` reads back)."""
    if result.artifact_path and result.status == RunStatus.COMPLETED:
        target = Path(result.artifact_path) / RESULT_FILE
        staging = target.with_name(f".{RESULT_FILE}.{uuid.uuid4().hex[:12]}")
        staging.write_text(result.model_dump_json(indent=2))
        os.replace(staging, target)


def stored_result(spec: RunSpec, root: str | Path) -> RunResult | None:
    """The result of ``spec`` from its saved artifact, if a completed run saved one; else None."""
    path = artifact_path(root, spec)
    try:
        if not (path / COMPLETE_MARKER).exists():
            return None
        result = RunResult.model_validate_json((path / RESULT_FILE).read_text())
    except (OSError, ValueError):
        return None
    if result.status != RunStatus.COMPLETED or result.spec_hash != spec.spec_hash():
        return None
    return result.model_copy(update={"artifact_path": str(path)})


def check_base_artifact(spec: RunSpec, base_model: str | Path | None) -> Path:
    """The base model folder of fine-tune ``spec``, checked: saved completely, by ``spec``'s own
    ``model.pretrain`` (its ``spec.json`` has that spec's hash).

    Raises:
        ValueError: no path given, or the folder is missing, incomplete or from another pre-training.
    """
    expected = base_spec(spec)
    if expected is None:
        raise ValueError("only a run with model.source='artifact' has a base model")
    if base_model is None:
        raise ValueError(
            "model.source='artifact' needs its base model, saved by a pre-training run of its own "
            f"(spec hash {expected.spec_hash()}): run that first (`velora-bench run` and `compare` do, "
            "and so does the service)"
        )
    path = Path(base_model)
    if not (path / COMPLETE_MARKER).exists():
        raise ValueError(f"base model {str(path)!r} is missing or was not saved completely")
    try:
        saved = json.loads((path / "spec.json").read_text())
    except (OSError, ValueError) as exc:
        raise ValueError(f"base model {str(path)!r} has no readable spec.json: {exc}") from None
    if content_hash(saved) != expected.spec_hash():
        raise ValueError(
            f"base model {str(path)!r} was saved by another pre-training spec ({content_hash(saved)}), "
            f"not this run's model.pretrain ({expected.spec_hash()})"
        )
    return path
