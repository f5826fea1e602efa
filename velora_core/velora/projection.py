"""VeLoRA's math: sub-token compression and the reconstruction-free weight gradient.

Notation (docs/architecture.md, "The algorithm"; Miles et al. 2024, §3.1, Eqs. 1–2): ``x`` is (T, D) with T tokens, split into
``G`` sub-tokens of ``S = ceil(D / G)`` features (zero-padded to ``G·S`` when ``G`` does not divide
``D``, as peft does). ``v`` is a fixed unit vector of length ``S``.

- compress:   ``z[t, g] = <x[t, gS:(g+1)S], v>``                         (T, G)
- rebuild:    ``x̂[t, gS + s] = z[t, g] · v[s]``                          (T, D), never materialised
- gradient:   ``grad_W = scale · gᵀ x̂``, and since ``v`` is shared by every sub-token,
              ``grad_W[m, gS + s] = scale · (gᵀ z)[m, g] · v[s]``         one (M×T)·(T×G) product
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

#: Attribute set on the tensors VeLoRA saves, so memory accounting can attribute them.
VELORA_SAVED_ATTR = "_velora_saved"

_HALF_TYPES = (torch.float16, torch.bfloat16)


def accumulation_dtype(dtype: torch.dtype) -> torch.dtype:
    """The precision to accumulate in for inputs of ``dtype``: fp32 for half types and fp32, else the
    input's own (fp64 stays fp64, so float64 gradients match a float64 oracle to rounding)."""
    return torch.float32 if dtype in _HALF_TYPES else torch.promote_types(dtype, torch.float32)


def sub_token_size(in_features: int, num_groups: int) -> int:
    """Features per sub-token, ``S = ceil(D / G)``.

    Raises:
        ValueError: if ``num_groups`` is not in ``[1, in_features]``.
    """
    if not 1 <= num_groups <= in_features:
        raise ValueError(
            f"num_groups must lie in [1, {in_features}] for {in_features} input features, got {num_groups}"
        )
    return -(-in_features // num_groups)


def group_sub_tokens(x2d: torch.Tensor, num_groups: int) -> torch.Tensor:
    """View (T, D) as (T, G, S), zero-padding the feature dim to ``G·S`` when needed."""
    tokens, features = x2d.shape
    size = sub_token_size(features, num_groups)
    padded = num_groups * size
    if padded != features:
        x2d = F.pad(x2d, (0, padded - features))
    return x2d.reshape(tokens, num_groups, size)


def compress(x2d: torch.Tensor, v: torch.Tensor, num_groups: int) -> torch.Tensor:
    """Project every sub-token of ``x2d`` (T, D) on ``v`` (S,): returns ``z`` (T, G) in x's dtype."""
    return torch.matmul(group_sub_tokens(x2d, num_groups), v.to(x2d.dtype))


def reconstruct(z: torch.Tensor, v: torch.Tensor, in_features: int) -> torch.Tensor:
    """The coarse input ``x̂`` (T, D) from ``z`` (T, G). Reference and tests only: the backward
    pass never builds it."""
    tokens, groups = z.shape
    full = (z.unsqueeze(-1) * v.to(z.dtype)).reshape(tokens, groups * v.numel())
    return full[:, :in_features]


def sub_token_mean(x2d: torch.Tensor, num_groups: int) -> torch.Tensor:
    """Mean of all sub-tokens of (T, D): (S,), in :func:`accumulation_dtype` of x (at least fp32).
    Used to initialise ``v``."""
    grouped = group_sub_tokens(x2d.detach(), num_groups)
    return grouped.to(accumulation_dtype(x2d.dtype)).mean(dim=(0, 1))


def normalise(v: torch.Tensor) -> torch.Tensor:
    """``v / ‖v‖`` in at least float32 (fp64 stays fp64); an all-zero vector becomes the normalised
    all-ones vector. Branch-free (no data-dependent ``if``), so it also runs on fake and meta tensors."""
    v = v.to(accumulation_dtype(v.dtype))
    norm = torch.linalg.vector_norm(v)
    ones = torch.full_like(v, v.numel() ** -0.5)
    return torch.where(norm > 0, v / torch.where(norm > 0, norm, 1.0), ones)


def weight_grad_from_projections(
    grad_out2d: torch.Tensor, z: torch.Tensor, v: torch.Tensor, in_features: int, scale: float
) -> torch.Tensor:
    """``scale · gᵀ x̂`` without building ``x̂``: ``(gᵀ z) ⊗ (scale·v)``, trimmed to ``D`` columns.

    Args:
        grad_out2d: (T, M) gradient of the layer output.
        z: (T, G) sub-token projections.
        v: (S,) projection vector.
        in_features: D.
        scale: VeLoRA's gradient scale.
    Returns:
        (M, D) weight gradient in ``grad_out2d``'s dtype.
    """
    out_features = grad_out2d.shape[1]
    groups, size = z.shape[1], v.numel()
    gz = torch.matmul(grad_out2d.t(), z.to(grad_out2d.dtype))  # (M, G); fp32 accumulation inside the GEMM
    acc = accumulation_dtype(gz.dtype)
    scaled_v = v.to(acc) * scale  # (S,)
    if gz.dtype in _HALF_TYPES:
        # The outer product is cheap (M·D); do it in fp32 and round once.
        grad = (gz.to(acc).unsqueeze(-1) * scaled_v).to(gz.dtype)
    else:
        grad = gz.unsqueeze(-1) * scaled_v  # (M, G, S)
    grad = grad.reshape(out_features, groups * size)
    return grad if groups * size == in_features else grad[:, :in_features].contiguous()


class VeLoRAFunction(torch.autograd.Function):
    """``y = x Wᵀ + b`` exactly; saves only ``z`` (and ``W`` when ``x`` needs a gradient)."""

    @staticmethod
    def forward(ctx, x, weight, bias, v, num_groups: int, scale: float):
        y = F.linear(x, weight, bias)
        in_features = x.shape[-1]
        needs_x, needs_w, needs_b = ctx.needs_input_grad[:3]
        z = compress(x.reshape(-1, in_features), v, num_groups) if needs_w else None  # (T, G)
        if needs_w:
            setattr(z, VELORA_SAVED_ATTR, True)
            setattr(v, VELORA_SAVED_ATTR, True)
        ctx.save_for_backward(z, weight if needs_x else None, v if needs_w else None)
        ctx.x_shape = x.shape
        ctx.scale = scale
        ctx.bias_dtype = bias.dtype if bias is not None else None
        ctx.weight_dtype = weight.dtype
        del needs_b
        return y

    @staticmethod
    def backward(ctx, grad_out):
        z, weight, v = ctx.saved_tensors
        in_features = ctx.x_shape[-1]
        g2 = grad_out.reshape(-1, grad_out.shape[-1])  # (T, M)
        grad_x = grad_w = grad_b = None
        if ctx.needs_input_grad[0]:
            grad_x = torch.matmul(g2, weight.to(g2.dtype)).reshape(ctx.x_shape)  # exact
        if ctx.needs_input_grad[1]:
            grad_w = weight_grad_from_projections(g2, z, v, in_features, ctx.scale).to(ctx.weight_dtype)
        if ctx.needs_input_grad[2]:
            # Exact; accumulated in fp32 for half types, in the gradient's own precision otherwise.
            grad_b = g2.sum(dim=0, dtype=accumulation_dtype(g2.dtype)).to(ctx.bias_dtype)
        return grad_x, grad_w, grad_b, None, None, None


def velora_linear(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    v: torch.Tensor,
    num_groups: int,
    scale: float = 1.0,
) -> torch.Tensor:
    """A linear layer whose backward pass keeps only VeLoRA's sub-token projections of ``x``.

    Args:
        x: (..., D) input; any number of leading dims (T = their product). fp64, fp32, fp16 or bf16.
        weight: (M, D) weight.
        bias: (M,) bias or None.
        v: (S,) unit projection vector, ``S = ceil(D / num_groups)``.
        num_groups: G, sub-tokens per token. When G does not divide D the input is zero-padded to
            ``G·S`` features for the projection (peft's convention); the output is unaffected.
        scale: multiplies the weight gradient.
    Returns:
        (..., M) output, exactly ``x Wᵀ + b``. Gradients: ``grad_x`` and ``grad_b`` exact,
        ``grad_W = scale · gᵀ x̂`` (the module docstring), computed without materialising ``x̂``.
    Raises:
        ValueError: shape mismatches between ``x``, ``weight`` and ``v``.
    """
    in_features = x.shape[-1]
    if weight.dim() != 2 or weight.shape[1] != in_features:
        raise ValueError(f"weight shape {tuple(weight.shape)} does not fit input features {in_features}")
    size = sub_token_size(in_features, num_groups)
    if v.dim() != 1 or v.numel() != size:
        raise ValueError(
            f"v must have {size} elements (ceil({in_features}/{num_groups})), got {tuple(v.shape)}"
        )
    return VeLoRAFunction.apply(x, weight, bias, v, num_groups, float(scale))
