"""One optimizer step of a run, written once: the trainer, the batch search and ``fit``'s fake steps
all take their steps through :class:`TrainingStep`, so what is measured, searched and predicted is
the same step (docs/architecture.md, "The steady step").

A step is ``grad_accum`` micro-batches of forward (under ``torch.autocast`` when the run sets
``autocast``, through the method's saved-tensor hooks) and backward (the loss over ``grad_accum``,
scaled by a ``GradScaler`` under fp16 autocast), then gradient clipping and the optimizer's step.
The gradients are cleared after the step (``set_to_none``), as the trainer has always done.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

import torch

from velora_core.contract.result import TRACKED_STEPS
from velora_core.contract.spec import RunSpec
from velora_core.memory.saved_tensors import SavedTensorMeter, training_forward
from velora_core.memory.tracker import MemoryTracker
from velora_core.methods.optimizers import build_optimizer
from velora_core.methods.registry import PreparedModel
from velora_core.models.loading import DTYPES

FIRST_STEP, STEADY_STEP = TRACKED_STEPS


def autocast_context(spec: RunSpec, device: torch.device) -> contextlib.AbstractContextManager:
    """``torch.autocast`` in the run's ``autocast`` dtype on ``device``'s type, or nothing."""
    if spec.autocast is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=DTYPES[spec.autocast])


class TrainingStep:
    """The forward, backward and update of one optimizer step of ``spec`` on ``prepared``.

    Args:
        spec: the run (``grad_accum``, ``autocast``, the optimizer's settings).
        prepared: the model, its trainable parameters and saved-tensor hooks.
        device: where the forward runs (autocast's device type).
        scale_loss: use a ``GradScaler`` under fp16 autocast (``fit``'s fake steps cannot: the
            scaler reads its inf check back with ``.item()``).
    """

    def __init__(self, spec: RunSpec, prepared: PreparedModel, device: torch.device, scale_loss: bool = True):
        self.spec = spec
        self.model = prepared.model
        self.params = prepared.trainable_parameters
        self.offload = prepared.saved_tensors_hooks
        self.device = device
        self.optimizer = build_optimizer(prepared, spec.optimizer)
        use_scaler = scale_loss and spec.autocast == "fp16"
        self.scaler = torch.amp.GradScaler(device.type) if use_scaler else None
        self.tracker: MemoryTracker | None = None

    def phase(self, phase: str) -> None:
        if self.tracker is not None:
            self.tracker.set_phase(phase)

    def micro_batch(
        self, batch: dict[str, torch.Tensor], meter: SavedTensorMeter | None = None
    ) -> torch.Tensor:
        """Forward and backward of one micro-batch; the loss, detached (not read back)."""
        self.phase("forward")
        with (
            training_forward(self.model, self.offload, meter, self.tracker),
            autocast_context(self.spec, self.device),
        ):
            loss = self.model(**batch).loss
        self.phase("backward")
        scaled = loss / self.spec.grad_accum
        (self.scaler.scale(scaled) if self.scaler is not None else scaled).backward()
        return loss.detach()

    def update(self) -> None:
        """Clip (after unscaling) and step the optimizer."""
        self.phase("optimizer")
        if self.scaler is not None:
            self.scaler.unscale_(self.optimizer)
        if self.spec.optimizer.max_grad_norm is not None:
            torch.nn.utils.clip_grad_norm_(self.params, self.spec.optimizer.max_grad_norm)
        if self.scaler is not None:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()

    def clear(self) -> None:
        self.optimizer.zero_grad(set_to_none=True)

    def run(
        self,
        batches: Iterator[dict[str, torch.Tensor]],
        tracker: MemoryTracker | None = None,
        prepare: Callable[[dict[str, torch.Tensor]], dict[str, torch.Tensor]] | None = None,
    ) -> list[torch.Tensor]:
        """A whole step (``grad_accum`` micro-batches from ``batches``, each through ``prepare``, then
        the update and clearing the gradients), tracked by ``tracker`` when given (entered and exited
        here, before the gradients are cleared). Returns the micro-batches' losses."""
        losses = []
        if tracker is not None:
            self.tracker = tracker.__enter__()
        try:
            for _ in range(self.spec.grad_accum):
                batch = next(batches)
                losses.append(self.micro_batch(prepare(batch) if prepare is not None else batch))
            self.update()
        finally:
            if tracker is not None:
                self.tracker = None
                tracker.__exit__(None, None, None)
        self.clear()
        return losses
