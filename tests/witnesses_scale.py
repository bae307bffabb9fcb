"""Witnesses of the scale regime (parity/properties/scale.py): Triton kernels that compute their
row offset in int32, as the escaped bugs did (sgl-project/sglang#4727, vllm-project/vllm#34279):
`row * stride` with the int32 program id and an int32 stride wraps once it passes 2**31, so a
row past that point reads (or writes) far before the tensor: an illegal address or wrong values.
Correct on small shapes (the property suite cannot tell), wrong at scale.

Not registered implementations: tests/test_scale_regime.py names them as `module:function`.
- `swiglu_int32`: swiglu, "concat" layout, "pre" clamp (the scale cases' options);
- `mxfp4_dequant_int32`: mxfp4_dequant (exact: E2M1 value times 2**(code - 127) in float32,
  rounded once), int32 offsets into the [T, K] output. Exact where the result is normal (the
  spec's "typical" scale codes, as the scale cases draw): a subnormal product may be flushed
  (the interpreter gives 0 for 2**-127), which this witness does not need to get right.
"""

from __future__ import annotations

import os

import torch

from parity.reference.quant import validate_mxfp4_dequant
from parity.reference.swiglu import validate_swiglu

if not torch.cuda.is_available():  # as parity.optimized does: before triton defines a kernel
    os.environ.setdefault("TRITON_INTERPRET", "1")

try:
    import triton
    import triton.language as tl
except ImportError:  # the witnesses are then unsupported; importing this module still works
    triton = None

if triton is not None:

    @triton.jit
    def _swiglu_i32(
        x_ptr, y_ptr, n, stride_x, stride_y, limit, alpha, beta,
        HAS_LIMIT: tl.constexpr, BLOCK: tl.constexpr,
    ):  # fmt: skip
        row = tl.program_id(0)  # int32
        col = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
        m = col < n
        xrow = x_ptr + row * stride_x  # THE BUG: an int32 product, wraps past 2**31
        g = tl.load(xrow + col, mask=m, other=0.0).to(tl.float32)
        u = tl.load(xrow + n + col, mask=m, other=0.0).to(tl.float32)
        if HAS_LIMIT:
            g = tl.minimum(g, limit)
            u = tl.minimum(tl.maximum(u, -limit), limit)
        y = g * tl.sigmoid(alpha * g) * (u + beta)
        tl.store(y_ptr + row * stride_y + col, y.to(y_ptr.dtype.element_ty), mask=m)

    @triton.jit
    def _mxfp4_dequant_i32(p_ptr, s_ptr, y_ptr, k, BLOCK: tl.constexpr):
        row = tl.program_id(0)  # int32
        col = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
        m = col < k
        byte = tl.load(p_ptr + row * (k // 2) + col // 2, mask=m, other=0).to(tl.int32)
        code = tl.where(col % 2 == 0, byte & 15, byte >> 4)
        mag = code & 7
        e = mag >> 1
        half = (mag & 1).to(tl.float32) * 0.5
        pow2 = (1 << tl.maximum(e - 1, 0)).to(tl.float32)  # exact 1, 2, 4 (no approximate exp2)
        val = tl.where(e == 0, half, (1.0 + half) * pow2)
        # the sign as a bit: a negation may compile to 0 - x, which loses -0.0 (H100)
        val = (val.to(tl.int32, bitcast=True) | ((code >> 3) << 31)).to(tl.float32, bitcast=True)
        sc = tl.load(s_ptr + row * (k // 32) + col // 32, mask=m, other=127).to(tl.int32)
        bits = tl.where(sc == 0, 0x00400000, sc << 23)  # 2**(sc - 127); code 0 is 2**-127
        scale = bits.to(tl.float32, bitcast=True)
        y = tl.where(sc == 255, float("nan"), val * scale)  # exact: val has 2 significant bits
        # THE BUG: row * k in int32 wraps past 2**31 elements of the output
        tl.store(y_ptr + row * k + col, y.to(y_ptr.dtype.element_ty), mask=m)


def swiglu_int32(x, *, limit=None, alpha=1.0, beta=0.0, layout="concat", clamp_mode="pre"):
    limit, alpha, beta = validate_swiglu(
        x, limit=limit, alpha=alpha, beta=beta, layout=layout, clamp_mode=clamp_mode
    )
    if triton is None:
        raise NotImplementedError("triton is not installed")
    if layout != "concat" or clamp_mode != "pre" or x.dim() != 2:
        raise NotImplementedError("witness: 2-D x, concat layout, pre clamp only")
    x = x.contiguous()
    t, two_n = x.shape
    n = two_n // 2
    y = torch.empty((t, n), dtype=x.dtype, device=x.device)
    if y.numel():
        block = 1024
        grid = (t, triton.cdiv(n, block))
        lim = 0.0 if limit is None else float(limit)
        _swiglu_i32[grid](
            x, y, n, x.stride(0), y.stride(0), lim, float(alpha), float(beta),
            HAS_LIMIT=limit is not None, BLOCK=block,
        )  # fmt: skip
    return y


def mxfp4_dequant_int32(packed, scales, *, dtype=torch.bfloat16):
    k = validate_mxfp4_dequant(packed, scales, dtype=dtype)
    if triton is None:
        raise NotImplementedError("triton is not installed")
    lead = packed.shape[:-1]
    rows = packed.numel() // max(1, packed.shape[-1])
    y = torch.empty((*lead, k), dtype=dtype, device=packed.device)
    if y.numel():
        block = 1024
        grid = (rows, triton.cdiv(k, block))
        _mxfp4_dequant_i32[grid](packed.contiguous(), scales.contiguous(), y, k, BLOCK=block)
    return y
