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
    tallied separately in ``velora_bytes``. The inputs of gradient-checkpointed layers count as
    saved. With ``offload`` (a ``saved_tensors_hooks`` such as ``save_on_cpu``), every tensor goes
    through its hooks and its bytes count in ``host_bytes`` instead (parameters included: it copies
    them too).
    """

    def __init__(self, model: nn.Module, offload: torch.autograd.graph.saved_tensors_hooks | None = None):
        self._model = model
        self._param_storages = {self._key(p) for p in model.parameters()}
        self.storages: dict[tuple, int] = {}
        self.velora_storages: dict[tuple, int] = {}
        self.host_storages: dict[tuple, int] = {}
        self._offload = offload

    @staticmethod
    def _key(t: torch.Tensor) -> tuple:
        storage = t.untyped_storage()
        return (t.device.type, t.device.index, storage.data_ptr())

    def _count(self, t: torch.Tensor) -> None:
        try:
            key = self._key(t)
            size = t.untyped_storage().nbytes()
        except (RuntimeError, NotImplementedError):  # sparse or storage-less tensors: count elements
            key, size = ("id", id(t)), _nbytes(t)
        if self._offload is not None:
            self.host_storages.setdefault(key, size)
        elif key not in self._param_storages:
            self.storages.setdefault(key, size)
        if key not in self._param_storages and getattr(t, VELORA_SAVED_ATTR, False):
            self.velora_storages.setdefault(key, size)

    def _pack(self, t: torch.Tensor):
        self._count(t)
        return t if self._offload is None else self._offload.pack_hook(t)

    def _unpack(self, packed):
        return packed if self._offload is None else self._offload.unpack_hook(packed)

    def _count_checkpoint_inputs(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        if not (module.training and torch.is_grad_enabled()):
            return
        for value in (*args, *kwargs.values()):
            for t in value if isinstance(value, (tuple, list)) else (value,):
                if isinstance(t, torch.Tensor):
                    self._count(t)

    @property
    def activation_bytes(self) -> int:
        return sum(self.storages.values())

    @property
    def velora_bytes(self) -> int:
        return sum(self.velora_storages.values())

    @property
    def host_bytes(self) -> int:
        return sum(self.host_storages.values())

    @contextmanager
    def measuring(self) -> Iterator[SavedTensorMeter]:
        with self.saving():
            yield self

    @contextmanager
    def saving(self, tracker: MemoryTracker | None = None) -> Iterator[None]:
        """Count what is saved while inside, through ``tracker``'s saved-tensor hooks when one is
        tracking the step (only the innermost hooks run, so the tracker must pass tensors on)."""
        handles = [
            module.register_forward_pre_hook(self._count_checkpoint_inputs, with_kwargs=True)
            for module in checkpointed_layers(self._model).values()
        ]
        try:
            if tracker is not None:
                with tracker.saving_through(self._pack, self._unpack):
                    yield
            else:
                with torch.autograd.graph.saved_tensors_hooks(self._pack, self._unpack):
                    yield
        finally:
            for handle in handles:
                handle.remove()


def checkpointed_layers(model: nn.Module) -> dict[str, nn.Module]:
    """The modules gradient checkpointing recomputes (transformers' ``GradientCheckpointingLayer``
    with checkpointing on), by name."""
    return {
        name: module
        for name, module in model.named_modules()
        if getattr(module, "gradient_checkpointing", False) is True
        and hasattr(module, "_gradient_checkpointing_func")
    }


@contextmanager
def training_forward(
    model: nn.Module,
    offload: Callable[[], torch.autograd.graph.saved_tensors_hooks] | None,
    meter: SavedTensorMeter | None = None,
    tracker: MemoryTracker | None = None,
) -> Iterator[None]:
    """The context of a training forward: ``meter`` counting (it applies the offload hooks itself),
    else the offload hooks alone, else nothing; through ``tracker``'s hooks when it tracks the step."""
    if meter is not None:
        with meter.saving(tracker):
            yield
    elif offload is not None:
        hooks = offload()
        if tracker is not None:
            with tracker.saving_through(hooks.pack_hook, hooks.unpack_hook):
                yield
        else:
            with hooks:
                yield
    else:
        yield


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
    return num_tokens * module.num_groups * element + _nbytes(module.velora_v)


def optimizer_state_tensors(value: object) -> Iterator[torch.Tensor]:
    """The tensors of one optimizer-state entry: a tensor, or GaLore's projector (its projection
    matrix, or the pair of them for ``proj_type="full"``)."""
    if isinstance(value, torch.Tensor):
        yield value
    elif hasattr(value, "ortho_matrix"):
        matrix = value.ortho_matrix
        for t in matrix if isinstance(matrix, (list, tuple)) else (matrix,):
            if isinstance(t, torch.Tensor):
                yield t


def optimizer_state_bytes(optimizer: torch.optim.Optimizer) -> int:
    """Bytes of the optimizer's state as stored, each storage once."""
    seen: set[int] = set()
    total = 0
    for state in optimizer.state.values():
        for value in state.values():
            for t in optimizer_state_tensors(value):
                if t.data_ptr() not in seen:
                    seen.add(t.data_ptr())
                    total += _nbytes(t)
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
