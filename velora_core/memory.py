"""Exact memory accounting for one training step (docs/architecture.md, "Memory accounting").

- Weights: every parameter's bytes as stored; a bitsandbytes 4-bit weight counts its packed bytes
  plus its quantisation state (absmax, code and, with double quantisation, the nested state).
- Trainable / gradient / optimizer-state bytes: counted from the tensors themselves.
- Activations: every tensor autograd saves for backward, seen through
  ``torch.autograd.graph.saved_tensors_hooks``, de-duplicated by storage, parameters excluded.
- Peak: the memory tracker's (``velora_core.memory_tracker``, every device: by component, phase and
  over time); on CUDA also ``torch.cuda.max_memory_allocated`` and ``max_memory_reserved``.
- Prediction: each VeLoRA layer saves ``T·G`` projections in the input's dtype plus its ``v``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
from torch import nn

from velora_core.contract.result import MemoryReport
from velora_core.layer import VeLoRALinear, velora_modules
from velora_core.memory_tracker import MemoryTracker, TrackedStep
from velora_core.projection import VELORA_SAVED_ATTR


def _nbytes(t: torch.Tensor) -> int:
    return t.numel() * t.element_size()


def quant_state_tensors(param: torch.Tensor) -> list[torch.Tensor]:
    """The tensors of a bitsandbytes 4-bit weight's quantisation state: absmax, code and, with
    double quantisation, the nested state's (none for any other tensor)."""
    state = getattr(param, "quant_state", None)
    tensors = []
    while state is not None:
        for name in ("absmax", "code", "offset"):
            t = getattr(state, name, None)
            if isinstance(t, torch.Tensor):
                tensors.append(t)
        state = getattr(state, "state2", None)
    return tensors


def _quant_state_bytes(param: torch.Tensor) -> int:
    """Bytes of a bitsandbytes 4-bit weight's quantisation state (0 for anything else)."""
    return sum(_nbytes(t) for t in quant_state_tensors(param))


def _dtype_label(param: torch.Tensor) -> str:
    quant_type = getattr(param, "quant_type", None)
    if quant_type is not None and getattr(param, "quant_state", None) is not None:
        return str(quant_type)  # "nf4" / "fp4": packed two per byte
    return str(param.dtype).removeprefix("torch.")


def parameter_bytes(model: nn.Module) -> dict[str, object]:
    """Frozen and trainable parameter bytes, the frozen bytes by dtype, and parameter counts
    (a 4-bit weight holds two parameters per stored byte)."""
    frozen = trainable = trainable_params = total_params = 0
    by_dtype: dict[str, int] = {}
    for param in model.parameters():
        size = _nbytes(param) + _quant_state_bytes(param)
        label = _dtype_label(param)
        count = param.numel() * (2 if label in ("nf4", "fp4") else 1)
        total_params += count
        if param.requires_grad:
            trainable += size
            trainable_params += count
        else:
            frozen += size
            by_dtype[label] = by_dtype.get(label, 0) + size
    return {
        "weight_bytes": frozen,
        "trainable_bytes": trainable,
        "weight_bytes_by_dtype": by_dtype,
        "trainable_params": trainable_params,
        "total_params": total_params,
    }


class SavedTensorMeter:
    """Counts the bytes autograd saves for backward while active, once per storage.

    Parameters of ``model`` are excluded (they are counted as weights). Tensors VeLoRA saves are
    tallied separately in ``velora_bytes``.
    """

    def __init__(self, model: nn.Module):
        self._param_storages = {self._key(p) for p in model.parameters()}
        self.storages: dict[tuple, int] = {}
        self.velora_storages: dict[tuple, int] = {}

    @staticmethod
    def _key(t: torch.Tensor) -> tuple:
        storage = t.untyped_storage()
        return (t.device.type, t.device.index, storage.data_ptr())

    def count(self, t: torch.Tensor) -> torch.Tensor:
        """The pack hook: count ``t`` once by storage (parameters excluded); returns it unchanged."""
        try:
            key = self._key(t)
            size = t.untyped_storage().nbytes()
        except (RuntimeError, NotImplementedError):  # sparse or storage-less tensors: count elements
            key, size = ("id", id(t)), _nbytes(t)
        if key not in self._param_storages:
            self.storages.setdefault(key, size)
            if getattr(t, VELORA_SAVED_ATTR, False):
                self.velora_storages.setdefault(key, size)
        return t

    @property
    def activation_bytes(self) -> int:
        return sum(self.storages.values())

    @property
    def velora_bytes(self) -> int:
        return sum(self.velora_storages.values())

    @contextmanager
    def measuring(self) -> Iterator[SavedTensorMeter]:
        with torch.autograd.graph.saved_tensors_hooks(self.count, lambda t: t):
            yield self


def predicted_velora_bytes(model: nn.Module) -> int:
    """Analytic bytes the VeLoRA layers saved in their last training forward: ``T·G`` projections
    in the input's dtype plus the vector ``v``, summed over layers."""
    total = 0
    for module in velora_modules(model).values():
        total += predict_layer_bytes(module, module.last_num_tokens, module.last_input_dtype)
    return total


def predict_layer_bytes(module: VeLoRALinear, num_tokens: int, dtype: torch.dtype | None) -> int:
    """``T·G·elem_size + S·elem_size(v)`` for one layer (0 if it has not run)."""
    if not num_tokens or dtype is None:
        return 0
    element = torch.empty((), dtype=dtype).element_size()
    return num_tokens * module.num_groups * element + _nbytes(module.velora_v)


def optimizer_state_bytes(optimizer: torch.optim.Optimizer) -> int:
    seen: set[int] = set()
    total = 0
    for state in optimizer.state.values():
        for value in state.values():
            if isinstance(value, torch.Tensor) and value.data_ptr() not in seen:
                seen.add(value.data_ptr())
                total += _nbytes(value)
    return total


def gradient_bytes(model: nn.Module) -> int:
    """Bytes of the gradients the parameters hold now (call after backward, before zero_grad)."""
    return sum(_nbytes(p.grad) for p in model.parameters() if p.grad is not None)


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
    measured = {}
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
        with tracker.counting_saved(meter):
            loss = loss_fn(model, batch) if loss_fn is not None else model(**batch).loss
        tracker.set_phase("backward")
        loss.backward()
        grad_bytes = gradient_bytes(model)
        tracker.set_phase("optimizer")
        optimizer.step()
    report = step_report(model, meter, grad_bytes, optimizer, device, tracker.result())
    optimizer.zero_grad(set_to_none=True)
    return loss.detach(), report
