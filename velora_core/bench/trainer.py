"""The training loop of one run (``Trainer``), with its learning-rate schedule and the errors it raises."""

from __future__ import annotations

import math
import time
from collections.abc import Callable

import torch

from velora_core.bench.step import FIRST_STEP, STEADY_STEP, TrainingStep
from velora_core.contract.result import LossPoint, MemoryReport, ProgressEvent, TrackedStep, loss_curve_every
from velora_core.contract.spec import RunSpec
from velora_core.memory.report import step_report
from velora_core.memory.saved_tensors import SavedTensorMeter
from velora_core.memory.tensor_bytes import gradient_bytes
from velora_core.memory.tracker import MemoryTracker
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
    progress and cancellation, and memory accounting on a steady step (docs/architecture.md, "The
    steady step"): step 2, whose forward and backward run with the optimizer state step 1 created
    (a run of one step takes an untimed, unlogged warm-up step first; its update is real and
    ``MemoryReport.warmup_steps`` says so). Step 1 is tracked too, for ``first_step_peak_bytes``."""

    def __init__(
        self, spec: RunSpec, prepared: PreparedModel, device: torch.device, on_progress, pad_token_id: int = 0
    ):
        self.spec = spec
        self.pad_token_id = pad_token_id
        self.model = prepared.model
        self.params = prepared.trainable_parameters
        self.device = device
        self.on_progress = on_progress
        self.step = TrainingStep(spec, prepared, device)
        self.optimizer = self.step.optimizer
        self.memory = MemoryReport()
        self.loss_curve: list[LossPoint] = []
        self.tokens = 0
        self.train_time = 0.0
        self.steps_done = 0
        self.total_steps = 0
        self._run_peaks = (0, 0)  # CUDA allocated / reserved over the loop, folded before each reset

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

    def _fold_cuda_peaks(self, reset: bool) -> None:
        """Fold the allocator's peaks since the last reset into the run's, and reset them."""
        if self.device.type != "cuda":
            return
        torch.cuda.synchronize(self.device)
        allocated, reserved = self._run_peaks
        self._run_peaks = (
            max(allocated, int(torch.cuda.max_memory_allocated(self.device))),
            max(reserved, int(torch.cuda.max_memory_reserved(self.device))),
        )
        if reset:
            torch.cuda.reset_peak_memory_stats(self.device)

    def train(self, batches, total_steps: int) -> None:
        try:
            self._train(batches, total_steps)
        finally:
            self.step.tracker = None  # an error inside a tracked step leaves no tracker on
            if self.steps_done:
                self._fold_cuda_peaks(reset=False)
                self.memory.run_peak_allocated_bytes, self.memory.run_peak_reserved_bytes = (
                    self._run_peaks if self.device.type == "cuda" else (None, None)
                )

    def _one_step(
        self, batches, step: int, kind: TrackedStep | None
    ) -> tuple[float, int, MemoryReport | None]:
        """One optimizer step: its mean loss, its tokens, and the memory report when ``kind`` names
        the tracked step it is (``first`` or ``steady``; padded to ``seq_len``)."""
        spec = self.spec
        if kind == STEADY_STEP:
            self._fold_cuda_peaks(reset=True)  # the allocator's peaks around this step alone
        meter = SavedTensorMeter(self.model, self.step.offload and self.step.offload()) if kind else None
        tracker = MemoryTracker(self.model, self.optimizer) if kind else None
        losses, step_tokens, grad_bytes = [], 0, 0
        self.step.tracker = tracker.__enter__() if tracker is not None else None
        try:
            for micro in range(spec.grad_accum):
                batch = next(batches)
                batch = self._to_device(self._full_length(batch) if kind else batch)
                inputs = batch.get("input_ids", batch.get("pixel_values"))
                shape = {"micro_batch": inputs.shape[0], "seq_len": inputs.shape[-1], "step": step}
                try:
                    losses.append(self.step.micro_batch(batch, meter if micro == 0 else None))
                except oom_types() as exc:
                    raise OutOfMemory(shape) from exc
                step_tokens += (
                    int(batch["attention_mask"].sum())
                    if "attention_mask" in batch
                    else batch["input_ids"].numel()
                    if "input_ids" in batch
                    else inputs.shape[0]  # images: one per example
                )
            grad_bytes = gradient_bytes(self.model) if kind else 0
            try:
                self.step.update()
            except oom_types() as exc:
                raise OutOfMemory({"phase": "optimizer step", "step": step}) from exc
        finally:
            self.step.tracker = None
            if tracker is not None:
                tracker.__exit__(None, None, None)
        self.step.clear()
        report = None
        if kind is not None and meter is not None and tracker is not None:
            report = step_report(self.model, meter, grad_bytes, self.optimizer, self.device, tracker.result())
            report.tracked_step = kind
        return sum(loss.item() for loss in losses) / spec.grad_accum, step_tokens, report

    def _train(self, batches, total_steps: int) -> None:
        spec = self.spec
        self.total_steps = total_steps
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lr_lambda(spec.optimizer.warmup_steps, total_steps, spec.optimizer.min_lr_ratio)
        )
        self.model.train()
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
        first: MemoryReport | None = None
        warmup = 1 if total_steps == 1 else 0
        if warmup:  # untimed, unlogged; its update is real (MemoryReport.warmup_steps)
            first = self._one_step(batches, 0, FIRST_STEP)[2]
        steady_step = 2 - warmup
        for step in range(1, total_steps + 1):
            kind: TrackedStep | None = (
                STEADY_STEP if step == steady_step else FIRST_STEP if step == 1 else None
            )
            self._sync()
            start = time.perf_counter()
            loss_value, step_tokens, report = self._one_step(batches, step, kind)
            lr = scheduler.get_last_lr()[0]
            scheduler.step()
            self._sync()
            elapsed = time.perf_counter() - start
            if report is not None and kind == FIRST_STEP:
                first = self.memory = report  # the headline only if the run stops before step 2
            elif report is not None and first is not None:
                self.memory = report.model_copy(
                    update={"first_step_peak_bytes": first.measured_peak_bytes, "warmup_steps": warmup}
                )
            self.train_time += elapsed
            self.tokens += step_tokens
            self.steps_done = step
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
