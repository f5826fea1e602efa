"""The run lifecycle: one run of one method, setup → train → evaluate → result.

The training loop is in ``trainer``, the artifacts on disk in ``artifacts``, the largest-batch
search in ``batch_search``; what differs between workloads (the model's head, the processor, the
training data, the evaluation) comes from the run's strategy in ``workloads``, so the lifecycle has
no workload branches. :func:`execute` keeps no state between runs and reports through
``on_progress``; it does not know whether a CLI progress bar or a Celery task is listening. A run
failure (bad data, a CUDA out-of-memory, cancellation) is a :class:`RunResult`, never an exception.

A fine-tune from a pre-trained base (``model.source='artifact'``) is given that base's folder
(``base_model``): the pre-training is a run of its own, which the caller runs first (the worker when
the store says its base completed, the CLI in plan order; ``contract/plan.py``). The engine never
starts one run from inside another.
"""

from __future__ import annotations

import random
import traceback
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn
from transformers import AutoConfig

from velora_core.bench.artifacts import check_base_artifact, save_artifact, stored_result, write_result
from velora_core.bench.batch_search import search_max_micro_batch
from velora_core.bench.environment import environment
from velora_core.bench.trainer import (
    OutOfMemory,
    ProgressCallback,
    RunCancelled,
    Trainer,
    oom_types,
    total_steps_for,
)
from velora_core.bench.workloads import start_workload
from velora_core.contract.method_settings import method_config_for
from velora_core.contract.names import check_hub_id_not_on_disk
from velora_core.contract.presets.model_shapes import MODEL_PRESETS
from velora_core.contract.result import ProgressEvent, RunResult, RunStatus, Throughput
from velora_core.contract.spec import RunSpec
from velora_core.methods.registry import prepare_model
from velora_core.models.loading import DTYPES, ModelSource
from velora_core.models.preset_configs import preset_config


def resolve_device(name: str) -> torch.device:
    """``auto`` → the first CUDA device if there is one, else the CPU.

    Raises:
        ValueError: CUDA asked for but not available.
    """
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {name!r} asked for, but this machine has no CUDA device")
    return device


def seed_everything(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)


def model_source(spec: RunSpec, device: torch.device, base_model: str | Path | None) -> ModelSource:
    """Where the run's model comes from (before its workload adds a head): a built-in shape's config,
    the base run's artifact, a hub id or a local folder (a hub model's config for memory-only)."""
    model = spec.model
    where = {
        "dtype": DTYPES[spec.dtype],
        "device": str(device),
        "workload": spec.workload,
        "pooling": model.pooling,
    }
    if model.source == "preset":
        return ModelSource(config=preset_config(MODEL_PRESETS[model.name]), **where)
    if model.source == "artifact":
        return ModelSource(path=str(check_base_artifact(spec, base_model)), **where)
    if model.source == "hub":
        check_hub_id_not_on_disk(model.name, "model.name")
    if model.memory_only:
        config = AutoConfig.from_pretrained(model.name, revision=model.revision, trust_remote_code=False)
        return ModelSource(config=config, **where)
    return ModelSource(path=model.name, revision=model.revision, **where)


def _check_positions(model: nn.Module, seq_len: int) -> None:
    limit = getattr(getattr(model, "config", None), "max_position_embeddings", None)
    if limit is not None and seq_len > limit:
        raise ValueError(f"seq_len {seq_len} is beyond the model's limit of {limit} positions")


def execute(
    spec: RunSpec,
    on_progress: ProgressCallback | None = None,
    artifact_dir: str | Path = ".velora-bench/artifacts",
    model_hook: Callable[[nn.Module], None] | None = None,
    base_model: str | Path | None = None,
) -> RunResult:
    """Run ``spec`` and return its :class:`RunResult`.

    Args:
        spec: the validated run.
        on_progress: called after every optimizer step (and at phase changes) with a
            :class:`ProgressEvent`; returning True cancels the run within that step.
        artifact_dir: where the run's artifact is saved, by spec hash.
        model_hook: called with the prepared model before training (instrumentation, tests).
        base_model: for ``model.source='artifact'``, the folder its pre-training run saved
            (that run's ``artifact_path``); checked against ``spec.model.pretrain``.
    Returns:
        The result; ``status`` is ``completed``, ``failed``, ``out_of_memory`` or ``cancelled``.
    """
    result = RunResult(
        method=spec.method,
        status=RunStatus.RUNNING,
        spec_hash=spec.spec_hash(),
        spec=spec.model_dump(mode="json"),
    )
    trainer: Trainer | None = None
    try:
        device = resolve_device(spec.device)
        result.environment = environment(spec, device)

        def emit(phase: str, message: str = "") -> None:
            # Phase events carry the training position, so a listener's progress never goes back to 0.
            done, total_steps = (
                (trainer.steps_done, trainer.total_steps) if trainer is not None else (0, spec.steps or 0)
            )
            event = ProgressEvent(phase=phase, message=message, step=done, total_steps=total_steps)
            if on_progress is not None and on_progress(event):
                raise RunCancelled()

        emit("setup", f"loading the model ({spec.model.name}) on {device}")
        seed_everything(spec.seed)
        # The workload's strategy (bench/workloads/) reads what must come before the model (a head's labels).
        workload = start_workload(spec, model_source(spec, device, base_model))
        method_config_for(spec.method, spec.method_config)  # re-validated: specs may come from storage
        seed_everything(spec.seed)
        emit("setup", f"applying {spec.method}")
        prepared = prepare_model(spec.method, workload.source, spec.method_config)
        _check_positions(prepared.model, spec.seq_len)
        if model_hook is not None:
            model_hook(prepared.model)
        emit("setup", f"preparing the training data ({spec.dataset.name})")
        data = workload.training_data(prepared.model)
        result.environment.update(data.environment)
        trainer = Trainer(spec, prepared, device, on_progress, workload.processor.pad_token_id)
        trainer.train(data.batches, total_steps_for(spec, data.num_examples))
        result.memory = trainer.memory
        emit("eval", spec.eval.metric)
        result.eval = workload.evaluate(prepared.model, device)
        if spec.save_artifact and not spec.model.memory_only:
            result.artifact_path = str(save_artifact(spec, prepared.model, workload.processor, artifact_dir))
        if spec.max_batch_search:  # offered by the causal-LM workloads only (their registry entry)
            if device.type == "cuda":
                vocab = prepared.model.get_input_embeddings().num_embeddings
                del prepared, trainer.model, trainer.optimizer
                torch.cuda.empty_cache()
                result.max_micro_batch = search_max_micro_batch(spec, workload.source, vocab, device)
            else:
                result.environment["max_batch_search"] = (
                    "skipped: needs CUDA (the CPU has no out-of-memory error)"
                )
        result.status = RunStatus.COMPLETED
        emit("done")
    except RunCancelled:
        result.status = RunStatus.CANCELLED
        result.error = "cancelled on request"
    except OutOfMemory as exc:
        result.status = RunStatus.OUT_OF_MEMORY
        result.failed_shape = exc.shape
        result.error = f"CUDA out of memory at micro_batch×seq_len {exc.shape}: {exc.__cause__}"
    except oom_types() as exc:
        result.status = RunStatus.OUT_OF_MEMORY
        result.failed_shape = {
            "micro_batch": spec.micro_batch,
            "seq_len": spec.seq_len,
            "phase": "setup or evaluation",
        }
        result.error = f"CUDA out of memory: {exc}"
    except Exception as exc:  # a run failure is a result, not a crash
        result.status = RunStatus.FAILED
        result.error = f"{type(exc).__name__}: {exc}"
        result.environment["traceback"] = traceback.format_exc(limit=8)
    if trainer is not None:
        result.loss_curve = trainer.loss_curve
        result.steps_done = trainer.steps_done
        if result.memory.trainable_params == 0 and trainer.steps_done:
            result.memory = trainer.memory
        result.throughput = Throughput(
            tokens_per_s=trainer.tokens / trainer.train_time if trainer.train_time else 0.0,
            step_time_s=trainer.train_time / trainer.steps_done if trainer.steps_done else 0.0,
            train_time_s=trainer.train_time,
            tokens=trainer.tokens,
        )
    try:
        write_result(result)  # the whole result (curve, throughput), beside the artifact it made
    except OSError as exc:
        result.environment["result_not_saved"] = f"{type(exc).__name__}: {exc}"
    return result


def execute_base(
    spec: RunSpec,
    on_progress: ProgressCallback | None = None,
    artifact_dir: str | Path = ".velora-bench/artifacts",
) -> RunResult:
    """Run a base run (it pre-trains a model that others fine-tune), or answer it from the artifact
    an earlier run with the same spec saved (its stored result, marked as reused)."""
    stored = stored_result(spec, artifact_dir)
    if stored is None:
        return execute(spec.model_copy(update={"save_artifact": True}), on_progress, artifact_dir)
    if on_progress is not None:
        on_progress(
            ProgressEvent(
                phase="done",
                message=f"reused the base model saved at {stored.artifact_path}",
                step=stored.steps_done,
                total_steps=stored.steps_done,
            )
        )
    environment = {**stored.environment, "reused_artifact": stored.artifact_path}
    return stored.model_copy(update={"environment": environment})


__all__ = ["execute", "execute_base"]
