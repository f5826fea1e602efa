"""Bytes of tensors as stored: parameters (4-bit weights with their quantisation state), gradients and
optimizer state (8-bit state as stored, GaLore's projection matrices included). The one reader of each;
the tracker and the step report both use it."""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import nn


def tensor_nbytes(t: torch.Tensor) -> int:
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
    return sum(tensor_nbytes(t) for t in quant_state_tensors(param))


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
        size = tensor_nbytes(param) + _quant_state_bytes(param)
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
                    total += tensor_nbytes(t)
    return total


def gradient_bytes(model: nn.Module) -> int:
    """Bytes of the gradients the parameters hold now (call after backward, before zero_grad)."""
    return sum(tensor_nbytes(p.grad) for p in model.parameters() if p.grad is not None)
