"""What the GPU's FP8 tensor-core dot does with E4M3 subnormal codes and with a sum whose terms
span many binades: the two hardware facts the fused_moe fp8_block tolerance model rests on (the
H100 counterexample of 2026-12-05 fails only on the GPU, where `tl.dot` takes fp8 operands; the
interpreter upcasts them and passes). On the GPU runner:

    python3 scripts/diag_fp8_mma.py

Each line: what was summed, the exact float64 value, and what `tl.dot(a, b)` (fp8 x fp8 ->
float32, triton's default accumulation) returned, and the same with the operands upcast to
float32 first (`input_precision="ieee"`, exact for these sums).
"""

import torch
import triton
import triton.language as tl


@triton.jit
def _dot(a_ptr, b_ptr, c_ptr, UPCAST: tl.constexpr, M: tl.constexpr, K: tl.constexpr,
         N: tl.constexpr):  # fmt: skip
    m = tl.arange(0, M)
    k = tl.arange(0, K)
    n = tl.arange(0, N)
    a = tl.load(a_ptr + m[:, None] * K + k[None, :])
    b = tl.load(b_ptr + k[:, None] * N + n[None, :])
    if UPCAST:
        c = tl.dot(a.to(tl.float32), b.to(tl.float32), input_precision="ieee")
    else:
        c = tl.dot(a, b)
    tl.store(c_ptr + m[:, None] * N + n[None, :], c)


M, K, N = 64, 32, 16


def dot(a_row: torch.Tensor, upcast: bool) -> float:
    """Row 0 of A (K fp8 values, the rest zero) dotted with a B of ones: the sum of the row."""
    a = torch.zeros(M, K, dtype=torch.float32)
    a[0] = a_row
    a8 = a.to(torch.float8_e4m3fn).cuda()
    b8 = torch.ones(K, N, dtype=torch.float32).to(torch.float8_e4m3fn).cuda()
    c = torch.empty(M, N, dtype=torch.float32, device="cuda")
    _dot[(1,)](a8, b8, c, UPCAST=upcast, M=M, K=K, N=N, num_warps=4)
    return c[0, 0].item()


def main() -> None:
    print(torch.cuda.get_device_name(), "triton", triton.__version__)
    sub = 2.0**-9  # the smallest E4M3 subnormal
    rows = {
        "one subnormal 2**-9": [sub] + [0.0] * (K - 1),
        "32 subnormals 2**-9": [sub] * K,
        "largest subnormal 7 * 2**-9": [7 * sub] + [0.0] * (K - 1),
        "256 + 31 * 2**-6 (min normal)": [256.0] + [2.0**-6] * (K - 1),
        "256 + 31 * 2**-3": [256.0] + [2.0**-3] * (K - 1),
        "448 - 448 + 31 * 2**-6 (cancellation)": [448.0, -448.0] + [2.0**-6] * (K - 2),
        "1 + 31 * 2**-9 (subnormal terms)": [1.0] + [sub] * (K - 1),
        "448 + 31 * 1.125 (13-bit lsb?)": [448.0] + [1.125] * (K - 1),
    }
    for name, vals in rows.items():
        r = torch.tensor(vals, dtype=torch.float32)
        exact = float(r.to(torch.float8_e4m3fn).double().sum())
        mma, ieee = dot(r, False), dot(r, True)
        flag = "" if mma == exact else "   <- differs"
        print(f"{name:40} exact {exact:<22.12g} fp8 dot {mma:<22.12g} upcast {ieee:<.12g}{flag}")


if __name__ == "__main__":
    main()
