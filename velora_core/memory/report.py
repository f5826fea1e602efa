"""Exact memory accounting for one training step (docs/architecture.md, "Memory accounting").

- Weights: every parameter's bytes as stored; a bitsandbytes 4-bit weight counts its packed bytes
  plus its quantisation state (absmax, code and, with double quantisation, the nested state).
- Trainable / gradient / optimizer-state bytes: counted from the tensors themselves.
- Activations: every tensor autograd saves for backward, seen through
  ``torch.autograd.graph.saved_tensors_hooks``, de-duplicated by storage, parameters excluded. Under
  gradient checkpointing a checkpointed layer saves nothing at forward; what autograd keeps for it
  are its inputs, counted from a forward pre-hook on each checkpointed layer. Under offloading
  every saved tensor is copied to host memory: those bytes are host bytes, apart from device bytes.
- Optimizer state: every tensor in the optimizer's state, as stored (8-bit state as ``uint8`` plus
  its quantisation maps and scales), and GaLore's projection matrices.
- Peak: the memory tracker's (``velora_core.memory.tracker``, every device: by component, phase and
  over time); on CUDA also ``torch.cuda.max_memory_allocated`` and ``max_memory_reserved``.
- Prediction: each VeLoRA layer saves ``T·G`` projections in the input's dtype plus its ``v``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from velora_core.contract.result import MemoryReport
from velora_core.memory.saved_tensors import SavedTensorMeter, checkpointed_layers
from velora_core.memory.tensor_bytes import (
    gradient_bytes,
    optimizer_state_bytes,
    parameter_bytes,
    tensor_nbytes,
)
from velora_core.memory.tracker import MemoryTracker, TrackedStep
from velora_core.velora.layer import VeLoRALinear, velora_modules


def predicted_velora_bytes(model: nn.Module) -> int:
    """Analytic bytes the VeLoRA layers saved in their last training forward: ``T·G`` projections
    in the input's dtype plus the vector ``v``, summed over layers."""
    total = 0
    # A layer inside a checkpointed one keeps nothing after forward (it is recomputed).
    recomputed = tuple(f"{name}." for name in checkpointed_layers(model))
    for name, module in velora_modules(model).items():
        if recomputed and name.startswith(recomputed):
            continue
        total += predict_layer_bytes(module, module.last_num_tokens, module.last_input_dtype)
    return total


def predict_layer_bytes(module: VeLoRALinear, num_tokens: int, dtype: torch.dtype | None) -> int:
    """``T·G·elem_size + S·elem_size(v)`` for one layer (0 if it has not run)."""
    if not num_tokens or dtype is None:
        return 0
    element = torch.empty((), dtype=dtype).element_size()
    return num_tokens * module.num_groups * element + tensor_nbytes(module.velora_v)


def step_report(
    model: nn.Module,
    meter: SavedTensorMeter,
    grad_bytes: int,
    optimizer: torch.optim.Optimizer,
    device: torch.device,
    tracked: TrackedStep | None = None,
) -> MemoryReport:
    """The :class:`MemoryReport` of a step just taken: ``meter`` watched its forward,
    ``grad_bytes`` was read after its backward, ``optimizer`` has stepped, and ``tracked`` is what
    the memory tracker saw of it (None: not tracked)."""
    peak = reserved = None
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        peak = int(torch.cuda.max_memory_allocated(device))
        reserved = int(torch.cuda.max_memory_reserved(device))
    measured: dict[str, Any] = {}
    if tracked is not None:
        measured = {
            "measured_peak_bytes": tracked.peak_bytes,
            "peak_phase": tracked.peak_phase,
            "peak_components": tracked.peak_components,
            "temporary_bytes": tracked.peak_components["temporary"],
            "timeline": tracked.timeline,
            "allocator_gap_bytes": None if reserved is None else reserved - tracked.peak_bytes,
        }
    return MemoryReport(
        **parameter_bytes(model),
        gradient_bytes=grad_bytes,
        optimizer_bytes=optimizer_state_bytes(optimizer),
        activation_bytes=meter.activation_bytes,
        host_activation_bytes=meter.host_bytes,
        predicted_activation_bytes=predicted_velora_bytes(model),
        velora_measured_bytes=meter.velora_bytes,
        peak_bytes=peak,
        cuda_reserved_bytes=reserved,
        **measured,
    )


def measure_training_step(
    model: nn.Module,
    batch: dict[str, torch.Tensor],
    optimizer: torch.optim.Optimizer,
    loss_fn: Callable[[nn.Module, dict[str, torch.Tensor]], torch.Tensor] | None = None,
) -> tuple[torch.Tensor, MemoryReport]:
    """Run one training step (forward, backward, optimizer step) and account for its memory.

    Args:
        model: the model in training mode.
        batch: keyword arguments of the forward (``input_ids``, ``labels`` …).
        optimizer: steps the trainable parameters; its state is counted after the step.
        loss_fn: computes the loss; default ``model(**batch).loss``.
    Returns:
        The loss (detached) and the :class:`MemoryReport`. Gradients are cleared afterwards.
    """
    device = next(model.parameters()).device
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    meter = SavedTensorMeter(model)
    tracker = MemoryTracker(model, optimizer)
    with tracker:
        with meter.saving(tracker):
            loss = loss_fn(model, batch) if loss_fn is not None else model(**batch).loss
        tracker.set_phase("backward")
        loss.backward()
        grad_bytes = gradient_bytes(model)
        tracker.set_phase("optimizer")
        optimizer.step()
    report = step_report(model, meter, grad_bytes, optimizer, device, tracker.result())
    optimizer.zero_grad(set_to_none=True)
    return loss.detach(), report
