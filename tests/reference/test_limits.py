"""Known answers of the option limits (issue 9, section 6): every float option is finite, the
Sinkhorn iteration count and moe_align's sizes are bounded, each with a clear ValueError; and
every op exports the validator its fast paths call."""

import math

import pytest
import torch

import parity.reference as ref
from parity.reference.mhc import MAX_SINKHORN_ITERS
from parity.reference.routing import MAX_EXPERTS
from parity.registry import OP_NAMES

BF16 = torch.bfloat16
INF = math.inf


def test_every_op_exports_its_validator():
    missing = [op for op in OP_NAMES if not callable(getattr(ref, f"validate_{op}", None))]
    assert missing == []


def _mhc(t=2, hc=2, h=4):
    g = torch.Generator().manual_seed(0)
    m = hc * (2 + hc)
    return dict(
        x=torch.randn(t, h, generator=g).to(BF16),
        residual=torch.randn(t, hc, h, generator=g).to(BF16),
        post_mix=torch.rand(t, hc, 1, generator=g),
        comb_res_mix=torch.rand(t, hc, hc, generator=g),
        fn=torch.randn(m, hc * h, generator=g),
        hc_scale=torch.ones(3),
        hc_base=torch.zeros(m),
        head_fn=torch.randn(hc, hc * h, generator=g),
    )


def _calls():
    """(name, call(option value)) for every float option of the contract."""
    x = torch.ones(2, 256, dtype=BF16)
    logits = torch.randn(3, 8)
    bias = torch.zeros(8)
    m = _mhc()
    pre = (m["residual"], m["fn"], m["hc_scale"], m["hc_base"])
    fused = (m["x"], m["residual"], m["post_mix"], m["comb_res_mix"], *pre[1:])
    head = (m["residual"], m["head_fn"], torch.ones(1), torch.zeros(2))
    stack_x = torch.ones(2, 32, dtype=BF16)
    calls = {
        "swiglu limit": lambda v: ref.swiglu(x, limit=v),
        "swiglu alpha": lambda v: ref.swiglu(x, alpha=v),
        "swiglu beta": lambda v: ref.swiglu(x, beta=v),
        "fp8_quant eps": lambda v: ref.fp8_quant(x, eps=v),
        "silu_mul_fp8_quant limit": lambda v: ref.silu_mul_fp8_quant(x, limit=v),
        "route routed_scaling_factor": lambda v: ref.route(
            logits, k=2, method="dsv3", bias=bias, routed_scaling_factor=v
        ),
        "sinkhorn eps": lambda v: ref.sinkhorn(logits.view(2, 2, 6)[..., :2], eps=v),
        "mhc_pre rms_eps": lambda v: ref.mhc_pre(*pre, rms_eps=v),
        "mhc_pre pre_eps": lambda v: ref.mhc_pre(*pre, pre_eps=v),
        "mhc_pre sinkhorn_eps": lambda v: ref.mhc_pre(*pre, sinkhorn_eps=v),
        "mhc_pre post_mult": lambda v: ref.mhc_pre(*pre, post_mult=v),
        "mhc_fused_post_pre post_mult": lambda v: ref.mhc_fused_post_pre(*fused, post_mult=v),
        "mhc_head rms_eps": lambda v: ref.mhc_head(*head, rms_eps=v),
        "mhc_head hc_eps": lambda v: ref.mhc_head(*head, hc_eps=v),
        "fused_moe swiglu_alpha": lambda v: ref.validate_fused_moe(
            *_moe(), **dict(_MOE_KW, swiglu_alpha=v)
        ),
        "decoder_stack swiglu_limit": lambda v: ref.decoder_stack(
            stack_x, start_layer=0, end_layer=0, swiglu_limit=v
        ),
        "decoder_stack routed_scaling_factor": lambda v: ref.decoder_stack(
            stack_x, start_layer=0, end_layer=0, routed_scaling_factor=v
        ),
        "decoder_stack post_mult": lambda v: ref.decoder_stack(
            stack_x, start_layer=0, end_layer=0, post_mult=v
        ),
    }
    return calls


_MOE_KW = dict(
    quant="none",
    w13_scale=None,
    w2_scale=None,
    swiglu_limit=None,
    swiglu_alpha=1.0,
    swiglu_beta=0.0,
    layout="concat",
    swiglu_clamp_mode="pre",
    apply_router_weight_on_input=False,
    block_shape=(128, 128),
)


def _moe():
    x = torch.ones(2, 8, dtype=BF16)
    w13 = torch.ones(2, 4, 8, dtype=BF16)
    w2 = torch.ones(2, 8, 2, dtype=BF16)
    return x, w13, w2, torch.ones(2, 1), torch.zeros(2, 1, dtype=torch.int32)


@pytest.mark.parametrize("name", sorted(_calls()))
@pytest.mark.parametrize("value", [INF, -INF, 10**400])
def test_float_options_must_be_finite(name, value):
    op, arg = name.split(" ")
    with pytest.raises(ValueError, match=rf"^{op}: {arg}: expected a finite float, got"):
        _calls()[name](value)


@pytest.mark.parametrize("name", sorted(_calls()))
def test_float_options_reject_nan(name):
    op, arg = name.split(" ")
    with pytest.raises(ValueError, match=rf"^{op}: {arg}: expected a number, got nan"):
        _calls()[name](math.nan)


def test_sinkhorn_iters_bounded():
    logits = torch.zeros(1, 2, 2)
    ref.validate_sinkhorn(logits, iters=MAX_SINKHORN_ITERS)  # the bound itself is accepted
    with pytest.raises(ValueError, match=r"^sinkhorn: iters: expected an int in \[1, 65536\]"):
        ref.sinkhorn(logits, iters=MAX_SINKHORN_ITERS + 1)
    m = _mhc()
    pre = (m["residual"], m["fn"], m["hc_scale"], m["hc_base"])
    with pytest.raises(ValueError, match=r"^mhc_pre: sinkhorn_iters: expected an int in \[1,"):
        ref.mhc_pre(*pre, sinkhorn_iters=2**31)
    fused = (m["x"], m["residual"], m["post_mix"], m["comb_res_mix"], *pre[1:])
    with pytest.raises(ValueError, match=r"^mhc_fused_post_pre: sinkhorn_iters: expected an int"):
        ref.mhc_fused_post_pre(*fused, sinkhorn_iters=MAX_SINKHORN_ITERS + 1)
    with pytest.raises(ValueError, match=r"^decoder_stack: sinkhorn_iters: expected an int in"):
        ref.decoder_stack(
            torch.ones(1, 32, dtype=BF16),
            start_layer=0,
            end_layer=0,
            sinkhorn_iters=MAX_SINKHORN_ITERS + 1,
        )


def test_moe_align_num_experts_bounded():
    ids = torch.zeros(2, 2, dtype=torch.int32)
    ref.validate_moe_align(ids, num_experts=MAX_EXPERTS, block_size=1)  # accepted, no work
    with pytest.raises(
        ValueError, match=r"^moe_align: num_experts: expected an int in \[1, 1048576\]"
    ):
        ref.moe_align(ids, num_experts=MAX_EXPERTS + 1, block_size=1)


def test_moe_align_sizes_fit_int32():
    ids = torch.zeros(2, 2, dtype=torch.int32)  # T*k = 4
    # 4 + 2**20 * (2**11 - 1) < 2**31: accepted (validation only: no 8 GiB allocation)
    ref.validate_moe_align(ids, num_experts=MAX_EXPERTS, block_size=2**11)
    with pytest.raises(
        ValueError, match=r"^moe_align: num_experts, block_size: expected .*2\*\*31"
    ):
        ref.moe_align(ids, num_experts=MAX_EXPERTS, block_size=2**11 + 1)  # 2**31 + 4
    with pytest.raises(ValueError, match=r"^moe_align: block_size: expected an int in \[1, "):
        ref.moe_align(ids, num_experts=1, block_size=2**31)
