"""The training loop of one run (``Trainer``), with its learning-rate schedule and the errors it raises."""

from __future__ import annotations

import math
import time
from collections.abc import Callable

import torch

from velora_core.contract.result import LossPoint, MemoryReport, ProgressEvent, loss_curve_every
from velora_core.contract.spec import RunSpec
from velora_core.memory.report import step_report
from velora_core.memory.saved_tensors import SavedTensorMeter, training_forward
from velora_core.memory.tensor_bytes import gradient_bytes
from velora_core.memory.tracker import MemoryTracker, TrackedStep
from velora_core.methods.optimizers import build_optimizer
from velora_core.methods.registry import PreparedModel

ProgressCallback = Callable[[ProgressEvent], bool | None]


class RunCancelled(Exception):
    """Raised inside the engine when ``on_progress`` asks to stop."""


class OutOfMemory(Exception):
    """A CUDA out-of-memory, with the shape that failed."""

    def __init__(self, shape: dict):
        super().__init__(f"CUDA out of memory at {shape}")
        self.shape = shape


def oom_types() -> tuple[type[BaseException], ...]:
    """The exceptions that mean the device ran out of memory."""
    return (torch.OutOfMemoryError,)


def lr_lambda(warmup: int, total: int, min_ratio: float) -> Callable[[int], float]:
    """Linear warm-up over ``warmup`` steps, then cosine decay to ``min_ratio`` at ``total``."""

    def factor(step: int) -> float:
        if warmup and step < warmup:
            return (step + 1) / warmup
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return factor


def random_batches(vocab: int, micro_batch: int, seq_len: int, seed: int):
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
        self.offload = prepared.saved_tensors_hooks
        self.optimizer = build_optimizer(prepared, spec.optimizer)
        self.memory = MemoryReport()
        self.loss_curve: list[LossPoint] = []
        self.tokens = 0
        self.train_time = 0.0
        self.steps_done = 0
        self.total_steps = 0
        self._tracker: MemoryTracker | None = None  # on for the first (measured) step only

    def _to_device(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {k: v.to(self.device, non_blocking=True) for k, v in batch.items()}

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def _full_length(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Pad a micro-batch to ``seq_len`` (pad id, label -100, mask 0), so the measured step
        is the configured shape: memory then does not depend on which examples came first."""
        if "input_ids" not in batch:  # images: every batch has the configured shape already
            return batch
        shape = batch["input_ids"].shape
        missing = self.spec.seq_len - shape[1]
        if missing <= 0:
            return batch
        fill = {"input_ids": self.pad_token_id, "labels": -100, "attention_mask": 0}
        # Per-token tensors only: a classification batch's labels are one per example.
        return {
            k: torch.nn.functional.pad(v, (0, missing), value=fill.get(k, 0)) if v.shape == shape else v
            for k, v in batch.items()
        }

    def _phase(self, phase: str) -> None:
        if self._tracker is not None:
            self._tracker.set_phase(phase)

    def _stop_tracking(self) -> TrackedStep | None:
        tracker, self._tracker = self._tracker, None
        if tracker is None:
            return None
        tracker.__exit__(None, None, None)
        return tracker.result()

    def train(self, batches, total_steps: int) -> None:
        try:
            self._train(batches, total_steps)
        finally:
            self._stop_tracking()  # an error inside the measured step must not leave the tracker on

    def _train(self, batches, total_steps: int) -> None:
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
            meter = SavedTensorMeter(self.model, self.offload and self.offload()) if measure else None
            self._tracker = MemoryTracker(self.model, self.optimizer).__enter__() if measure else None
            for micro in range(spec.grad_accum):
                self._phase("forward")
                batch = next(batches)
                if measure:
                    batch = self._full_length(batch)
                batch = self._to_device(batch)
                inputs = batch.get("input_ids", batch.get("pixel_values"))
                shape = {"micro_batch": inputs.shape[0], "seq_len": inputs.shape[-1], "step": step}
                try:
                    with training_forward(
                        self.model, self.offload, meter if micro == 0 else None, self._tracker
                    ):
                        loss = self.model(**batch).loss
                    self._phase("backward")
                    (loss / spec.grad_accum).backward()
                except oom_types() as exc:
                    raise OutOfMemory(shape) from exc
                loss_sum += loss.item()
                step_tokens += (
                    int(batch["attention_mask"].sum())
                    if "attention_mask" in batch
                    else batch["input_ids"].numel()
                    if "input_ids" in batch
                    else inputs.shape[0]  # images: one per example
                )
            grad_bytes = gradient_bytes(self.model) if measure else 0
            self._phase("optimizer")
            if spec.optimizer.max_grad_norm is not None:
                torch.nn.utils.clip_grad_norm_(self.params, spec.optimizer.max_grad_norm)
            try:
                self.optimizer.step()
            except oom_types() as exc:
                raise OutOfMemory({"phase": "optimizer step", "step": step}) from exc
            tracked = self._stop_tracking()
            lr = scheduler.get_last_lr()[0]
            scheduler.step()
            self.optimizer.zero_grad(set_to_none=True)
            self._sync()
            elapsed = time.perf_counter() - start
            if measure:
                self.memory = step_report(self.model, meter, grad_bytes, self.optimizer, self.device, tracked)
            self.train_time += elapsed
            self.tokens += step_tokens
            self.steps_done = step
            loss_value = loss_sum / spec.grad_accum
            if not math.isfinite(loss_value):
                raise FloatingPointError(
                    f"the loss became {loss_value} at step {step}; try a lower learning rate"
                )
            if step % loss_curve_every(total_steps, spec.progress_every) == 0 or step in (1, total_steps):
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
