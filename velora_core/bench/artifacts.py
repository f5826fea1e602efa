"""A run's artifact on disk: where it lives (by spec hash), how it is saved, and making a missing one.

An artifact is a directory named by the spec hash under the artifact root, holding the model (full
weights, or the adapter for LoRA methods), the tokenizer, ``spec.json`` and a ``COMPLETE`` marker
written last.
"""

from __future__ import annotations

import fcntl
import json
from collections.abc import Callable
from pathlib import Path

from torch import nn

from velora_core.bench.tokenizer import Tokenizer
from velora_core.bench.trainer import ProgressCallback, RunCancelled
from velora_core.contract.result import ProgressEvent, RunResult, RunStatus
from velora_core.contract.spec import RunSpec
from velora_core.layer import remove_velora

COMPLETE_MARKER = "COMPLETE"
#: What ``ensure_artifact`` runs to make a missing artifact: ``engine.execute``'s signature.
RunFunction = Callable[[RunSpec, ProgressCallback | None, str | Path], RunResult]


def artifact_path(root: str | Path, spec: RunSpec) -> Path:
    return Path(root) / spec.spec_hash()


def ensure_artifact(
    spec: RunSpec, root: str | Path, on_progress: ProgressCallback | None, run: RunFunction
) -> Path:
    """The artifact of ``spec`` (a pre-training run), made first if it is not there yet.

    A file lock makes concurrent workers wait for one maker instead of training twice. ``run`` is
    the engine's ``execute``, passed in so that this module does not import the engine.

    Raises:
        RunCancelled: cancelled while pre-training.
        RuntimeError: the pre-training run did not complete (its error is in the message).
    """
    path = artifact_path(root, spec)
    if (path / COMPLETE_MARKER).exists():
        return path
    Path(root).mkdir(parents=True, exist_ok=True)
    with open(Path(root) / f"{spec.spec_hash()}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (path / COMPLETE_MARKER).exists():
            return path

        def relay(event: ProgressEvent) -> bool | None:
            event = event.model_copy(update={"phase": f"base-{event.phase}"})
            return on_progress(event) if on_progress is not None else None

        result = run(spec.model_copy(update={"save_artifact": True}), relay, root)
        if result.status == RunStatus.CANCELLED:
            raise RunCancelled()
        if result.status != RunStatus.COMPLETED:
            raise RuntimeError(f"pre-training the base model failed ({result.status}): {result.error}")
    return path


def save_artifact(spec: RunSpec, model: nn.Module, tokenizer: Tokenizer, root: str | Path) -> Path:
    """Save the model (full weights, or the adapter for LoRA methods), tokenizer and spec."""
    path = artifact_path(root, spec)
    path.mkdir(parents=True, exist_ok=True)
    remove_velora(model)  # so checkpoints and adapters keep their usual names
    model.save_pretrained(path)
    tokenizer.save(path)
    (path / "spec.json").write_text(json.dumps(spec.model_dump(mode="json"), indent=2))
    (path / COMPLETE_MARKER).write_text("")
    return path
