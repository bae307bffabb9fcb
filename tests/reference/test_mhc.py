"""Known-answer tests of the hyper-connection references (docs/ops.md, "Hyper-connections")."""

import math
from fractions import Fraction

import pytest
import torch

from parity.reference.common import precision
from parity.reference.mhc import (
    mhc_fused_post_pre,
    mhc_fused_post_pre_f32,
    mhc_head,
    mhc_post,
    mhc_pre,
    sinkhorn,
)

F32 = torch.float32


def sigmoid(v: float) -> float:
    return 1.0 / (1.0 + math.exp(-v))


def pre_inputs(t=3, hc=4, h=8, dtype=torch.bfloat16, seed=0):
    g = torch.Generator().manual_seed(seed)
    residual = torch.randn(t, hc, h, generator=g).to(dtype)
    fn = torch.randn(hc * (2 + hc), hc * h, generator=g) * (hc * h) ** -0.5
    hc_scale = torch.rand(3, generator=g) + 0.5
    hc_base = torch.randn(hc * (2 + hc), generator=g) * 0.5
    return residual, fn, hc_scale, hc_base


def post_inputs(t=3, hc=4, h=8, dtype=torch.bfloat16, seed=1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(t, h, generator=g).to(dtype)
    residual = torch.randn(t, hc, h, generator=g).to(dtype)
    post_mix = torch.rand(t, hc, 1, generator=g) * 2
    comb = sinkhorn(torch.randn(t, hc, hc, generator=g) * 2)
    return x, residual, post_mix, comb


def head_inputs(t=3, hc=4, h=8, dtype=torch.bfloat16, seed=2):
    g = torch.Generator().manual_seed(seed)
    residual = torch.randn(t, hc, h, generator=g).to(dtype)
    fn = torch.randn(hc, hc * h, generator=g) * (hc * h) ** -0.5
    return residual, fn, torch.tensor([0.7]), torch.randn(hc, generator=g) * 0.5


# --- sinkhorn ---------------------------------------------------------------------------------


def test_sinkhorn_2x2_by_hand():
    # logits rows [0, ln 3] and [0, 0]: softmax rows [1/4, 3/4] and [1/2, 1/2]. eps = 1/4 makes
    # every eps visible and keeps the arithmetic in small fractions.
    logits = torch.tensor([[[0.0, math.log(3.0)], [0.0, 0.0]]])
    q = Fraction(1, 4)
    # + eps: [[1/2, 1], [3/4, 3/4]]; column sums + eps: 3/2, 2 -> iters=1 result:
    one = [[Fraction(1, 3), Fraction(1, 2)], [Fraction(1, 2), Fraction(3, 8)]]
    # iters=2, rows: sums + eps 13/12, 9/8 -> [[4/13, 6/13], [4/9, 1/3]];
    # columns: sums + eps 469/468, 163/156 -> [[144/469, 72/163], [208/469, 52/163]].
    two = [[Fraction(144, 469), Fraction(72, 163)], [Fraction(208, 469), Fraction(52, 163)]]
    for iters, want in ((1, one), (2, two)):
        got = sinkhorn(logits, iters=iters, eps=float(q))[0]
        assert got.dtype == F32
        for i in range(2):
            for j in range(2):
                assert math.isclose(got[i, j].item(), float(want[i][j]), rel_tol=1e-6)


def test_sinkhorn_columns_sum_to_one_rows_nearly():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(5, 4, 4, generator=g) * 3
    p = sinkhorn(logits, iters=20, eps=1e-6)
    assert (p > 0).all()
    assert torch.allclose(p.sum(-2), torch.ones(5, 4), atol=1e-5)  # ends on a column step
    # Rows only approximately, closer with more iterations.
    assert (p.sum(-1) - 1).abs().max() < 0.05
    assert (sinkhorn(logits, iters=200).sum(-1) - 1).abs().max() < 1e-3


def test_sinkhorn_float64_oracle_mode():
    logits = torch.randn(2, 3, 3)
    with precision("float64", round_output=False):
        p64 = sinkhorn(logits)
    with precision("float64"):
        p64r = sinkhorn(logits)
    assert p64.dtype == torch.float64 and p64r.dtype == F32
    assert torch.equal(p64.to(F32), p64r)
    assert torch.allclose(p64.to(F32), sinkhorn(logits), atol=1e-6)


# --- mhc_post ---------------------------------------------------------------------------------


def test_mhc_post_index_convention_old_i_new_j():
    # One-hot streams residual[:, i] = e_i and x = 0: new[:, j, i] = comb[i, j], i.e. new = comb.T.
    hc = 3
    comb = torch.tensor([[0.5, 0.25, 0.125], [0.0, 0.75, 0.0], [0.5, 0.0, 0.875]]).unsqueeze(0)
    assert not torch.equal(comb, comb.mT)
    residual = torch.eye(hc).unsqueeze(0).bfloat16()
    x = torch.zeros(1, hc).bfloat16()
    new = mhc_post(x, residual, torch.ones(1, hc, 1), comb)
    assert new.dtype == torch.bfloat16 and new.shape == (1, hc, hc)
    assert torch.equal(new[0].float(), comb[0].T)
    # And the x * post_mix term lands on new stream j with post_mix[:, j].
    post = torch.tensor([[[1.0], [2.0], [4.0]]])
    new = mhc_post(torch.full((1, hc), 0.5).bfloat16(), residual, post, comb)
    assert torch.equal(new[0].float(), comb[0].T + 0.5 * post[0])


def test_mhc_post_by_hand_and_post_mix_shapes():
    x, residual, post_mix, comb = post_inputs(t=2, hc=2, h=3, dtype=F32)
    new = mhc_post(x, residual, post_mix, comb)
    for t in range(2):
        for j in range(2):
            for h in range(3):
                want = x[t, h].item() * post_mix[t, j, 0].item() + sum(
                    comb[t, i, j].item() * residual[t, i, h].item() for i in range(2)
                )
                assert math.isclose(new[t, j, h].item(), want, rel_tol=1e-5, abs_tol=1e-6)
    assert torch.equal(new, mhc_post(x, residual, post_mix.squeeze(-1), comb))


def test_mhc_post_rounds_to_residual_dtype():
    x, residual, post_mix, comb = post_inputs(dtype=torch.bfloat16)
    new = mhc_post(x.float(), residual, post_mix, comb)  # x may differ from residual.dtype
    assert new.dtype == torch.bfloat16
    with precision("float64", round_output=False):
        exact = mhc_post(x.float(), residual, post_mix, comb)
    assert exact.dtype == torch.float64
    assert torch.equal(exact.to(torch.bfloat16), new)


# --- mhc_pre ----------------------------------------------------------------------------------


def test_mhc_pre_by_hand_hc2():
    hc, h = 2, 3
    residual, fn, hc_scale, hc_base = pre_inputs(t=2, hc=hc, h=h, dtype=F32)
    kw = dict(rms_eps=1e-6, pre_eps=0.01, sinkhorn_eps=1e-6, post_mult=2.0, sinkhorn_iters=3)
    post, comb, layer_input = mhc_pre(residual, fn, hc_scale, hc_base, **kw)
    assert post.shape == (2, hc, 1) and comb.shape == (2, hc, hc) and layer_input.shape == (2, h)
    assert post.dtype == comb.dtype == F32 and layer_input.dtype == F32

    for t in range(2):
        r = residual[t].flatten().tolist()
        inv_rms = 1.0 / math.sqrt(sum(v * v for v in r) / len(r) + 1e-6)
        s = [hc_scale[0].item()] * hc + [hc_scale[1].item()] * hc + [hc_scale[2].item()] * hc * hc
        mixes = [
            sum(a * b for a, b in zip(r, fn[m].tolist())) * inv_rms * s[m] + hc_base[m].item()
            for m in range(hc * (2 + hc))
        ]
        pre = [sigmoid(mixes[i]) + 0.01 for i in range(hc)]
        for j in range(hc):
            assert math.isclose(post[t, j, 0].item(), 2 * sigmoid(mixes[hc + j]), rel_tol=1e-5)
        want = sinkhorn(torch.tensor(mixes[2 * hc :]).view(1, hc, hc), iters=3, eps=1e-6)[0]
        assert torch.allclose(comb[t], want, rtol=1e-5, atol=1e-6)
        for k in range(h):
            li = sum(pre[i] * residual[t, i, k].item() for i in range(hc))
            assert math.isclose(layer_input[t, k].item(), li, rel_tol=1e-5, abs_tol=1e-6)


def test_mhc_pre_bf16_rounds_once():
    residual, fn, hc_scale, hc_base = pre_inputs(dtype=torch.bfloat16)
    post, comb, li = mhc_pre(residual, fn, hc_scale, hc_base, post_mult=2.0)
    assert li.dtype == torch.bfloat16 and post.dtype == F32
    with precision("float64", round_output=False):
        post64, comb64, li64 = mhc_pre(residual, fn, hc_scale, hc_base, post_mult=2.0)
    assert li64.dtype == post64.dtype == torch.float64
    assert torch.allclose(li64.to(torch.bfloat16).float(), li.float(), atol=0.02)
    assert torch.allclose(post64.float(), post, atol=1e-5)
    assert torch.allclose(comb64.float(), comb, atol=1e-5)
    assert torch.allclose(comb.sum(-2), torch.ones(3, 4), atol=1e-5)


# --- mhc_fused_post_pre -------------------------------------------------------------------------


def test_fused_post_pre_equals_post_then_pre():
    x, residual, post_mix, comb = post_inputs()
    _, fn, hc_scale, hc_base = pre_inputs(seed=5)
    kw = dict(post_mult=2.0, sinkhorn_iters=10)
    new = mhc_post(x, residual, post_mix, comb)
    want = (new, *mhc_pre(new, fn, hc_scale, hc_base, **kw))
    got = mhc_fused_post_pre(x, residual, post_mix, comb, fn, hc_scale, hc_base, **kw)
    for a, b in zip(got, want):
        assert a.dtype == b.dtype and torch.equal(a, b)
    # The float32-intermediate variant: same new_residual, pre outputs within bf16 rounding.
    f32 = mhc_fused_post_pre_f32(
        x, residual, post_mix.squeeze(-1), comb, fn, hc_scale, hc_base, **kw
    )
    assert torch.equal(f32[0], want[0])
    assert torch.allclose(f32[1], want[1], atol=1e-2) and torch.allclose(f32[2], want[2], atol=1e-2)
    assert torch.allclose(f32[3].float(), want[3].float(), atol=0.1)


# --- mhc_head ---------------------------------------------------------------------------------


def test_mhc_head_by_hand():
    hc, h = 2, 3
    residual, fn, hc_scale, hc_base = head_inputs(t=2, hc=hc, h=h, dtype=F32)
    out = mhc_head(residual, fn, hc_scale, hc_base, rms_eps=1e-6, hc_eps=0.01)
    assert out.shape == (2, h) and out.dtype == F32
    for t in range(2):
        r = residual[t].flatten().tolist()
        inv_rms = 1.0 / math.sqrt(sum(v * v for v in r) / len(r) + 1e-6)
        pre = [
            sigmoid(
                sum(a * inv_rms * b for a, b in zip(r, fn[i].tolist())) * hc_scale.item()
                + hc_base[i].item()
            )
            + 0.01
            for i in range(hc)
        ]
        for k in range(h):
            want = sum(pre[i] * residual[t, i, k].item() for i in range(hc))
            assert math.isclose(out[t, k].item(), want, rel_tol=1e-5, abs_tol=1e-6)
    assert mhc_head(residual.bfloat16(), fn, hc_scale, hc_base).dtype == torch.bfloat16


# --- T = 0, inputs unchanged, NaN locality ----------------------------------------------------


def test_zero_tokens_everywhere():
    residual, fn, hc_scale, hc_base = pre_inputs(t=0)
    post, comb, li = mhc_pre(residual, fn, hc_scale, hc_base)
    assert post.shape == (0, 4, 1) and comb.shape == (0, 4, 4) and li.shape == (0, 8)
    assert li.dtype == torch.bfloat16
    x, residual, post_mix, comb = post_inputs(t=0)
    assert mhc_post(x, residual, post_mix, comb).shape == (0, 4, 8)
    outs = mhc_fused_post_pre(x, residual, post_mix, comb, fn, hc_scale, hc_base)
    assert [tuple(o.shape) for o in outs] == [(0, 4, 8), (0, 4, 1), (0, 4, 4), (0, 8)]
    assert mhc_head(*head_inputs(t=0)).shape == (0, 8)
    assert sinkhorn(torch.zeros(0, 4, 4)).shape == (0, 4, 4)


def test_inputs_unchanged_and_nan_stays_in_its_token():
    residual, fn, hc_scale, hc_base = pre_inputs(dtype=F32)
    x, _, post_mix, comb = post_inputs(dtype=F32)
    residual[1, 2, 3] = float("nan")
    args = (x, residual, post_mix, comb, fn, hc_scale, hc_base)
    before = [a.clone() for a in args]
    outs = mhc_fused_post_pre(*args)
    mhc_head(residual, fn[:4], hc_scale[:1], hc_base[:4])
    for a, b in zip(args, before):
        torch.testing.assert_close(a, b, rtol=0, atol=0, equal_nan=True)
    for o in outs:
        assert o[1].isnan().any() and not o[0].isnan().any() and not o[2].isnan().any()


# --- validation -------------------------------------------------------------------------------


def test_validation_errors_name_the_argument():
    residual, fn, hc_scale, hc_base = pre_inputs()
    x, _, post_mix, comb = post_inputs()
    fused, weights, head_weights = mhc_fused_post_pre, (fn, hc_scale, hc_base), head_inputs()[1:]
    bad = [
        (TypeError, "logits", lambda: sinkhorn(torch.zeros(2, 2, dtype=torch.bfloat16))),
        (ValueError, "logits", lambda: sinkhorn(torch.zeros(2, 3))),
        (ValueError, "iters", lambda: sinkhorn(torch.zeros(2, 2), iters=0)),
        (TypeError, "iters", lambda: sinkhorn(torch.zeros(2, 2), iters=2.0)),
        (ValueError, "eps", lambda: sinkhorn(torch.zeros(2, 2), eps=0.0)),
        (ValueError, "residual", lambda: mhc_pre(residual[0], fn, hc_scale, hc_base)),
        (TypeError, "residual", lambda: mhc_pre(residual.int(), fn, hc_scale, hc_base)),
        (ValueError, "fn", lambda: mhc_pre(residual, fn[:, :-1], hc_scale, hc_base)),
        (TypeError, "fn", lambda: mhc_pre(residual, fn.bfloat16(), hc_scale, hc_base)),
        (ValueError, "hc_scale", lambda: mhc_pre(residual, fn, hc_scale[:2], hc_base)),
        (ValueError, "hc_base", lambda: mhc_pre(residual, fn, hc_scale, hc_base[:-1])),
        (ValueError, "rms_eps", lambda: mhc_pre(residual, fn, hc_scale, hc_base, rms_eps=0)),
        (ValueError, "pre_eps", lambda: mhc_pre(residual, fn, hc_scale, hc_base, pre_eps=-1)),
        (ValueError, "sinkhorn_iters", lambda: mhc_pre(*pre_inputs(), sinkhorn_iters=0)),
        (ValueError, "post_mult", lambda: mhc_pre(*pre_inputs(), post_mult=float("inf"))),
        (ValueError, "x", lambda: mhc_post(x[:, :-1], residual, post_mix, comb)),
        (ValueError, "post_mix", lambda: mhc_post(x, residual, post_mix[:, :2], comb)),
        (TypeError, "post_mix", lambda: mhc_post(x, residual, post_mix.double(), comb)),
        (TypeError, "comb_res_mix", lambda: mhc_post(x, residual, post_mix, comb.bfloat16())),
        (ValueError, "comb_res_mix", lambda: mhc_post(x, residual, post_mix, comb[:, :, :2])),
        (ValueError, "fn", lambda: fused(x, residual, post_mix, comb, fn[1:], hc_scale, hc_base)),
        (ValueError, "comb_res_mix", lambda: fused(x, residual, post_mix, comb[:2], *weights)),
        (ValueError, "fn", lambda: mhc_head(residual, fn, hc_scale[:1], hc_base[:4])),
        (ValueError, "hc_scale", lambda: mhc_head(residual, fn[:4], hc_scale, hc_base[:4])),
        (ValueError, "hc_eps", lambda: mhc_head(residual, *head_weights, hc_eps=-1.0)),
    ]  # fmt: skip
    for kind, name, call in bad:
        with pytest.raises(kind, match=rf": {name}: expected"):
            call()


def test_device_mismatch():
    # The meta device stands in for a second device: the check runs before any work.
    residual, fn, hc_scale, hc_base = pre_inputs()
    with pytest.raises(ValueError, match="hc_base: expected device"):
        mhc_pre(residual, fn, hc_scale, hc_base.to("meta"))
    x, residual, post_mix, comb = post_inputs()
    with pytest.raises(ValueError, match="comb_res_mix: expected device"):
        mhc_post(x, residual, post_mix, comb.to("meta"))
