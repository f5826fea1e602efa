"""The activations autograd saves for backward, seen through ``saved_tensors_hooks`` and de-duplicated
by storage; under gradient checkpointing, each checkpointed layer's inputs (a forward pre-hook)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
from torch import nn

from velora_core.memory.tensor_bytes import tensor_nbytes
from velora_core.memory.tracker import MemoryTracker
from velora_core.velora.projection import VELORA_SAVED_ATTR


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
            key, size = ("id", id(t)), tensor_nbytes(t)
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
