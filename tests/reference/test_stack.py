"""Known-answer tests of the reference decoder stack (docs/ops.md, "decoder_stack")."""

import pytest
import torch

from parity.reference.common import precision
from parity.reference.mhc import mhc_head, mhc_post, mhc_pre
from parity.reference.moe import fused_moe
from parity.reference.routing import route
from parity.reference.stack import (
    FUSED_REFERENCE_OPS,
    REFERENCE_OPS,
    OpCall,
    StackConfig,
    decoder_stack,
    rms_norm,
    stack_weights,
)

H = 128


def inputs(t=6, dtype=torch.bfloat16, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(t, H, generator=g).to(dtype)


def streams(x, hc=4):
    return x.unsqueeze(1).expand(x.shape[0], hc, x.shape[1]).contiguous()


def head(x_streams, w):
    return mhc_head(x_streams, w.head_fn, w.head_scale, w.head_base)


def test_empty_range_is_the_head_of_the_copied_streams():
    x = inputs()
    w = stack_weights(StackConfig(hidden=H, dtype=x.dtype), 0, "cpu")
    want = head(streams(x), w)
    assert "mhc_fused_post_pre" not in REFERENCE_OPS and "mhc_fused_post_pre" in FUSED_REFERENCE_OPS
    for start in (0, 2, 4):
        for ops in (None, FUSED_REFERENCE_OPS):  # the fused path must not need a previous layer
            capture = []
            got = decoder_stack(x, start_layer=start, end_layer=start, ops=ops, capture=capture)
            assert torch.equal(got, want)
            assert [(c.name, c.layer) for c in capture] == [("mhc_head", None)]


def test_single_layer_by_hand():
    x = inputs(dtype=torch.float16)
    cfg = StackConfig(hidden=H, dtype=x.dtype)
    lw = stack_weights(cfg, 3, "cpu").layers[1]
    post_mix, comb, li = mhc_pre(
        streams(x), lw.hc_fn, lw.hc_scale, lw.hc_base, post_mult=2.0, sinkhorn_iters=20
    )
    normed = rms_norm(li, lw.norm, eps=1e-6)
    assert normed.dtype == torch.float16 and lw.norm.dtype == torch.float16
    logits = normed.float() @ lw.router_w.T
    tw, ids = route(
        logits, k=2, method="dsv3", bias=lw.router_bias, n_group=2, topk_group=1,
        routed_scaling_factor=2.5,
    )  # fmt: skip
    assert ((ids // 4) == ids[:, :1] // 4).all()  # topk_group=1: both experts in one group
    out = fused_moe(normed, lw.w13, lw.w2, tw, ids, swiglu_limit=10.0)
    new = mhc_post(out, streams(x), post_mix, comb)
    want = head(new, stack_weights(cfg, 3, "cpu"))
    got = decoder_stack(x, start_layer=1, end_layer=2, seed=3)
    assert got.dtype == torch.float16 and got.shape == x.shape
    assert torch.equal(got, want)


def test_fused_table_equals_unfused():
    x = inputs()
    for quant, n in (("none", 64), ("mxfp4", 64)):
        a = decoder_stack(x, start_layer=0, end_layer=4, quant=quant, intermediate=n)
        b = decoder_stack(
            x, start_layer=0, end_layer=4, quant=quant, intermediate=n, ops=FUSED_REFERENCE_OPS
        )
        assert torch.equal(a, b)  # the fused reference rounds new_residual like the chain


def test_capture_records_every_call_with_its_layer():
    x = inputs()
    unfused, fused = [], []
    decoder_stack(x, start_layer=1, end_layer=4, capture=unfused)
    out = decoder_stack(x, start_layer=1, end_layer=4, ops=FUSED_REFERENCE_OPS, capture=fused)

    body = ["rms_norm", "route", "fused_moe"]
    want = [("mhc_pre", 1)] + [(n, 1) for n in body]
    for i in (2, 3):
        want += [("mhc_post", i - 1), ("mhc_pre", i)] + [(n, i) for n in body]
    want += [("mhc_post", 3), ("mhc_head", None)]
    assert [(c.name, c.layer) for c in unfused] == want

    want_fused = [("mhc_pre", 1)] + [(n, 1) for n in body]
    for i in (2, 3):
        want_fused += [("mhc_fused_post_pre", i)] + [(n, i) for n in body]
    want_fused += [("mhc_post", 3), ("mhc_head", None)]
    assert [(c.name, c.layer) for c in fused] == want_fused

    # Each record re-runs to its own outputs, and the last one is the stack's output.
    for c in fused:
        assert isinstance(c, OpCall)
        again = c.rerun(FUSED_REFERENCE_OPS[c.name])
        got = again if isinstance(again, tuple) else (again,)
        rec = c.outputs if isinstance(c.outputs, tuple) else (c.outputs,)
        assert all(torch.equal(a, b) for a, b in zip(got, rec))
    assert torch.equal(fused[-1].outputs, out)
    assert fused[2].options["method"] == "dsv3" and fused[2].options["k"] == 2


def test_ops_table_is_used_and_falls_back():
    x = inputs()
    calls = []

    def zero_moe(x, *args, **kwargs):
        calls.append(kwargs["quant"])
        return torch.zeros_like(x)

    got = decoder_stack(x, start_layer=0, end_layer=2, ops={"fused_moe": zero_moe})
    assert calls == ["none", "none"]
    assert not torch.equal(got, decoder_stack(x, start_layer=0, end_layer=2))
    # With the sublayer output zeroed, one layer only mixes the streams: new = comb-mixed old.
    w = stack_weights(StackConfig(hidden=H, dtype=x.dtype), 0, "cpu")
    lw = w.layers[0]
    post_mix, comb, _ = mhc_pre(streams(x), lw.hc_fn, lw.hc_scale, lw.hc_base, post_mult=2.0)
    new = mhc_post(torch.zeros_like(x), streams(x), post_mix, comb)
    one = decoder_stack(x, start_layer=0, end_layer=1, ops={"fused_moe": zero_moe})
    assert torch.equal(one, head(new, w))


def test_deterministic_from_seed_and_independent_of_depth():
    x = inputs()
    a = decoder_stack(x, start_layer=0, end_layer=2, seed=7)
    assert torch.equal(a, decoder_stack(x, start_layer=0, end_layer=2, seed=7))
    assert not torch.equal(a, decoder_stack(x, start_layer=0, end_layer=2, seed=8))
    # One generator per layer: a shallower stack is a prefix of a deeper one.
    assert torch.equal(a, decoder_stack(x, start_layer=0, end_layer=2, seed=7, num_layers=2))
    w1 = stack_weights(StackConfig(hidden=H, dtype=x.dtype), 7, "cpu")
    w2 = stack_weights(StackConfig(hidden=H, dtype=x.dtype), 7, torch.device("cpu"))
    assert w1 is w2  # cached


def test_all_quant_modes_run():
    x = inputs(t=5)
    for quant, n in (("none", 64), ("fp8_block", 128), ("mxfp4", 64)):
        capture = []
        kw = dict(quant=quant, intermediate=n, capture=capture)
        y = decoder_stack(x, start_layer=0, end_layer=2, **kw)
        assert y.shape == x.shape and y.dtype == x.dtype and y.isfinite().all()
        moe = next(c for c in capture if c.name == "fused_moe")
        assert moe.options["quant"] == quant
        w13 = moe.inputs[1]
        want = {"none": x.dtype, "fp8_block": torch.float8_e4m3fn, "mxfp4": torch.uint8}[quant]
        assert w13.dtype == want


def test_zero_tokens_float32_and_input_unchanged():
    x = inputs(t=0)
    for ops in (None, FUSED_REFERENCE_OPS):
        y = decoder_stack(x, start_layer=0, end_layer=3, ops=ops)
        assert y.shape == (0, H) and y.dtype == torch.bfloat16
    x = inputs(dtype=torch.float32)
    before = x.clone()
    y = decoder_stack(x, start_layer=0, end_layer=4, ops=FUSED_REFERENCE_OPS)
    assert torch.equal(x, before) and y.dtype == torch.float32


def test_float64_oracle_mode_rounds_all_but_the_head():
    x = inputs()
    y = decoder_stack(x, start_layer=0, end_layer=2)
    with precision("float64", round_output=False):
        y64 = decoder_stack(x, start_layer=0, end_layer=2)
    assert y64.dtype == torch.float64
    assert ((y64 - y.double()).norm() / y64.norm()) < 0.02


def test_validation_errors_name_the_argument():
    x = inputs()
    bad = [
        (ValueError, "end_layer", dict(start_layer=2, end_layer=1)),
        (ValueError, "end_layer", dict(start_layer=0, end_layer=5)),
        (ValueError, "start_layer", dict(start_layer=-1, end_layer=1)),
        (TypeError, "start_layer", dict(start_layer=0.0, end_layer=1)),
        (ValueError, "ops", dict(start_layer=0, end_layer=1, ops={"attention": route})),
        (TypeError, "ops", dict(start_layer=0, end_layer=1, ops={"route": 3})),
        (ValueError, "intermediate", dict(start_layer=0, end_layer=1, quant="fp8_block")),
        (ValueError, "quant", dict(start_layer=0, end_layer=1, quant="int4")),
        (ValueError, "top_k", dict(start_layer=0, end_layer=1, top_k=5)),
        (ValueError, "n_group", dict(start_layer=0, end_layer=1, n_group=3)),
        (ValueError, "sinkhorn_iters", dict(start_layer=0, end_layer=1, sinkhorn_iters=0)),
        (TypeError, "capture", dict(start_layer=0, end_layer=1, capture=())),
    ]
    for kind, name, kwargs in bad:
        with pytest.raises(kind, match=rf"decoder_stack: {name}"):
            decoder_stack(x, **kwargs)
    with pytest.raises(ValueError, match="decoder_stack: x"):
        decoder_stack(torch.zeros(2, 48), start_layer=0, end_layer=1, quant="mxfp4")
    with pytest.raises(ValueError, match="decoder_stack: x"):
        decoder_stack(x[:, :64], start_layer=0, end_layer=1, quant="fp8_block", intermediate=128)
    with pytest.raises(TypeError, match="decoder_stack: x"):
        decoder_stack(x.double(), start_layer=0, end_layer=1)
