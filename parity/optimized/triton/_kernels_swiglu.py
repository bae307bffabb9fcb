"""Triton SwiGLU kernel and its device helpers (imported lazily by `swiglu.py` and by the
quantizer kernels, which reuse `swiglu_f32`).

All math is float32, in the order of the reference (`gate * sigmoid(alpha * gate) * (up +
beta)`, sigmoid as `1 / (1 + exp(-z))` with a correctly rounded division), with an accurate
exp (`exp_f32`).
Clamps are `tl.where` on comparisons, so NaN propagates as with `torch.clamp`
(`tl.minimum`/`tl.maximum` may drop NaN).
"""

import os

import triton
import triton.language as tl
from triton.language.extra import libdevice

from parity.optimized.triton._caps import variant_on
from parity.optimized.triton._fp8 import to_dtype_rne
from parity.optimized.triton._launch import cdiv

# Chosen when this module is imported (after TRITON_INTERPRET is set, as triton.jit reads it).
_INTERPRET = tl.constexpr(os.environ.get("TRITON_INTERPRET") == "1")

# fast: the sigmoid's reciprocal by div.full.f32 (at most 2 ulps over the full range, PTX ISA;
# a subnormal result flushed to 0 is within the tolerance's tiny32 |gate| |up| term) instead of
# a correctly rounded division: within the contract's float32 SwiGLU error (16 u32 |y|,
# `specs/swiglu.py`; exp's error and the products' roundings add about 3 more), and sm_90 SASS
# (offline, bench shapes) 760 -> 560 instructions for swiglu, 1376 -> 1224 for
# silu_mul_fp8_quant. The interpreter divides exactly either way: only a GPU run judges it, and
# none has yet, hence off. Read by the swiglu and silu_mul_fp8_quant wrappers' plans (their
# keys hold it); fused_moe keeps the correctly rounded one.
SIGMOID = {"fast": variant_on("fast_sigmoid")}


@triton.jit
def exp_f32(z):
    """exp(z) in float32, accurate over the whole range: libdevice's expf on a GPU (the
    function torch's CUDA sigmoid calls, so the two agree bit for bit), numpy's in the
    interpreter. Not `tl.exp`, which on a GPU is ex2.approx(z * log2e): the rounding of the
    product costs ~|z|/2 ulps, too much at |z| ~ 30 for a 16-ulp float32 tolerance."""
    if _INTERPRET:
        e = tl.exp(z)
    else:
        e = libdevice.exp(z)
    return e


@triton.jit
def sigmoid_f32(z, FAST: tl.constexpr):
    """1 / (1 + exp(-z)) with a correctly rounded division (as torch's sigmoid computes it), or
    with div.full.f32 under FAST (see SIGMOID)."""
    d = 1.0 + exp_f32(-z)
    if FAST:
        return tl.fdiv(tl.full(d.shape, 1.0, tl.float32), d, ieee_rounding=False)
    else:
        return tl.math.div_rn(tl.full(d.shape, 1.0, tl.float32), d)


@triton.jit
def swiglu_f32(g, u, limit, alpha, beta, POST: tl.constexpr, FAST: tl.constexpr):
    """The contract's SwiGLU on float32 halves: (g * sigmoid(alpha * g)) * (u + beta), with the
    "pre" (gate clamped above) or "post" (activation clamped above) limit; up clamped to
    +-limit in both modes. No limit is limit = +inf: every clamp compares false and keeps its
    operand, NaN and inf included. `u + beta` is kept even for beta = 0: -0.0 + 0.0 is +0.0."""
    u = tl.where(u > limit, limit, tl.where(u < -limit, -limit, u))
    if not POST:
        g = tl.where(g > limit, limit, g)
    act = g * sigmoid_f32(alpha * g, FAST)
    if POST:
        act = tl.where(act > limit, limit, act)
    return act * (u + beta)


# Compile keys (issue 11, section 4: a GPU run compiles once per key): R only bounds the rows, so
# it is not specialised; N feeds the row addresses (its divisibility by 16 lets loads vectorise)
# and is. No limit is limit = +inf: every clamp compares false and keeps its operand, NaN and inf
# included, so one compiled kernel serves both.
@triton.jit(do_not_specialize=["R"])
def _swiglu_kernel(
    x_ptr,
    y_ptr,
    R,
    N,
    limit,
    alpha,
    beta,
    POST: tl.constexpr,
    FAST: tl.constexpr,
    INTERLEAVED: tl.constexpr,
    BLOCK_R: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    rows = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    col0 = tl.program_id(1) * BLOCK_N
    cols = col0 + tl.arange(0, BLOCK_N)
    rmask = rows < R
    row64 = rows.to(tl.int64)
    x_row = x_ptr + row64[:, None] * (2 * N)
    if INTERLEAVED:
        # One contiguous load of the [BLOCK_R, 2*BLOCK_N] span, then split even/odd lanes,
        # instead of two stride-2 gathers.
        icols = 2 * col0 + tl.arange(0, 2 * BLOCK_N)
        pair = tl.load(x_row + icols[None, :], mask=rmask[:, None] & (icols < 2 * N)[None, :])
        g, u = tl.split(tl.reshape(pair.to(tl.float32), (BLOCK_R, BLOCK_N, 2)))
    else:
        mask = rmask[:, None] & (cols < N)[None, :]
        g = tl.load(x_row + cols[None, :], mask=mask).to(tl.float32)
        u = tl.load(x_row + N + cols[None, :], mask=mask).to(tl.float32)
    y = swiglu_f32(g, u, limit, alpha, beta, POST, FAST)
    omask = rmask[:, None] & (cols < N)[None, :]
    tl.store(
        y_ptr + row64[:, None] * N + cols[None, :],
        to_dtype_rne(y, y_ptr.dtype.element_ty),
        mask=omask,
    )


def _blocks(rows: int, cols: int, target: int) -> tuple[int, int, int]:
    """(BLOCK_R, BLOCK_N, num_warps) for a [rows, cols] output: `target` elements a program,
    BLOCK_N the power of two >= cols within 256..1024 (three tiles, whatever the shape: each is
    a compile on a GPU), several rows a program; 4 warps up to 2048 elements, else 8. The rows
    do not change the tile (a few rows leave some of it masked)."""
    block_n = min(max(triton.next_power_of_2(max(cols, 1)), 256), 1024)
    block_r = max(1, target // block_n)
    return block_r, block_n, 4 if block_r * block_n <= 2048 else 8


def launch_swiglu(x2, y2, rows, n, *, limit, alpha, beta, interleaved, post):
    """x2 contiguous, read as [rows, 2n] -> y2 contiguous, written as [rows, n] (preallocated,
    rows and n > 0; any leading shape: only the data pointers are used)."""
    block_r, block_n, warps = _blocks(rows, n, 4096)
    grid = (cdiv(rows, block_r), cdiv(n, block_n))
    _swiglu_kernel[grid](
        x2,
        y2,
        rows,
        n,
        float("inf") if limit is None else limit,
        alpha,
        beta,
        POST=post,
        FAST=SIGMOID["fast"],
        INTERLEAVED=interleaved,
        BLOCK_R=block_r,
        BLOCK_N=block_n,
        num_warps=warps,
    )
