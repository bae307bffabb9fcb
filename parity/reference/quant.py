"""Reference quantizers (`docs/ops.md`): fp8_quant, fp8_block_quant, silu_mul_fp8_quant,
mxfp4_quant, mxfp4_dequant.

The formats define these ops in float32, so they always compute in float32 and ignore
`precision("float64")`. Scales are applied by a true division `x / s` and every rounding is
round-to-nearest-even (`parity.reference.numerics`).

Special values, one rule for every quantizer:

- NaN: a NaN anywhere in a group (block) makes the group's amax NaN. For FP8 the scale is then
  NaN and every code of the group is NaN (what `amax` and `x / s` give). For MXFP4 the scale code
  is 255 (the E8M0 NaN) and the element codes are 0, so the block dequantizes to NaN throughout.
  Other groups are unaffected.
- Infinity saturates without error: amax is taken over |x| clamped to the float32 finite range
  (inf counts as 3.4028e38), so the scale stays finite; the infinite element itself saturates
  (+-448 for FP8, +-6 for E2M1) and the rest of the group quantizes normally (usually to 0).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from parity.reference.common import (
    FLOAT_DTYPES,
    FP8,
    check_choice,
    check_float,
    check_int,
    check_tensor,
    fail,
)
from parity.reference.numerics import (
    E4M3_MAX,
    E8M0_BIAS,
    E8M0_NAN,
    e2m1_decode,
    e2m1_encode,
    e8m0_decode,
    exp2i,
    pack_nibbles,
    round_to_e4m3,
    ue8m0_pow2_ceil,
    unpack_nibbles,
)
from parity.reference.swiglu import CLAMP_MODES, swiglu_math

SCALE_FORMATS = ("fp32", "ue8m0")
SCALE_ROUNDINGS = ("floor", "ceil")
MX_BLOCK = 32  # the OCP MX block size; MXFP4 defines no other
BLOCK_QUANT_EPS = 1e-4  # DeepGEMM's per_block_cast_to_fp8
_F32_MAX = torch.finfo(torch.float32).max


# --- shared pieces ------------------------------------------------------------------------------


def _amax(groups: torch.Tensor, dim) -> torch.Tensor:
    """max |x| over `dim` with inf counted as the float32 maximum; NaN propagates."""
    return groups.abs().clamp(max=_F32_MAX).amax(dim=dim)


def _fp8_scales(amax: torch.Tensor, scale_format: str, eps: float) -> torch.Tensor:
    # a tensor divisor: torch on CUDA turns division by a Python scalar into a reciprocal
    # multiply, which is one ulp off the true quotient for about half of all amax values
    s = amax.clamp(min=eps) / torch.full_like(amax, E4M3_MAX)  # clamp keeps NaN
    return ue8m0_pow2_ceil(s) if scale_format == "ue8m0" else s


def _column_major(s: torch.Tensor) -> torch.Tensor:
    """The values of 2-D `s` in a tensor with strides (1, M) (DeepGEMM's scale layout)."""
    m, g = s.shape
    out = torch.empty_strided((m, g), (1, max(m, 1)), dtype=s.dtype, device=s.device)
    out.copy_(s)
    return out


def _check_bool(op: str, name: str, value) -> bool:
    if not isinstance(value, bool):
        fail(op, name, "a bool", type(value).__name__, kind=TypeError)
    return value


def _check_block_shape(op: str, block_shape) -> tuple[int, int]:
    if not isinstance(block_shape, (tuple, list)):
        fail(op, "block_shape", "a pair of ints", type(block_shape).__name__, kind=TypeError)
    if len(block_shape) != 2:
        fail(op, "block_shape", "a pair of ints", repr(block_shape))
    br = check_int(op, "block_shape[0]", block_shape[0], lo=1)
    bc = check_int(op, "block_shape[1]", block_shape[1], lo=1)
    return br, bc


# --- fp8_quant ------------------------------------------------------------------------------------


def _fp8_quant_f32(
    x32: torch.Tensor, group_size: int, scale_format: str, eps: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-group FP8 quantization of float32 `x32 [..., K]`, unvalidated.

    Returns (q, scales): q `[..., K]` float32 holding the E4M3 values (NaN for a NaN group),
    scales `[..., K // group_size]` float32, both contiguous.
    """
    *lead, k = x32.shape
    groups = x32.reshape(*lead, k // group_size, group_size)
    s = _fp8_scales(_amax(groups, -1), scale_format, eps)
    q = round_to_e4m3(groups / s.unsqueeze(-1))  # round_to_e4m3 clamps to +-448 first
    return q.reshape(*lead, k).contiguous(), s.contiguous()


def _check_fp8_quant_options(op: str, group_size, scale_format, column_major_scales) -> None:
    check_int(op, "group_size", group_size, lo=1)
    check_choice(op, "scale_format", scale_format, SCALE_FORMATS)
    _check_bool(op, "column_major_scales", column_major_scales)


def validate_fp8_quant(
    x, *, group_size=128, scale_format="fp32", column_major_scales=False, eps=1e-10
) -> float:
    """Every check of fp8_quant's input, before any work (shared with the fast paths so their
    errors match): returns eps as a float."""
    op = "fp8_quant"
    check_tensor(op, "x", x, dtypes=FLOAT_DTYPES, ndim=2)
    _check_fp8_quant_options(op, group_size, scale_format, column_major_scales)
    eps = check_float(op, "eps", eps, positive=True)
    if x.shape[1] % group_size != 0:
        fail(op, "x", f"K (dim 1) divisible by group_size={group_size}", list(x.shape))
    return eps


def fp8_quant(
    x: torch.Tensor,
    *,
    group_size: int = 128,
    scale_format: str = "fp32",
    column_major_scales: bool = False,
    eps: float = 1e-10,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token-group FP8 activation quantization: `x [M, K]` -> (q, scales).

    Per row and group of `group_size` columns: `s = max(amax, eps) / 448` (ue8m0: rounded up to
    a power of two), `q = RNE(clamp(x / s, -448, 448))` as float8_e4m3fn. `scales [M, K //
    group_size]` float32, column-major (strides (1, M)) with `column_major_scales`. An all-zero
    group gets `s = eps / 448` and zero codes. NaN and inf: see the module docstring.
    """
    eps = validate_fp8_quant(
        x,
        group_size=group_size,
        scale_format=scale_format,
        column_major_scales=column_major_scales,
        eps=eps,
    )
    q, s = _fp8_quant_f32(x.to(torch.float32), group_size, scale_format, eps)
    return q.to(FP8), _column_major(s) if column_major_scales else s


def fp8_dequant(q: torch.Tensor, scales: torch.Tensor, group_size: int) -> torch.Tensor:
    """Float32 `q * s` for `fp8_quant` output (helper, not a contract op; unvalidated)."""
    return (q.to(torch.float32) * scales.repeat_interleave(group_size, dim=-1)).contiguous()


# --- fp8_block_quant ------------------------------------------------------------------------------


def _expand_blocks(s: torch.Tensor, block_shape, rows: int, cols: int) -> torch.Tensor:
    """Block scales `[..., ceil(R/br), ceil(C/bc)]` -> one scale per element `[..., R, C]`."""
    br, bc = block_shape
    s = s.repeat_interleave(br, dim=-2).repeat_interleave(bc, dim=-1)
    return s[..., :rows, :cols]


def _fp8_block_quant_f32(
    w32: torch.Tensor, block_shape, scale_format: str, eps: float = BLOCK_QUANT_EPS
) -> tuple[torch.Tensor, torch.Tensor]:
    """Blockwise FP8 quantization of float32 `w32 [..., R, C]`, unvalidated.

    Returns (q float32 E4M3 values `[..., R, C]`, scales `[..., ceil(R/br), ceil(C/bc)]`).
    """
    *lead, rows, cols = w32.shape
    br, bc = block_shape
    nr, nc = math.ceil(rows / br), math.ceil(cols / bc)
    # Zero padding fills the partial last blocks without changing their amax.
    padded = F.pad(w32, (0, nc * bc - cols, 0, nr * br - rows))
    blocks = padded.reshape(*lead, nr, br, nc, bc)
    s = _fp8_scales(_amax(blocks, (-3, -1)), scale_format, eps)
    q = round_to_e4m3(w32 / _expand_blocks(s, block_shape, rows, cols))
    return q.contiguous(), s.contiguous()


def validate_fp8_block_quant(w, *, block_shape=(128, 128), scale_format="fp32") -> tuple[int, int]:
    """Every check of fp8_block_quant's input, before any work (shared with the fast paths so
    their errors match): returns block_shape as a tuple."""
    op = "fp8_block_quant"
    check_tensor(op, "w", w, dtypes=FLOAT_DTYPES, min_ndim=2)
    block_shape = _check_block_shape(op, block_shape)
    check_choice(op, "scale_format", scale_format, SCALE_FORMATS)
    return block_shape


def fp8_block_quant(
    w: torch.Tensor, *, block_shape=(128, 128), scale_format: str = "fp32"
) -> tuple[torch.Tensor, torch.Tensor]:
    """Blockwise FP8 weight quantization: `w [..., R, C]` -> (q like w, scales).

    Blocks of `block_shape` over the last two dims, the last block in each dim may be partial;
    `s = max(amax, 1e-4) / 448` (ue8m0: rounded up to a power of two); `scales [...,
    ceil(R/br), ceil(C/bc)]` float32. NaN and inf: see the module docstring.
    """
    block_shape = validate_fp8_block_quant(w, block_shape=block_shape, scale_format=scale_format)
    q, s = _fp8_block_quant_f32(w.to(torch.float32), block_shape, scale_format)
    return q.to(FP8), s


def fp8_block_dequant(q: torch.Tensor, scales: torch.Tensor, block_shape) -> torch.Tensor:
    """Float32 `q * s` for `fp8_block_quant` output (helper, not a contract op; unvalidated)."""
    rows, cols = q.shape[-2:]
    s = _expand_blocks(scales, tuple(block_shape), rows, cols)
    return (q.to(torch.float32) * s).contiguous()


# --- silu_mul_fp8_quant ---------------------------------------------------------------------------


def _silu_mul_fp8_quant_f32(
    x: torch.Tensor,
    group_size: int,
    limit,
    clamp_mode: str,
    scale_format: str,
    intermediate_dtype: torch.dtype = torch.float32,
) -> tuple[torch.Tensor, torch.Tensor]:
    """SwiGLU then per-group FP8 quantization, unvalidated; returns float32 (q, row-major s).

    `intermediate_dtype=torch.float32` is the fused kernel; `x.dtype` the unfused two-kernel
    path that rounds the SwiGLU output first. The contract accepts either, per group.
    """
    y = swiglu_math(
        x,
        limit=limit,
        alpha=1.0,
        beta=0.0,
        layout="concat",
        clamp_mode=clamp_mode,
        dtype=torch.float32,
    )
    y = y.to(intermediate_dtype).to(torch.float32)
    return _fp8_quant_f32(y, group_size, scale_format, 1e-10)


def validate_silu_mul_fp8_quant(
    x,
    *,
    group_size=128,
    limit=None,
    clamp_mode="pre",
    scale_format="fp32",
    column_major_scales=False,
) -> float | None:
    """Every check of silu_mul_fp8_quant's input, before any work (shared with the fast paths
    so their errors match): returns limit as a float (None stays None)."""
    op = "silu_mul_fp8_quant"
    check_tensor(op, "x", x, dtypes=FLOAT_DTYPES, ndim=2)
    _check_fp8_quant_options(op, group_size, scale_format, column_major_scales)
    if limit is not None:
        limit = check_float(op, "limit", limit, positive=True)
    check_choice(op, "clamp_mode", clamp_mode, CLAMP_MODES)
    if x.shape[1] % 2 != 0:
        fail(op, "x", "an even last dimension (gate and up halves)", list(x.shape))
    if (x.shape[1] // 2) % group_size != 0:
        fail(op, "x", f"N = dim 1 / 2 divisible by group_size={group_size}", list(x.shape))
    return limit


def silu_mul_fp8_quant(
    x: torch.Tensor,
    *,
    group_size: int = 128,
    limit: float | None = None,
    clamp_mode: str = "pre",
    scale_format: str = "fp32",
    column_major_scales: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """`fp8_quant(swiglu(x, limit=limit, clamp_mode=clamp_mode), ...)` with the SwiGLU result
    kept in float32 (the fused kernel). `x [M, 2N]` ("concat" halves), N % group_size == 0.
    """
    limit = validate_silu_mul_fp8_quant(
        x,
        group_size=group_size,
        limit=limit,
        clamp_mode=clamp_mode,
        scale_format=scale_format,
        column_major_scales=column_major_scales,
    )
    q, s = _silu_mul_fp8_quant_f32(x, group_size, limit, clamp_mode, scale_format)
    return q.to(FP8), _column_major(s) if column_major_scales else s


# --- MXFP4 ----------------------------------------------------------------------------------------


def _mxfp4_quant_f32(x32: torch.Tensor, scale_rounding: str) -> tuple[torch.Tensor, torch.Tensor]:
    """MXFP4 quantization of float32 `x32 [..., K]`, unvalidated: (packed uint8, scale codes)."""
    *lead, k = x32.shape
    blocks = x32.reshape(*lead, k // MX_BLOCK, MX_BLOCK)
    has_nan = blocks.isnan().any(dim=-1)
    amax = _amax(blocks, -1)

    m, big_e = torch.frexp(amax)  # amax = m * 2**big_e, m in [0.5, 1): exact, no log2
    if scale_rounding == "floor":
        e = big_e - 3  # floor(log2(amax)) - 2 = (big_e - 1) - 2
    else:
        # ceil(log2(amax / 6)) = the least e with amax <= 6 * 2**e = 0.75 * 2**(e + 3). Exact;
        # a kernel's float32 `amax / 6` agrees except where that quotient is subnormal.
        e = big_e - 3 + (m > 0.75).to(torch.int32)
    e = torch.where(amax == 0, -E8M0_BIAS, e).clamp(-E8M0_BIAS, E8M0_BIAS)

    codes = e2m1_encode(blocks / exp2i(e).unsqueeze(-1))  # exact division by a power of two
    codes = torch.where(has_nan.unsqueeze(-1), 0, codes)
    scales = torch.where(has_nan, E8M0_NAN, e + E8M0_BIAS).to(torch.uint8)
    return pack_nibbles(codes.reshape(*lead, k)).contiguous(), scales.contiguous()


def validate_mxfp4_quant(x, *, block=32, scale_rounding="floor") -> None:
    """Every check of mxfp4_quant's input, before any work (shared with the fast paths so their
    errors match)."""
    op = "mxfp4_quant"
    check_tensor(op, "x", x, dtypes=FLOAT_DTYPES, min_ndim=1)
    check_int(op, "block", block, lo=1)
    if block != MX_BLOCK:
        fail(op, "block", f"{MX_BLOCK} (the only MX block size)", block)
    check_choice(op, "scale_rounding", scale_rounding, SCALE_ROUNDINGS)
    if x.shape[-1] % MX_BLOCK != 0:
        fail(op, "x", f"last dimension divisible by {MX_BLOCK}", list(x.shape))


def mxfp4_quant(
    x: torch.Tensor, *, block: int = 32, scale_rounding: str = "floor"
) -> tuple[torch.Tensor, torch.Tensor]:
    """OCP MXFP4 quantization: `x [..., K]` -> (packed uint8 `[..., K//2]`, scales uint8
    `[..., K//32]`).

    Per block of 32: `e = floor(log2(amax)) - 2` ("floor", OCP; elements may saturate to 6) or
    `e = ceil(log2(amax / 6))` ("ceil", never saturates), both exact; amax = 0 gives e = -127;
    e clamped to [-127, 127]; scale code e + 127. Elements `x / 2**e` round to the nearest E2M1
    value, ties to the even code, saturating at 6; -0.0 keeps its sign (code 8). `block` must be
    32: the MX formats define no other block size. NaN and inf: see the module docstring.
    """
    validate_mxfp4_quant(x, block=block, scale_rounding=scale_rounding)
    return _mxfp4_quant_f32(x.to(torch.float32), scale_rounding)


def validate_mxfp4_dequant(packed, scales, *, dtype=torch.bfloat16) -> int:
    """Every check of mxfp4_dequant's input, before any work (shared with the fast paths so
    their errors match): returns K, the unpacked last dimension."""
    op = "mxfp4_dequant"
    check_tensor(op, "packed", packed, dtypes=(torch.uint8,), min_ndim=1)
    if packed.shape[-1] % (MX_BLOCK // 2) != 0:
        fail(op, "packed", f"last dimension divisible by {MX_BLOCK // 2}", list(packed.shape))
    k = 2 * packed.shape[-1]
    check_tensor(
        op,
        "scales",
        scales,
        dtypes=(torch.uint8,),
        shape=(*packed.shape[:-1], k // MX_BLOCK),
        device=packed.device,
    )
    if dtype not in FLOAT_DTYPES:
        fail(op, "dtype", "one of bfloat16, float16, float32", dtype, kind=TypeError)
    return k


def mxfp4_dequant(
    packed: torch.Tensor, scales: torch.Tensor, *, dtype: torch.dtype = torch.bfloat16
) -> torch.Tensor:
    """`packed [..., K//2]` uint8, `scales [..., K//32]` uint8 -> `x [..., K]` in `dtype`.

    `value * 2 ** (code - 127)` computed exactly in float32 (code 0 is the subnormal 2**-127),
    then rounded once to `dtype`; scale code 255 gives NaN for its whole block; -0.0 is kept.
    """
    k = validate_mxfp4_dequant(packed, scales, dtype=dtype)
    *lead, _ = packed.shape
    values = e2m1_decode(unpack_nibbles(packed)).reshape(*lead, k // MX_BLOCK, MX_BLOCK)
    x = values * e8m0_decode(scales).unsqueeze(-1)
    return x.reshape(*lead, k).to(dtype).contiguous()
