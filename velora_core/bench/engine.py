"""The benchmark engine: one run of one method, setup → train → evaluate → result.

:func:`execute` keeps no state between runs and reports through ``on_progress``; it does not know
whether a CLI progress bar or a Celery task is listening. A run failure (bad data, a CUDA
out-of-memory, cancellation) is a :class:`RunResult`, never an exception.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import math
import random
import time
import traceback
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from velora_core.bench.data import LMEvalData, MCEvalData, load_eval_data, load_train_data
from velora_core.bench.environment import environment
from velora_core.bench.evaluate import mc_accuracy, perplexity
from velora_core.bench.tokenizer import Tokenizer, load_tokenizer
from velora_core.layer import remove_velora
from velora_core.memory import SavedTensorMeter, gradient_bytes, step_report
from velora_core.method_configs import method_config_for
from velora_core.methods import PreparedModel, prepare_model
from velora_core.models import DTYPES, ModelSource, llama_config
from velora_core.presets import MODEL_PRESETS
from velora_core.result import (
    EvalResult,
    LossPoint,
    MemoryReport,
    ProgressEvent,
    RunResult,
    RunStatus,
    Throughput,
)
from velora_core.spec import RunSpec, check_hub_id_not_on_disk

ProgressCallback = Callable[[ProgressEvent], bool | None]
COMPLETE_MARKER = "COMPLETE"


class RunCancelled(Exception):
    """Raised inside the engine when ``on_progress`` asks to stop."""


class OutOfMemory(Exception):
    """A CUDA out-of-memory, with the shape that failed."""

    def __init__(self, shape: dict):
        super().__init__(f"CUDA out of memory at {shape}")
        self.shape = shape


def _oom_types() -> tuple[type[BaseException], ...]:
    return (torch.OutOfMemoryError,)


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


def lr_lambda(warmup: int, total: int, min_ratio: float) -> Callable[[int], float]:
    """Linear warm-up over ``warmup`` steps, then cosine decay to ``min_ratio`` at ``total``."""

    def factor(step: int) -> float:
        if warmup and step < warmup:
            return (step + 1) / warmup
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return factor


def artifact_path(root: str | Path, spec: RunSpec) -> Path:
    return Path(root) / spec.spec_hash()


def ensure_artifact(spec: RunSpec, root: str | Path, on_progress: ProgressCallback | None) -> Path:
    """The artifact of ``spec`` (a pre-training run), made first if it is not there yet.

    A file lock makes concurrent workers wait for one maker instead of training twice.

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

        result = execute(spec.model_copy(update={"save_artifact": True}), relay, root)
        if result.status == RunStatus.CANCELLED:
            raise RunCancelled()
        if result.status != RunStatus.COMPLETED:
            raise RuntimeError(f"pre-training the base model failed ({result.status}): {result.error}")
    return path


def model_source(spec: RunSpec, device: torch.device, artifact_root: str | Path, on_progress) -> ModelSource:
    dtype = DTYPES[spec.dtype]
    model = spec.model
    if model.source == "preset":
        return ModelSource(config=llama_config(MODEL_PRESETS[model.name]), dtype=dtype, device=str(device))
    if model.source == "artifact":
        path = ensure_artifact(model.pretrain, artifact_root, on_progress)
        return ModelSource(path=str(path), dtype=dtype, device=str(device))
    if model.source == "hub":
        check_hub_id_not_on_disk(model.name, "model.name")
    if model.memory_only:
        from transformers import AutoConfig

        config = AutoConfig.from_pretrained(model.name, revision=model.revision, trust_remote_code=False)
        return ModelSource(config=config, dtype=dtype, device=str(device))
    return ModelSource(path=model.name, revision=model.revision, dtype=dtype, device=str(device))


def _check_positions(model: nn.Module, seq_len: int) -> None:
    limit = getattr(getattr(model, "config", None), "max_position_embeddings", None)
    if limit is not None and seq_len > limit:
        raise ValueError(f"seq_len {seq_len} is beyond the model's limit of {limit} positions")


def _random_batches(vocab: int, micro_batch: int, seq_len: int, seed: int):
    """Memory-only runs: random token ids of the right shape (accuracy is not reported)."""
    gen = torch.Generator().manual_seed(seed)
    while True:
        ids = torch.randint(3, vocab, (micro_batch, seq_len), generator=gen)
        yield {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids.clone()}


class Trainer:
    """The training loop of one run: micro-batches, gradient accumulation, AdamW, schedule,
    memory accounting on the first optimizer step, progress and cancellation."""

    def __init__(
        self, spec: RunSpec, prepared: PreparedModel, device: torch.device, on_progress, pad_token_id: int = 0
    ):
        self.spec = spec
        self.pad_token_id = pad_token_id
        self.model = prepared.model
        self.params = prepared.trainable_parameters
        self.device = device
        self.on_progress = on_progress
        opt = spec.optimizer
        self.optimizer = torch.optim.AdamW(
            self.params, lr=opt.lr, betas=opt.betas, weight_decay=opt.weight_decay
        )
        self.memory = MemoryReport()
        self.loss_curve: list[LossPoint] = []
        self.tokens = 0
        self.train_time = 0.0
        self.steps_done = 0
        self.total_steps = 0

    def _to_device(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {k: v.to(self.device, non_blocking=True) for k, v in batch.items()}

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def _full_length(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Pad a micro-batch to ``seq_len`` (pad id, label -100, mask 0), so the measured step
        is the configured shape: memory then does not depend on which examples came first."""
        missing = self.spec.seq_len - batch["input_ids"].shape[1]
        if missing <= 0:
            return batch
        fill = {"input_ids": self.pad_token_id, "labels": -100, "attention_mask": 0}
        return {k: torch.nn.functional.pad(v, (0, missing), value=fill.get(k, 0)) for k, v in batch.items()}

    def train(self, batches, total_steps: int) -> None:
        spec = self.spec
        self.total_steps = total_steps
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lr_lambda(spec.optimizer.warmup_steps, total_steps, spec.optimizer.min_lr_ratio)
        )
        self.model.train()
        for step in range(1, total_steps + 1):
            measure = step == 1
            if measure and self.device.type == "cuda":
                torch.cuda.synchronize(self.device)
                torch.cuda.reset_peak_memory_stats(self.device)
            self._sync()
            start = time.perf_counter()
            loss_sum, step_tokens = 0.0, 0
            meter = SavedTensorMeter(self.model) if measure else None
            for micro in range(spec.grad_accum):
                batch = next(batches)
                if measure:
                    batch = self._full_length(batch)
                batch = self._to_device(batch)
                shape = {
                    "micro_batch": batch["input_ids"].shape[0],
                    "seq_len": batch["input_ids"].shape[1],
                    "step": step,
                }
                try:
                    ctx = (
                        meter.measuring() if (meter is not None and micro == 0) else contextlib.nullcontext()
                    )
                    with ctx:
                        loss = self.model(**batch).loss
                    (loss / spec.grad_accum).backward()
                except _oom_types() as exc:
                    raise OutOfMemory(shape) from exc
                loss_sum += loss.item()
                step_tokens += (
                    int(batch["attention_mask"].sum())
                    if "attention_mask" in batch
                    else batch["input_ids"].numel()
                )
            grad_bytes = gradient_bytes(self.model) if measure else 0
            if spec.optimizer.max_grad_norm is not None:
                torch.nn.utils.clip_grad_norm_(self.params, spec.optimizer.max_grad_norm)
            try:
                self.optimizer.step()
            except _oom_types() as exc:
                raise OutOfMemory({"phase": "optimizer step", "step": step}) from exc
            lr = scheduler.get_last_lr()[0]
            scheduler.step()
            self.optimizer.zero_grad(set_to_none=True)
            self._sync()
            elapsed = time.perf_counter() - start
            if measure:
                self.memory = step_report(self.model, meter, grad_bytes, self.optimizer, self.device)
            self.train_time += elapsed
            self.tokens += step_tokens
            self.steps_done = step
            loss_value = loss_sum / spec.grad_accum
            if not math.isfinite(loss_value):
                raise FloatingPointError(
                    f"the loss became {loss_value} at step {step}; try a lower learning rate"
                )
            if step % spec.progress_every == 0 or step == total_steps or step == 1:
                self.loss_curve.append(LossPoint(step=step, loss=loss_value, lr=lr))
            event = ProgressEvent(
                phase="train",
                step=step,
                total_steps=total_steps,
                loss=loss_value,
                lr=lr,
                tokens_per_s=step_tokens / elapsed if elapsed > 0 else None,
                step_time_s=elapsed,
                memory_allocated_bytes=int(torch.cuda.memory_allocated(self.device))
                if self.device.type == "cuda"
                else None,
            )
            if self.on_progress is not None and self.on_progress(event):
                raise RunCancelled()


def total_steps_for(spec: RunSpec, num_examples: int) -> int:
    if spec.steps is not None:
        return spec.steps
    per_step = spec.micro_batch * spec.grad_accum
    return max(1, math.ceil(spec.epochs * num_examples / per_step))


def evaluate(spec: RunSpec, model: nn.Module, tokenizer: Tokenizer, device: torch.device) -> EvalResult:
    if spec.eval.metric == "none":
        return EvalResult(metric="none")
    data = load_eval_data(spec.eval, spec.dataset, tokenizer, spec.seq_len, spec.seed)
    if data is None:
        return EvalResult(metric="none")
    if isinstance(data, LMEvalData):
        result = perplexity(model, data.blocks.to(device), spec.eval.batch_size)
    elif isinstance(data, MCEvalData):
        result = mc_accuracy(
            model, tokenizer, data.shots, data.questions, spec.eval.num_shots, spec.eval.batch_size
        )
    else:  # pragma: no cover - load_eval_data returns one of the two
        raise TypeError(f"unexpected evaluation data {type(data).__name__}")
    result.details = {**result.details, "dataset": data.description, "fingerprint": data.fingerprint}
    return result


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


def find_max_micro_batch(fits: Callable[[int], bool], start: int = 1, cap: int = 4096) -> int | None:
    """The largest micro-batch for which ``fits`` is true: doubling, then bisection. None if even
    ``start`` does not fit."""
    if not fits(start):
        return None
    good, bad = start, None
    while bad is None:
        trial = good * 2
        if trial > cap:
            return good
        if fits(trial):
            good = trial
        else:
            bad = trial
    while bad - good > 1:
        mid = (good + bad) // 2
        good, bad = (mid, bad) if fits(mid) else (good, mid)
    return good


def _search_max_batch(spec: RunSpec, source: ModelSource, vocab: int, device: torch.device) -> int | None:
    def fits(micro_batch: int) -> bool:
        prepared = prepare_model(spec.method, source, spec.method_config)
        batch = next(_random_batches(vocab, micro_batch, spec.seq_len, spec.seed))
        try:
            prepared.model.train()
            loss = prepared.model(**{k: v.to(device) for k, v in batch.items()}).loss
            loss.backward()
            optimizer = torch.optim.AdamW(prepared.trainable_parameters)
            optimizer.step()
            return True
        except _oom_types():
            return False
        finally:
            del prepared
            if device.type == "cuda":
                torch.cuda.empty_cache()  # between trials, not in a hot path

    return find_max_micro_batch(fits)


def execute(
    spec: RunSpec,
    on_progress: ProgressCallback | None = None,
    artifact_dir: str | Path = ".velora-bench/artifacts",
    model_hook: Callable[[nn.Module], None] | None = None,
) -> RunResult:
    """Run ``spec`` and return its :class:`RunResult`.

    Args:
        spec: the validated run.
        on_progress: called after every optimizer step (and at phase changes) with a
            :class:`ProgressEvent`; returning True cancels the run within that step.
        artifact_dir: where artifacts are saved and base models are cached, by spec hash.
        model_hook: called with the prepared model before training (instrumentation, tests).
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

        emit("setup", f"building {spec.method} on {device}")
        seed_everything(spec.seed)
        source = model_source(spec, device, artifact_dir, on_progress)
        tokenizer = load_tokenizer(spec.model, source.path if spec.model.source == "artifact" else None)
        method_config_for(spec.method, spec.method_config)  # re-validated: specs may come from storage
        seed_everything(spec.seed)
        prepared = prepare_model(spec.method, source, spec.method_config)
        _check_positions(prepared.model, spec.seq_len)
        if model_hook is not None:
            model_hook(prepared.model)
        vocab = prepared.model.get_input_embeddings().num_embeddings
        if spec.model.memory_only:
            batches = _random_batches(vocab, spec.micro_batch, spec.seq_len, spec.seed)
            num_examples = spec.micro_batch
            result.environment["data"] = "random tokens (memory-only)"
        else:
            # With a step budget, load no more examples than the run can visit.
            bound = spec.steps * spec.micro_batch * spec.grad_accum if spec.steps is not None else None
            data = load_train_data(spec.dataset, tokenizer, spec.seq_len, spec.seed, max_examples=bound)
            batches = data.batches(spec.micro_batch, spec.seed)
            num_examples = data.num_examples
            result.environment["data_fingerprint"] = data.fingerprint
            result.environment["data"] = data.description
        total = total_steps_for(spec, num_examples)
        trainer = Trainer(spec, prepared, device, on_progress, tokenizer.pad_token_id)
        trainer.train(batches, total)
        result.memory = trainer.memory
        emit("eval", spec.eval.metric)
        result.eval = evaluate(spec, prepared.model, tokenizer, device)
        if spec.save_artifact and not spec.model.memory_only:
            result.artifact_path = str(save_artifact(spec, prepared.model, tokenizer, artifact_dir))
        if spec.max_batch_search:
            if device.type == "cuda":
                del prepared, trainer.model, trainer.optimizer
                torch.cuda.empty_cache()
                result.max_micro_batch = _search_max_batch(spec, source, vocab, device)
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
    except _oom_types() as exc:
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
    return result


__all__ = ["execute", "find_max_micro_batch"]
