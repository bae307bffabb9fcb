"""Triton SwiGLU kernel and its device helpers (imported lazily by `swiglu.py` and by the
quantizer kernels, which reuse `swiglu_f32`).

All math is float32. `exp_f32` is accurate to a few ulps over the whole range: a plain
`tl.exp` on a GPU is `ex2.approx(z * log2e)`, whose rounding of the product costs about
|z|/2 ulps, too much for a float32 output at |gate| ~ 30 against a 16-ulp tolerance.
Clamps are `tl.where` on comparisons, so NaN propagates as with `torch.clamp`
(`tl.minimum`/`tl.maximum` may drop NaN).
"""

import triton
import triton.language as tl

from parity.optimized.triton._fp8 import to_dtype_rne

_LOG2E_HI = 1.4426950216293335  # float32(log2(e))
_LOG2E_LO = 1.925963033500011e-08  # log2(e) - _LOG2E_HI


@triton.jit
def exp_f32(z):
    """exp(z) in float32: 2**t with t = z*log2(e) split as n + f, the product's rounding error
    recovered by an fma, f in [-0.5, 0.5], and 2**n applied exactly from exponent bits."""
    # exp overflows float32 above 89 and underflows to 0 below -104: clamping keeps t and its
    # error term finite (no inf - inf); NaN passes both comparisons unchanged.
    z = tl.where(z > 150.0, 150.0, tl.where(z < -150.0, -150.0, z))
    t = z * _LOG2E_HI
    err = tl.fma(z, _LOG2E_HI, -t) + z * _LOG2E_LO
    n = tl.floor(t + 0.5)
    f = (t - n) + err  # t - n is exact
    p = tl.exp2(f)
    ni = tl.where(n == n, n, 0.0).to(tl.int32)  # NaN lanes: any n, p is NaN already
    n1 = ni >> 1
    n2 = ni - n1  # two factors, each a normal power of two (|n| <= 217)
    s1 = ((n1 + 127) << 23).to(tl.float32, bitcast=True)
    s2 = ((n2 + 127) << 23).to(tl.float32, bitcast=True)
    return (p * s1) * s2  # p * s1 is exact; one rounding at most (under/overflow)


@triton.jit
def sigmoid_f32(z):
    """1 / (1 + exp(-z)) with a correctly rounded division (as torch's sigmoid computes it)."""
    d = 1.0 + exp_f32(-z)
    return tl.math.div_rn(tl.full(d.shape, 1.0, tl.float32), d)


@triton.jit
def swiglu_f32(g, u, limit, alpha, beta, HAS_LIMIT: tl.constexpr, POST: tl.constexpr):
    """The contract's SwiGLU on float32 halves: (g * sigmoid(alpha * g)) * (u + beta), with the
    "pre" (gate clamped above) or "post" (activation clamped above) limit; up clamped to
    +-limit in both modes. `u + beta` is kept even for beta = 0: -0.0 + 0.0 is +0.0."""
    if HAS_LIMIT:
        u = tl.where(u > limit, limit, tl.where(u < -limit, -limit, u))
        if not POST:
            g = tl.where(g > limit, limit, g)
    act = g * sigmoid_f32(alpha * g)
    if HAS_LIMIT:
        if POST:
            act = tl.where(act > limit, limit, act)
    return act * (u + beta)


@triton.jit
def _swiglu_kernel(
    x_ptr,
    y_ptr,
    R,
    N,
    limit,
    alpha,
    beta,
    HAS_LIMIT: tl.constexpr,
    POST: tl.constexpr,
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
    y = swiglu_f32(g, u, limit, alpha, beta, HAS_LIMIT, POST)
    omask = rmask[:, None] & (cols < N)[None, :]
    tl.store(y_ptr + row64[:, None] * N + cols[None, :], to_dtype_rne(y, y_ptr.dtype.element_ty), mask=omask)


def _blocks(rows: int, cols: int, target: int) -> tuple[int, int, int]:
    """(BLOCK_R, BLOCK_N, num_warps) for a [rows, cols] output: ~`target` elements a program,
    several rows per program when cols is small; 4 warps up to 2048 elements, else 8."""
    block_n = min(triton.next_power_of_2(max(cols, 1)), 1024)
    block_r = max(1, min(triton.next_power_of_2(max(rows, 1)), target // block_n))
    return block_r, block_n, 4 if block_r * block_n <= 2048 else 8


def launch_swiglu(x2, y2, *, limit, alpha, beta, interleaved, post):
    """x2 [R, 2N] contiguous -> y2 [R, N] contiguous (preallocated, R and N > 0)."""
    rows, n = y2.shape
    block_r, block_n, warps = _blocks(rows, n, 4096)
    grid = (triton.cdiv(rows, block_r), triton.cdiv(n, block_n))
    _swiglu_kernel[grid](
        x2,
        y2,
        rows,
        n,
        0.0 if limit is None else limit,
        alpha,
        beta,
        HAS_LIMIT=limit is not None,
        POST=post,
        INTERLEAVED=interleaved,
        BLOCK_R=block_r,
        BLOCK_N=block_n,
        num_warps=warps,
    )
