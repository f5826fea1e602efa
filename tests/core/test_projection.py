"""velora_linear against a float64 implementation of the paper's math (rebuild x̂, multiply)."""

from __future__ import annotations

import pytest
import torch

from velora_core.velora.projection import compress, normalise, reconstruct, sub_token_size, velora_linear


def reference_grads(x, weight, bias, v, num_groups, scale, grad_out):
    """Float64: y = x Wᵀ + b; grad_x = g W; grad_W = scale · gᵀ x̂ with x̂ rebuilt explicitly."""
    x64, w64, v64, g64 = (t.detach().double() for t in (x, weight, v, grad_out))
    d = x64.shape[-1]
    size = sub_token_size(d, num_groups)
    x2 = torch.nn.functional.pad(x64.reshape(-1, d), (0, num_groups * size - d))
    z = (x2.reshape(-1, num_groups, size) * v64).sum(-1)  # (T, G)
    x_hat = (z.unsqueeze(-1) * v64).reshape(-1, num_groups * size)[:, :d]  # (T, D)
    g2 = g64.reshape(-1, w64.shape[0])
    y = x64 @ w64.t() + (bias.detach().double() if bias is not None else 0)
    grad_x = (g2 @ w64).reshape(x.shape)
    grad_w = scale * g2.t() @ x_hat
    grad_b = g2.sum(0) if bias is not None else None
    return y, grad_x, grad_w, grad_b


CASES = [
    # leading dims, D, M, G, bias
    ((7,), 16, 5, 4, True),
    ((3, 11), 24, 9, 8, False),
    ((2, 3, 5), 32, 12, 2, True),
    ((13,), 10, 4, 3, True),  # G does not divide D: zero padding
    ((4, 6), 9, 7, 9, False),  # one feature per sub-token
]


@pytest.mark.parametrize(("lead", "d", "m", "g", "with_bias"), CASES)
def test_gradients_match_float64_reference(lead, d, m, g, with_bias):
    gen = torch.Generator().manual_seed(d * 31 + m)
    x = torch.randn(*lead, d, generator=gen, requires_grad=True)
    weight = torch.randn(m, d, generator=gen, requires_grad=True)
    bias = torch.randn(m, generator=gen, requires_grad=True) if with_bias else None
    v = normalise(torch.randn(sub_token_size(d, g), generator=gen))
    grad_out = torch.randn(*lead, m, generator=gen)
    scale = 0.37

    y = velora_linear(x, weight, bias, v, g, scale)
    y.backward(grad_out)
    ref_y, ref_gx, ref_gw, ref_gb = reference_grads(x, weight, bias, v, g, scale, grad_out)

    torch.testing.assert_close(y.double(), ref_y, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(x.grad.double(), ref_gx, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(weight.grad.double(), ref_gw, rtol=1e-5, atol=1e-5)
    if with_bias:
        torch.testing.assert_close(bias.grad.double(), ref_gb, rtol=1e-5, atol=1e-5)
    assert weight.grad.shape == weight.shape and x.grad.shape == x.shape


@pytest.mark.parametrize(("lead", "d", "m", "g", "with_bias"), CASES)
def test_float64_gradients_match_float64_reference_to_rounding(lead, d, m, g, with_bias):
    # Float64 in, float64 out: every accumulation (bias sum, v's outer product) keeps fp64.
    gen = torch.Generator().manual_seed(d * 17 + m)
    x = torch.randn(*lead, d, generator=gen, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(m, d, generator=gen, dtype=torch.float64, requires_grad=True)
    bias = torch.randn(m, generator=gen, dtype=torch.float64, requires_grad=True) if with_bias else None
    v = normalise(torch.randn(sub_token_size(d, g), generator=gen, dtype=torch.float64))
    assert v.dtype == torch.float64
    grad_out = torch.randn(*lead, m, generator=gen, dtype=torch.float64)

    y = velora_linear(x, weight, bias, v, g, 0.37)
    y.backward(grad_out)
    ref_y, ref_gx, ref_gw, ref_gb = reference_grads(x, weight, bias, v, g, 0.37, grad_out)

    tight = {"rtol": 1e-10, "atol": 1e-10}
    assert y.dtype == x.grad.dtype == weight.grad.dtype == torch.float64
    torch.testing.assert_close(y, ref_y, **tight)
    torch.testing.assert_close(x.grad, ref_gx, **tight)
    torch.testing.assert_close(weight.grad, ref_gw, **tight)
    if with_bias:
        assert bias.grad.dtype == torch.float64
        torch.testing.assert_close(bias.grad, ref_gb, **tight)


def test_normalise_keeps_float64_and_maps_zero_to_unit_ones():
    v = normalise(torch.tensor([3.0, 4.0], dtype=torch.float64))
    assert v.dtype == torch.float64
    torch.testing.assert_close(v, torch.tensor([0.6, 0.8], dtype=torch.float64), rtol=0, atol=1e-15)
    zero = normalise(torch.zeros(4))
    torch.testing.assert_close(zero, torch.full((4,), 0.5))
    assert normalise(torch.ones(3, dtype=torch.bfloat16)).dtype == torch.float32


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_close_to_reference_and_keeps_dtypes(dtype):
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(4, 32, 64, generator=gen).to(dtype).requires_grad_()
    weight = (torch.randn(48, 64, generator=gen) / 8).to(dtype).requires_grad_()
    bias = torch.randn(48, generator=gen).to(dtype).requires_grad_()
    v = normalise(torch.randn(8, generator=gen))
    grad_out = torch.randn(4, 32, 48, generator=gen).to(dtype)

    y = velora_linear(x, weight, bias, v, 8, 0.5)
    y.backward(grad_out)
    _, ref_gx, ref_gw, ref_gb = reference_grads(x, weight, bias, v.to(dtype), 8, 0.5, grad_out)

    assert y.dtype == x.grad.dtype == weight.grad.dtype == bias.grad.dtype == dtype
    tol = {"rtol": 3e-2, "atol": 3e-2 * ref_gw.abs().max().item()}
    torch.testing.assert_close(weight.grad.double(), ref_gw, **tol)
    torch.testing.assert_close(bias.grad.double(), ref_gb, rtol=2e-2, atol=2e-2 * ref_gb.abs().max().item())
    torch.testing.assert_close(x.grad.double(), ref_gx, rtol=3e-2, atol=3e-2 * ref_gx.abs().max().item())


def test_output_is_exact_linear():
    x = torch.randn(5, 12)
    weight, bias = torch.randn(3, 12), torch.randn(3)
    v = normalise(torch.randn(4))
    torch.testing.assert_close(
        velora_linear(x, weight, bias, v, 3), torch.nn.functional.linear(x, weight, bias)
    )


def test_reconstruction_is_projection_onto_v():
    # With G = D / S and v a unit vector, x̂ = (x·v) v per sub-token: projecting again changes nothing.
    x = torch.randn(6, 12, dtype=torch.float64)
    v = normalise(torch.randn(4)).double()
    x_hat = reconstruct(compress(x, v, 3), v, 12)
    torch.testing.assert_close(reconstruct(compress(x_hat, v, 3), v, 12), x_hat)


def test_frozen_weight_saves_no_projection():
    x = torch.randn(8, 16, requires_grad=True)
    weight = torch.randn(4, 16)  # frozen
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        y = velora_linear(x, weight, None, normalise(torch.randn(4)), 4)
    y.sum().backward()
    assert [tuple(t.shape) for t in saved] == [(4, 16)]  # the weight, for grad_x, and nothing else
    torch.testing.assert_close(x.grad, torch.ones(8, 4) @ weight)


def test_input_without_grad_saves_no_weight():
    x = torch.randn(8, 16)
    weight = torch.randn(4, 16, requires_grad=True)
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        y = velora_linear(x, weight, None, normalise(torch.randn(4)), 4)
    y.sum().backward()
    assert sorted(tuple(t.shape) for t in saved) == [(4,), (8, 4)]  # v and z only


@pytest.mark.parametrize(
    ("weight_shape", "v_len", "groups", "message"),
    [
        ((4, 15), 4, 4, "does not fit"),
        ((4, 16), 5, 4, "v must have 4"),
        ((4, 16), 1, 17, "num_groups must lie"),
    ],
)
def test_bad_shapes_raise_clear_errors(weight_shape, v_len, groups, message):
    with pytest.raises(ValueError, match=message):
        velora_linear(torch.randn(2, 16), torch.randn(*weight_shape), None, torch.ones(v_len), groups)
