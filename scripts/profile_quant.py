"""One call of each memory-bound Triton kernel at its benchmark shape, for Nsight Compute
(issue 11, "Done when": the profile that shows where the time goes), shipped kernel and the
variants prepared on the CPU side by side:

    ncu --clock-control none --profile-from-start off --section SpeedOfLight \\
        --section WarpStateStats --section InstructionStats python3 scripts/profile_quant.py

(`bash scripts/gpu_all.sh quantprof` runs it and greps the figures.) Each case is called once
before the profiled range (compiles outside it), then once inside; it prints the order of the
launches, so the report's kernels can be named. The variants: mxfp4_quant's E2M1 encoder
(`TILE["bits"]`; the bits are the default, the seven compares the variant), the fast sigmoid
of swiglu and silu_mul_fp8_quant (`SIGMOID["fast"]`), fp8_block_quant's grid order
(`TILE["cols_first"]`). Route runs at T 1 (its latency case).
"""

from __future__ import annotations

import contextlib
import os
import sys
from unittest import mock

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from parity.catalog import get_impl, get_spec  # noqa: E402


def cases():
    """(label, op, T, option context) in launch order."""
    from parity.optimized.triton import _kernels_fp8_block_quant as kb
    from parity.optimized.triton import _kernels_mxfp4_quant as km
    from parity.optimized.triton import _kernels_swiglu as ks

    off = contextlib.nullcontext
    return [
        ("swiglu", "swiglu", 8192, off),
        ("swiglu fast sigmoid", "swiglu", 8192, lambda: mock.patch.dict(ks.SIGMOID, fast=True)),
        ("fp8_quant", "fp8_quant", 8192, off),
        ("silu_mul_fp8_quant", "silu_mul_fp8_quant", 8192, off),
        (
            "silu_mul_fp8_quant fast sigmoid",
            "silu_mul_fp8_quant",
            8192,
            lambda: mock.patch.dict(ks.SIGMOID, fast=True),
        ),
        ("fp8_block_quant", "fp8_block_quant", 8192, off),
        (
            "fp8_block_quant cols first",
            "fp8_block_quant",
            8192,
            lambda: mock.patch.dict(kb.TILE, cols_first=True),
        ),
        ("mxfp4_quant (bits encoder)", "mxfp4_quant", 8192, off),  # the default since 2026-12-06
        ("mxfp4_quant compares", "mxfp4_quant", 8192, lambda: mock.patch.dict(km.TILE, bits=False)),
        ("mxfp4_dequant", "mxfp4_dequant", 8192, off),
        ("route", "route", 1, off),
    ]


def main() -> None:
    dry = "--dry" in sys.argv  # the same calls at 4 tokens on the CPU: the script's own check
    if dry:
        os.environ.setdefault("TRITON_INTERPRET", "1")
    elif not torch.cuda.is_available():
        print("NOT RUN: needs a CUDA GPU (Nsight Compute profiles GPU kernels)")
        return
    dev = "cpu" if dry else "cuda"
    calls = []
    for label, op, t, ctx in cases():
        spec, fn = get_spec(op), get_impl(op, "triton").fn
        case = spec.build({**spec.bench(min(t, 4) if dry else t), "seed": 0}, dev)
        with ctx():
            fn(*case.args, **case.kwargs)  # compiles, plans: outside the profiled range
        calls.append((label, fn, case, ctx))
    if not dry:
        torch.cuda.synchronize()
        torch.cuda.cudart().cudaProfilerStart()
    for i, (label, fn, case, ctx) in enumerate(calls):
        with ctx():
            fn(*case.args, **case.kwargs)
        if not dry:
            torch.cuda.synchronize()
        print(f"launch {i}: {label}", flush=True)
    if not dry:
        torch.cuda.cudart().cudaProfilerStop()


if __name__ == "__main__":
    main()
