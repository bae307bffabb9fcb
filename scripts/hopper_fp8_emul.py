"""fused_moe (fp8_block) with Hopper's FP8 tensor-core accumulation emulated in torch, as a user
kernel for `parity fuzz`: does the spec's tolerance model hold for what the hardware does?

    parity fuzz --op fused_moe --impl scripts.hopper_fp8_emul:fused_moe --device cpu \
        --property matches_reference --max-examples 400 --no-isolate
    HOPPER_F=10 parity fuzz ...          # a coarser alignment window (a witness: must fail)
    HOPPER_FTZ=1 parity fuzz ...         # E4M3 subnormal operands flushed to zero

The vLLM Triton path (`specs.fused_moe.emulate_vllm`: GEMM outputs, SwiGLU and weighted outputs
rounded to x.dtype, activations quantized per group of block_shape[1]) with each block-FP8 GEMM
done as Hopper does it (DeepSeek-V3 report 3.3.2; Fasi et al., "Numerical
behavior of NVIDIA tensor cores"): per K block of the scales, the FP8 products are exact, each
MMA step of 32 products is summed with its products and the running block sum aligned to the
largest exponent among them and truncated to HOPPER_F (default 13) bits below it, the step's
sum truncated to float32; the block sum times a_scale * w_scale is added to the float32
accumulator (round to nearest). Other quant modes raise Unsupported (not this experiment).
"""

from __future__ import annotations

import os

import torch

from parity._errors import Unsupported
from parity.properties.case import Case
from parity.properties.specs.fused_moe import emulate_vllm

F = int(os.environ.get("HOPPER_F", "13"))
FTZ = os.environ.get("HOPPER_FTZ", "0") == "1"  # E4M3 subnormal operands read as zero
STEP = 32  # products an FP8 wgmma step sums (K = 32 for 8-bit operands)


def _trunc_f32(v: torch.Tensor) -> torch.Tensor:
    """float64 -> float32 rounded toward zero."""
    r = v.to(torch.float32)
    over = r.to(torch.float64).abs() > v.abs()
    return torch.where(over, torch.nextafter(r, torch.zeros_like(r)), r)


def _mma_block(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """sum_k a[m, k] b[n, k] over one scale block, as the FP8 tensor cores sum it: [M, N] fp32."""
    m, kb = a.shape
    n = b.shape[0]
    if FTZ:  # |v| < 2**-6: an E4M3 subnormal
        a = torch.where(a.abs() < 2.0**-6, 0.0, a)
        b = torch.where(b.abs() < 2.0**-6, 0.0, b)
    acc = torch.zeros(m, n, dtype=torch.float64)
    for k0 in range(0, kb, STEP):
        p = a[:, None, k0 : k0 + STEP].double() * b[None, :, k0 : k0 + STEP].double()  # exact
        terms = torch.cat([p, acc[..., None]], dim=-1)
        mx = terms.abs().amax(-1)
        e = torch.floor(torch.log2(torch.where(mx > 0, mx, 1.0)))
        unit = torch.exp2(e - F)[..., None]
        acc = _trunc_f32(torch.trunc(terms / unit).mul(unit).sum(-1)).double()
    return acc.float()


def _gemm(a_q, a_s, w_q, w_s, block_shape) -> torch.Tensor:
    """a_q [M, K] E4M3 values (float32), a_s [M, K/bc]; w_q [N, K] E4M3 values, w_s
    [N/br, K/bc]: float32 [M, N] as a block-FP8 Triton GEMM on Hopper computes it."""
    br, bc = block_shape
    m, k = a_q.shape
    n = w_q.shape[0]
    w_q = w_q.float()
    out = torch.zeros(m, n, dtype=torch.float32)
    ws = w_s.float().repeat_interleave(br, dim=0)[:n]  # [N, K/bc]
    for j, k0 in enumerate(range(0, k, bc)):
        blk = _mma_block(a_q[:, k0 : k0 + bc], w_q[:, k0 : k0 + bc])
        out = out + blk * (a_s[:, j, None] * ws[None, :, j])  # float32 FMA-like, RN
    return out


def fused_moe(x, w13, w2, topk_weights, topk_ids, **kwargs):
    if kwargs.get("quant") != "fp8_block" or x.device.type != "cpu":
        raise Unsupported("hopper_fp8_emul: fp8_block on the CPU only")
    case = Case("fused_moe", (x, w13, w2, topk_weights, topk_ids), kwargs, {}, "cpu")
    return emulate_vllm(case, fp8_gemm=_gemm)
