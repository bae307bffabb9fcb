"""Compile keys (issue 11, section 4): on a GPU every launch whose key is new compiles a kernel,
and the property suites ran compile-bound there (fp8_quant: ~230 keys in 900 examples, 10
examples a second). The element-wise kernels now take one key whatever the token count: the
counts are not specialised and the tiles do not shrink for few rows. These tests hold that, with
the key computed as triton computes it (`parity.optimized.triton._compile_keys`), and show the
check catches a tile choice that follows the rows (the old one).

The keys are recorded in the Triton interpreter (CPU tensors); on a CUDA machine the launches
bypass it, so the tests there are NOT RUN (the key model does not depend on the device).
"""

import contextlib
import os

import pytest
import torch

pytest.importorskip("triton")

from parity.catalog import get_impl
from parity.optimized.triton import _kernels_swiglu
from parity.optimized.triton._compile_keys import record

pytestmark = pytest.mark.skipif(
    os.environ.get("TRITON_INTERPRET") != "1",
    reason="NOT RUN: keys are recorded in the Triton interpreter (CPU)",
)

TOKENS = (1, 2, 3, 5, 8, 16, 17, 33, 100, 1000)


def _x(t, k, dtype=torch.bfloat16):
    return torch.randn(t, k, generator=torch.Generator().manual_seed(t)).to(dtype)


def _calls(op):
    """(args, kwargs) of one call of `op` at each token count, the other sizes fixed."""
    if op == "swiglu":
        return [((_x(t, 512),), {"limit": 7.0}) for t in TOKENS]
    if op in ("fp8_quant", "fp8_block_quant", "mxfp4_quant"):
        return [((_x(t, 256),), {}) for t in TOKENS]
    if op == "silu_mul_fp8_quant":
        return [((_x(t, 512),), {}) for t in TOKENS]
    if op == "mxfp4_dequant":
        return [
            (
                (
                    torch.randint(0, 256, (t, 128), dtype=torch.uint8),
                    torch.randint(100, 140, (t, 8), dtype=torch.uint8),
                ),
                {},
            )
            for t in TOKENS
        ]
    if op == "moe_align":
        return [
            (
                (torch.randint(0, 16, (t, 4), dtype=torch.int32),),
                {"num_experts": 16, "block_size": 16},
            )
            for t in TOKENS
        ]
    raise AssertionError(op)


def _keys(op):
    fn = get_impl(op, "triton").fn
    with record(skip_run=True) as keys:  # the keys only: launches are not run
        for args, kwargs in _calls(op):
            fn(*args, **kwargs)
    return {name: keys.distinct(name) for name in keys.launches}


@pytest.mark.parametrize(
    "op",
    [
        "swiglu",
        "fp8_quant",
        "silu_mul_fp8_quant",
        "mxfp4_dequant",
        "fp8_block_quant",
        "mxfp4_quant",
        "moe_align",
    ],
)
def test_one_compile_key_whatever_the_token_count(op):
    keys = _keys(op)
    assert keys, f"{op}: no launch recorded"
    assert all(n == 1 for n in keys.values()), f"{op}: compile keys by kernel {keys}"


def test_the_check_catches_tiles_that_follow_the_rows(monkeypatch):
    """Witness: swiglu's former tile choice (BLOCK_R shrunk to the rows) gives a key per power
    of two of the rows, and the check above sees it."""

    def old_blocks(rows, cols, target):
        block_n = min(1 << (max(cols, 1) - 1).bit_length(), 1024)
        block_r = max(1, min(1 << (max(rows, 1) - 1).bit_length(), target // block_n))
        return block_r, block_n, 4 if block_r * block_n <= 2048 else 8

    from parity.optimized.triton import swiglu

    monkeypatch.setattr(_kernels_swiglu, "_blocks", old_blocks)
    monkeypatch.setattr(swiglu, "_PLANS", {})
    keys = _keys("swiglu")
    assert keys["_kernels_swiglu._swiglu_kernel"] > 1


def test_the_key_counts_an_int_specialisation():
    """The recorder keys an int as triton does: 1, a multiple of 16 and others apart, unless the
    kernel declares it unspecialised (swiglu's R is, its N is not)."""
    fn = get_impl("swiglu", "triton").fn
    with record(skip_run=True) as keys:
        for n in (1, 16, 17):
            fn(_x(4, 2 * n))
    assert keys.distinct("_kernels_swiglu._swiglu_kernel") == 3


def _moe_keys(monkeypatch, path, quant):
    """Compile keys of fused_moe's element-wise kernels over k in 1..8 and the limit on and off
    (T 2, H 96, N 64, E 4): on the decode path or the sorted one."""
    monkeypatch.setenv("PARITY_MOE_DECODE", "1" if path == "decode" else "0")
    fn = get_impl("fused_moe", "triton").fn
    g = torch.Generator().manual_seed(0)
    t, h, n, e = 2, 96, 64, 4
    x = torch.randn(t, h, generator=g).to(torch.bfloat16)
    w13 = (torch.randn(e, 2 * n, h, generator=g) / 8).to(torch.bfloat16)
    w2 = (torch.randn(e, h, n, generator=g) / 8).to(torch.bfloat16)
    kw = {}
    if quant == "fp8_block":
        w13, w2 = w13.to(torch.float8_e4m3fn), w2.to(torch.float8_e4m3fn)
        kw = dict(
            w13_scale=torch.ones(e, 2 * n // 32, h // 32),
            w2_scale=torch.ones(e, h // 32, n // 32),
            block_shape=(32, 32),
        )
    with record() as keys:
        for k in (1, 2, 3, 5, 8):
            for limit in (None, 7.0):
                ids = torch.arange(t * k, dtype=torch.int32).reshape(t, k) % e
                w = torch.rand(t, k, generator=g)
                fn(x, w13, w2, w, ids, quant=quant, swiglu_limit=limit, **kw)
    return {name: keys.distinct(name) for name in keys.launches}


@pytest.mark.parametrize("quant", ["none", "fp8_block"])
@pytest.mark.parametrize("path", ["decode", "sorted"])
def test_fused_moe_elementwise_kernels_one_key_whatever_k_and_limit(monkeypatch, path, quant):
    """k is a run-time int under an unrolled bound of 8 and no limit is limit = +inf, so the
    activation and k-sum kernels compile once for k = 1..8 with and without a limit (the two
    k-sums made 32 and 24 keys, the sorted activation 80, of fused_moe's 283 in 300 GPU-size
    draws before: docs/gpu-results.md)."""
    keys = _moe_keys(monkeypatch, path, quant)
    small = {
        "decode": ("_kernels_moe_decode._act_kernel", "_kernels_moe_decode._out_kernel"),
        "sorted": ("_kernels_fused_moe._reduce_k_kernel",),
    }[path]
    for name in small:
        assert keys.get(name) == 1, f"{path} {quant}: compile keys by kernel {keys}"
    if path == "sorted":  # SwiGLU (and fp8: x's quantization, a second key)
        want = 2 if quant == "fp8_block" else 1
        assert keys["_kernels_fused_moe._act_quant_kernel"] == want, keys


def test_plan_as_gpu_keys_the_gpu_plan():
    """`plan_as_gpu()` (scripts/compile_keys.py --draw/--bench): fused_moe plans as on a GPU (the
    dot operands not upcast, the k-sum's 1024-column tile) while its launches still go to the
    interpreter's recorder; outside it, the interpreter's own plan (upcast, the whole row)."""
    from parity.optimized.triton._launch import interpret, plan_as_gpu

    fn = get_impl("fused_moe", "triton").fn
    g = torch.Generator().manual_seed(0)
    t, h, n, e, k = 2, 2048, 64, 4, 2
    x = torch.randn(t, h, generator=g).to(torch.bfloat16)
    w13 = torch.randn(e, 2 * n, h, generator=g).to(torch.bfloat16)
    w2 = torch.randn(e, h, n, generator=g).to(torch.bfloat16)
    ids = torch.tensor([[0, 1], [2, 3]], dtype=torch.int32)
    w = torch.ones(t, k)

    def consts(as_gpu):
        with record(skip_run=True) as keys:
            with plan_as_gpu() if as_gpu else contextlib.nullcontext():
                assert interpret() is not as_gpu
                fn(x, w13, w2, w, ids, quant="none")
        out = {}
        for name, counter in keys.launches.items():
            for parts, _ in counter:
                out.setdefault(name, []).append(parts)
        return keys, out

    gpu, gparts = consts(True)
    cpu, cparts = consts(False)
    assert interpret()  # restored
    assert gparts.keys() == cparts.keys()  # the same kernels, planned apart

    def block_h(keys, parts):
        name = "_kernels_moe_decode._out_kernel"
        i = keys.params[name].index("BLOCK_H")
        return {tuple(p[i]) for p in parts[name]}

    assert block_h(gpu, gparts) == {("c", 1024)}  # a GPU's tile
    assert block_h(cpu, cparts) == {("c", 2048)}  # the interpreter's: the whole row


def test_route_one_key_whatever_the_group_counts():
    """route takes E and n_group as run-time ints: two (n_group, E) with the same padded tile
    (8 x 32: 8 x 32 and 6 x 32 experts; E a multiple of 16 both) compile once for a k and
    topk_group. k, topk_group, the method and renormalize stay constexprs: as run-time ints
    they cost 10-15% of the kernel's time on the H100 (2026-12-06), one key each here."""
    fn = get_impl("route", "triton").fn
    g = torch.Generator().manual_seed(0)
    with record(skip_run=True) as keys:
        for n_group, e in ((8, 256), (6, 192)):
            logits = torch.randn(3, e, generator=g)
            bias = torch.randn(e, generator=g)
            fn(logits, k=8, method="dsv3", bias=bias, n_group=n_group, topk_group=4)
    assert keys.distinct("_kernels_route._route_kernel") == 1, keys.launches
    with record(skip_run=True) as keys:
        for k in (6, 8):
            fn(logits, k=k, method="dsv3", bias=bias, n_group=6, topk_group=4)
    assert keys.distinct("_kernels_route._route_kernel") == 2, keys.launches


def test_route_small_expert_counts_share_a_warp_wide_tile():
    """A token's padded experts fill at least a warp's 32 lanes: E 4..32 in one group share
    one tile shape (GS_PAD 32); a group of one expert keeps GS_PAD 1 (its score has no second
    key)."""
    from parity.optimized.triton import _kernels_route as kr

    assert {kr.config(3, e, 1)[:2] for e in (4, 8, 16, 32)} == {(1, 32)}
    assert {kr.config(3, e, 2)[:2] for e in (4, 8, 16, 32)} == {(2, 16)}
    assert kr.config(3, 8, 8)[:2] == (8, 1)
    assert kr.config(3, 256, 8)[:3] == (8, 32, 1)  # DeepSeek-V3's tile unchanged
