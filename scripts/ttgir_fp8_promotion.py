"""Can triton keep a block-FP8 GEMM's wgmma in flight while the previous K block's product is
scaled (issue 11 section 1, fp8_block at T 8192: 29% of the fp8 peak)? Compiles a minimal
64 x 128 x 128 block-scaled GEMM for sm_90 without a GPU, three ways, and prints each
`warp_group_dot_wait`'s `pendings` (0: the warp group waits for the MMA before anything else):

- plain: `acc += dot(a, b) * (a_s * b_s)[:, None]`, fused_moe's form (`dot_acc`);
- lagged: the product of K block i scaled in iteration i + 1, after block i + 1's dot is issued;
- unrolled: two K blocks' dots issued before either is scaled.

Triton 3.6 (the runner's) waits with pendings 0 right after every dot whose result is not the
next dot's accumulator, in all three: the promotion cannot overlap the MMA from the source; that
needs warp specialisation (DeepGEMM). Use the runner's triton (`pip install triton==3.6.0` in a
separate venv):

    env -u TRITON_INTERPRET python scripts/ttgir_fp8_promotion.py
"""

from __future__ import annotations

import re

import triton
import triton.language as tl
from sass_gemv import registers  # this script's directory is on sys.path when it runs
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource


@triton.jit
def _blk(a_rows, b_cols, k):
    """One K block's fp8 product (a [BM, BK] and a [BK, BN] tile at column offsets k)."""
    return tl.dot(tl.load(a_rows + k[None, :]), tl.load(b_cols + k[:, None]))


@triton.jit
def _scale(as_ptr, bs_ptr, offs_m, num_k, kb):
    """K block kb's scales: a per row, b per tile (one 128-wide N group)."""
    return tl.load(as_ptr + offs_m * num_k + kb) * tl.load(bs_ptr + kb)


@triton.jit
def _gemm(a_ptr, b_ptr, c_ptr, as_ptr, bs_ptr, stride_am, stride_bn, num_k,
          BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr, WAY: tl.constexpr):  # fmt: skip
    offs_m = tl.program_id(0) * BM + tl.arange(0, BM)
    offs_n = tl.program_id(1) * BN + tl.arange(0, BN)
    offs_k = tl.arange(0, BK)
    a_rows = a_ptr + offs_m[:, None] * stride_am
    b_cols = b_ptr + offs_n[None, :] * stride_bn
    acc = tl.zeros((BM, BN), dtype=tl.float32)
    if WAY == 2:  # unrolled: two dots issued, then both scaled
        for kb in range(0, num_k // 2):
            k0 = 2 * kb * BK
            d0 = _blk(a_rows, b_cols, k0 + offs_k)
            d1 = _blk(a_rows, b_cols, k0 + BK + offs_k)
            acc += d0 * _scale(as_ptr, bs_ptr, offs_m, num_k, 2 * kb)[:, None]
            acc += d1 * _scale(as_ptr, bs_ptr, offs_m, num_k, 2 * kb + 1)[:, None]
    else:
        d_prev = tl.zeros((BM, BN), dtype=tl.float32)
        s_prev = tl.zeros((BM,), dtype=tl.float32)
        for kb in range(0, num_k):
            d = _blk(a_rows, b_cols, kb * BK + offs_k)
            s = _scale(as_ptr, bs_ptr, offs_m, num_k, kb)
            if WAY == 1:  # lagged: block kb - 1 scaled after block kb's dot is issued
                acc += d_prev * s_prev[:, None]
                d_prev = d
                s_prev = s
            else:
                acc += d * s[:, None]
        acc += d_prev * s_prev[:, None]
    tl.store(c_ptr + offs_m[:, None] * BN + offs_n[None, :], acc.to(tl.bfloat16))  # fmt: skip


def main() -> None:
    names = _gemm.arg_names
    sig = {n: "i32" for n in names}
    sig.update(a_ptr="*fp8e4nv", b_ptr="*fp8e4nv", c_ptr="*bf16", as_ptr="*fp32", bs_ptr="*fp32")
    attrs = {(names.index(n),): [["tt.divisibility", 16]] for n in names if n[0] in "abcs"}
    print(f"triton {triton.__version__}, sm_90, 64 x 128 x 128, 4 warps, 4 stages")
    for way, label in enumerate(("plain", "lagged", "unrolled")):
        consts = dict(BM=64, BN=128, BK=128, WAY=way)
        sig.update({k: "constexpr" for k in consts})
        const = {(names.index(k),): v for k, v in consts.items()}
        ck = triton.compile(
            ASTSource(_gemm, sig, const, attrs),
            target=GPUTarget("cuda", 90, 32),
            options=dict(num_warps=4, num_stages=4),
        )
        waits = re.findall(r"warp_group_dot_wait.*?pendings = (\d+)", ck.asm["ttgir"])
        print(f"  {label:9} wgmma waits' pendings {waits}, {registers(ck)} registers")


if __name__ == "__main__":
    main()
