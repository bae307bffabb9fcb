"""Known answers of the fused_moe reference, each against a direct torch computation."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from parity.reference.common import precision
from parity.reference.moe import fused_moe
from parity.reference.quant import (
    fp8_block_dequant,
    fp8_block_quant,
    fp8_quant,
    mxfp4_dequant,
    mxfp4_quant,
)


def make(t=5, h=64, n=32, e=3, k=2, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(t, h, generator=g).to(dtype)
    w13 = (torch.randn(e, 2 * n, h, generator=g) / h**0.5).to(dtype)
    w2 = (torch.randn(e, h, n, generator=g) / n**0.5).to(dtype)
    weights = torch.rand(t, k, generator=g)
    ids = torch.stack([torch.randperm(e, generator=g)[:k] for _ in range(t)]).to(torch.int32)
    return x, w13, w2, weights, ids


def silu_mul(h: torch.Tensor) -> torch.Tensor:
    gate, up = h.chunk(2, dim=-1)
    return F.silu(gate) * up


def direct(x, w13, w2, weights, ids, act=silu_mul):
    """Token by token, slot by slot, in float32."""
    out = torch.zeros(x.shape, dtype=torch.float32)
    for t in range(x.shape[0]):
        for j in range(ids.shape[1]):
            e = int(ids[t, j])
            if e >= 0:
                y = act(x[t].float() @ w13[e].float().T) @ w2[e].float().T
                out[t] += weights[t, j] * y
    return out


def test_single_expert_k1():
    x, w13, w2, _, _ = make(k=1)
    ids = torch.zeros(5, 1, dtype=torch.int32)
    ones = torch.ones(5, 1)
    out = fused_moe(x, w13, w2, ones, ids)
    want = silu_mul(x @ w13[0].T) @ w2[0].T
    assert out.dtype == torch.float32 and out.shape == x.shape
    torch.testing.assert_close(out, want, rtol=1e-5, atol=1e-6)


def test_weighted_sum_over_k():
    x, w13, w2, weights, ids = make(k=2)
    torch.testing.assert_close(
        fused_moe(x, w13, w2, weights, ids), direct(x, w13, w2, weights, ids), rtol=1e-5, atol=1e-6
    )


def test_bf16_rounds_once_at_the_end():
    x, w13, w2, weights, ids = make(dtype=torch.bfloat16)
    out = fused_moe(x, w13, w2, weights, ids)
    assert out.dtype == torch.bfloat16
    want = direct(x, w13, w2, weights, ids)
    # One bf16 rounding of a float32 result that agrees to ~1e-6.
    torch.testing.assert_close(out.float(), want, rtol=2**-8, atol=1e-5)
    with precision("float64", round_output=False):
        exact = fused_moe(x, w13, w2, weights, ids)
    assert exact.dtype == torch.float64
    torch.testing.assert_close(exact.float(), want, rtol=1e-5, atol=1e-6)


def test_skipped_slots_and_zero_rows():
    x, w13, w2, weights, ids = make(k=2)
    ids[1] = -1  # every slot skipped: a zero row
    ids[2, 1] = -1  # one slot skipped
    weights[1] = float("nan")  # a skipped slot's weight is ignored
    out = fused_moe(x, w13, w2, weights, ids)
    assert torch.equal(out[1], torch.zeros(64))
    torch.testing.assert_close(out, direct(x, w13, w2, weights, ids), rtol=1e-5, atol=1e-6)


def test_apply_router_weight_on_input():
    x, w13, w2, weights, ids = make(k=1)
    out = fused_moe(x, w13, w2, weights, ids, apply_router_weight_on_input=True)
    want = direct(x * weights, w13, w2, torch.ones_like(weights), ids)
    torch.testing.assert_close(out, want, rtol=1e-5, atol=1e-6)
    # Not the same as weighting the output (SwiGLU is not linear).
    assert not torch.allclose(out, fused_moe(x, w13, w2, weights, ids), rtol=1e-3)


def test_interleaved_layout_and_limit():
    x, w13, w2, weights, ids = make()
    x = x * 4  # push gate and up past the limit
    n = w13.shape[1] // 2
    inter = torch.stack([w13[:, :n], w13[:, n:]], dim=2).reshape(w13.shape)  # g0 u0 g1 u1 ...
    opts = dict(swiglu_limit=1.5, swiglu_alpha=1.702, swiglu_beta=1.0)
    concat = fused_moe(x, w13, w2, weights, ids, **opts)
    torch.testing.assert_close(
        fused_moe(x, inter, w2, weights, ids, layout="interleaved", **opts),
        concat,
        rtol=1e-5,
        atol=1e-6,
    )

    def clamped(h):  # gpt-oss style, clamp before the activation
        gate, up = h.chunk(2, dim=-1)
        gate, up = gate.clamp(max=1.5), up.clamp(-1.5, 1.5)
        return gate * torch.sigmoid(1.702 * gate) * (up + 1.0)

    torch.testing.assert_close(
        concat, direct(x, w13, w2, weights, ids, act=clamped), rtol=1e-5, atol=1e-6
    )


def test_fp8_block_against_dequantize_then_matmul():
    # Partial row blocks (2N = 96 rows, br = 64), activation groups of 16.
    bs = (64, 16)
    x, w13f, w2f, _, _ = make(t=4, h=32, n=48, e=2, k=1)
    w13, s13 = fp8_block_quant(w13f, block_shape=bs)
    w2, s2 = fp8_block_quant(w2f, block_shape=bs)
    assert s13.shape == (2, 2, 2) and s2.shape == (2, 1, 3)
    ids = torch.ones(4, 1, dtype=torch.int32)
    weights = torch.full((4, 1), 0.5)
    out = fused_moe(
        x, w13, w2, weights, ids, quant="fp8_block", w13_scale=s13, w2_scale=s2, block_shape=bs
    )

    def fake_quant(v):
        q, s = fp8_quant(v, group_size=16)
        return q.float() * s.repeat_interleave(16, dim=-1)

    w13d, w2d = fp8_block_dequant(w13[1], s13[1], bs), fp8_block_dequant(w2[1], s2[1], bs)
    want = 0.5 * (fake_quant(silu_mul(fake_quant(x) @ w13d.T)) @ w2d.T)
    torch.testing.assert_close(out, want, rtol=1e-5, atol=1e-6)
    # The quantization matters: far from the unquantized result at this tolerance.
    assert not torch.allclose(out, 0.5 * (silu_mul(x @ w13f[1].T) @ w2f[1].T), rtol=1e-3)


def test_mxfp4_against_dequantize_then_matmul():
    x, w13f, w2f, weights, ids = make(t=4, h=64, n=32, e=2, k=2, dtype=torch.bfloat16)
    w13, s13 = mxfp4_quant(w13f)
    w2, s2 = mxfp4_quant(w2f)
    out = fused_moe(x, w13, w2, weights, ids, quant="mxfp4", w13_scale=s13, w2_scale=s2)
    assert out.dtype == torch.bfloat16
    w13d = mxfp4_dequant(w13, s13, dtype=torch.float32)
    w2d = mxfp4_dequant(w2, s2, dtype=torch.float32)
    torch.testing.assert_close(
        out.float(), direct(x, w13d, w2d, weights, ids), rtol=2**-8, atol=1e-5
    )


def test_empty_layer():
    x, w13, w2, _, _ = make()
    out = fused_moe(x[:0], w13, w2, torch.zeros(0, 2), torch.zeros(0, 2, dtype=torch.int32))
    assert out.shape == (0, 64) and out.dtype == torch.float32
    bs = (16, 16)
    q13, s13 = fp8_block_quant(w13, block_shape=bs)
    q2, s2 = fp8_block_quant(w2, block_shape=bs)
    out = fused_moe(
        x[:0].bfloat16(),
        q13,
        q2,
        torch.zeros(0, 1),
        torch.zeros(0, 1, dtype=torch.int32),
        quant="fp8_block",
        w13_scale=s13,
        w2_scale=s2,
        block_shape=bs,
    )
    assert out.shape == (0, 64) and out.dtype == torch.bfloat16


def test_inputs_unchanged():
    args = make()
    before = [a.clone() for a in args]
    fused_moe(*args, apply_router_weight_on_input=False)
    x, w13, w2, weights, ids = args
    fused_moe(x, w13, w2, weights[:, :1], ids[:, :1], apply_router_weight_on_input=True)
    assert all(torch.equal(a, b) for a, b in zip(args, before))


def _bad(name: str):
    x, w13, w2, weights, ids = make()
    kw = {}
    if name == "x_dtype":
        x = x.to(torch.int32)
    elif name == "w13_dtype":
        w13 = w13.bfloat16()
    elif name == "w13_shape":
        w13 = w13[:, :, :-1]
    elif name == "w13_odd":
        w13 = w13[:, :-1]
    elif name == "w2_shape":
        w2 = w2[:2]
    elif name == "weights_dtype":
        weights = weights.bfloat16()
    elif name == "ids_dtype":
        ids = ids.long()
    elif name == "ids_shape":
        ids = ids[:, :1]
    elif name == "ids_range":
        ids[0, 0] = 3
    elif name == "ids_below":
        ids[0, 0] = -2
    elif name == "on_input_k2":
        kw = dict(apply_router_weight_on_input=True)
    elif name == "quant":
        kw = dict(quant="int8")
    elif name == "scale_with_none":
        kw = dict(w13_scale=torch.ones(3, 1, 1))
    elif name == "layout":
        kw = dict(layout="split")
    elif name == "limit":
        kw = dict(swiglu_limit=-1.0)
    elif name == "fp8_weights_dtype":
        kw = dict(quant="fp8_block", block_shape=(16, 16))
    elif name == "fp8_group":
        w13, s13 = fp8_block_quant(w13, block_shape=(16, 48))
        w2, s2 = fp8_block_quant(w2, block_shape=(16, 48))
        kw = dict(quant="fp8_block", w13_scale=s13, w2_scale=s2, block_shape=(16, 48))
    elif name == "fp8_scale_shape":
        w13, s13 = fp8_block_quant(w13, block_shape=(16, 16))
        w2, s2 = fp8_block_quant(w2, block_shape=(16, 16))
        kw = dict(quant="fp8_block", w13_scale=s13[:, :1], w2_scale=s2, block_shape=(16, 16))
    elif name == "mxfp4_scale_dtype":
        w13, s13 = mxfp4_quant(w13)
        w2, s2 = mxfp4_quant(w2)
        kw = dict(quant="mxfp4", w13_scale=s13.float(), w2_scale=s2)
    elif name == "block_shape":
        kw = dict(block_shape=(16,))
    return (x, w13, w2, weights, ids), kw


@pytest.mark.parametrize(
    "case, exc, arg",
    [
        ("x_dtype", TypeError, "x"),
        ("w13_dtype", TypeError, "w13"),
        ("w13_shape", ValueError, "w13"),
        ("w13_odd", ValueError, "w13"),
        ("w2_shape", ValueError, "w2"),
        ("weights_dtype", TypeError, "topk_weights"),
        ("ids_dtype", TypeError, "topk_ids"),
        ("ids_shape", ValueError, "topk_ids"),
        ("ids_range", ValueError, "topk_ids"),
        ("ids_below", ValueError, "topk_ids"),
        ("on_input_k2", ValueError, "apply_router_weight_on_input"),
        ("quant", ValueError, "quant"),
        ("scale_with_none", ValueError, "w13_scale"),
        ("layout", ValueError, "layout"),
        ("limit", ValueError, "swiglu_limit"),
        ("fp8_weights_dtype", TypeError, "w13"),
        ("fp8_group", ValueError, "x"),
        ("fp8_scale_shape", ValueError, "w13_scale"),
        ("mxfp4_scale_dtype", TypeError, "w13_scale"),
        ("block_shape", ValueError, "block_shape"),
    ],
)
def test_validation(case, exc, arg):
    args, kw = _bad(case)
    with pytest.raises(exc, match=f"fused_moe: {arg}:"):
        fused_moe(*args, **kw)
