"""What a card holds besides the caching allocator's segments, per card family (no torch).

"Will it fit" compares the allocator's reserved bytes plus the process's CUDA context with the card's
memory. Two constants per family, both overridable (``velora-bench fit --context-mib``, the
request's ``context_mib``):

- ``context_bytes``: the CUDA context (driver state, the kernels loaded so far, cuBLAS/cuDNN handles),
  outside the allocator, so not in ``torch.cuda.memory_reserved()`` but in ``nvidia-smi``. With CUDA
  ≥ 11.7 PyTorch loads kernels lazily and the context is "around 400MB" (pytorch/pytorch#109888,
  ptrblck; ~300 MB in #107667, more before lazy loading). 400 MiB for every family until measured:
  ``benchmarks/gpu_suite.sh`` records the card's own value (``nvidia-smi`` used minus reserved).
- ``cublas_workspace_bytes``: the cuBLAS (and, unified with it, cuBLASLt) workspace PyTorch allocates
  *through the caching allocator* per (handle, stream): ``:4096:8`` = 32 MiB on sm90, else
  ``:4096:2:16:8`` = 8 MiB + 128 KiB (aten/src/ATen/cuda/CublasHandlePool.cpp,
  ``parseChosenWorkspaceSize``). A training step uses two handles: the forward's thread and
  autograd's device thread for backward, so two workspaces are replayed as allocations.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

MIB = 1024**2

CardFamilyName = Literal["hopper", "ada", "ampere", "volta"]


@dataclass(frozen=True)
class CardFamily:
    """The constants of one card family (see the module docstring for their sources)."""

    description: str
    context_bytes: int
    cublas_workspace_bytes: int


_CONTEXT = 400 * MIB  # pytorch/pytorch#109888: "around 400MB" with lazy module loading (CUDA >= 11.7)
_SM90_WORKSPACE = 4096 * 1024 * 8  # :4096:8
_OTHER_WORKSPACE = 4096 * 1024 * 2 + 16 * 1024 * 8  # :4096:2:16:8

CARD_FAMILIES: dict[str, CardFamily] = {
    "hopper": CardFamily("H100, H200, GH200 (sm90)", _CONTEXT, _SM90_WORKSPACE),
    "ada": CardFamily("L4, L40, L40S, RTX 4090 (sm89)", _CONTEXT, _OTHER_WORKSPACE),
    "ampere": CardFamily("A100, A10, A40, RTX 3090 (sm80/sm86)", _CONTEXT, _OTHER_WORKSPACE),
    "volta": CardFamily("V100 (sm70)", _CONTEXT, _OTHER_WORKSPACE),
}
DEFAULT_CARD_FAMILY: CardFamilyName = "hopper"
#: cuBLAS handles a training step uses: the forward's thread and autograd's backward thread.
CUBLAS_HANDLES_PER_STEP = 2
