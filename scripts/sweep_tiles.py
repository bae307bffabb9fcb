"""Sweep the tiles (elements a program, warps) of the memory-bound Triton kernels on the GPU:
swiglu at T = 1024 and 8192, N = 2048, against FlashInfer's silu_and_mul, and fp8_quant,
silu_mul_fp8_quant and mxfp4_dequant at T = 8192 (`_kernels_quant.TILE`): which default to
ship. The kernels and their math are unchanged; only the tile choice is replaced. `new` and
`sigmoid` also time the kernel variants that stay options until a GPU has timed them
(mxfp4_quant's E2M1 encoder, fp8_block_quant's grid order, the fast sigmoid).

    source .gpu/activate.sh && python3 scripts/sweep_tiles.py [swiglu] [quant] [new] [sigmoid]

Times with `parity bench`'s timer (inputs rotated past L2, the GPU asleep while a chunk is
enqueued) and reports the percentage of the copy ceiling measured in the same run.
"""

from __future__ import annotations

import itertools
import os
from types import SimpleNamespace
from unittest import mock

import torch

from parity.catalog import get_impl
from parity.optimized.triton import _kernels_swiglu as ks
from parity.tools.bench_cmd import copy_ceiling, time_calls

CEILING: dict = {}


def timed(f, sets) -> float:
    """Median ms of f over rotating input sets, with `parity bench`'s timer."""
    cases = [SimpleNamespace(args=(s,), kwargs={}) for s in sets]
    sec, _ = time_calls(f, cases, "cuda", 25.0, 100.0)
    return sec * 1e3


def pct(moved: int, ms: float) -> str:
    """TB/s and percent of the copy ceiling measured in this run."""
    if not CEILING:
        CEILING.update(copy_ceiling("cuda", 25.0, 100.0))
    gbps = moved / ms / 1e6
    return f"{gbps / 1e3:5.2f} TB/s ({100 * gbps / CEILING['gbps']:4.1f}% of copy)"


def main() -> None:
    n = 2048
    fn = get_impl("swiglu", "triton").fn
    real = ks._blocks
    try:
        import flashinfer

        fi = flashinfer.activation.silu_and_mul
    except Exception as exc:  # the bundle is missing
        print(f"flashinfer unavailable: {exc}")
        fi = None
    for t in (1024, 8192):
        sets = [torch.randn(t, 2 * n, device="cuda").bfloat16() for _ in range(8)]
        moved = sets[0].numel() * 2 * 3 // 2
        if fi is not None:
            ms = timed(fi, sets)
            print(f"T={t:5d} flashinfer           {ms * 1e3:7.1f} us {pct(moved, ms)}")
        for elems, warps in itertools.product((1024, 2048, 4096, 8192), (2, 4, 8, 16)):

            def blocks(rows, cols, target, elems=elems, warps=warps):
                br, bn, _ = real(rows, cols, elems)
                return br, bn, warps

            ks._blocks = blocks
            ms = timed(fn, sets)
            ks._blocks = real
            print(
                f"T={t:5d} elems {elems:5d} warps {warps:2d} {ms * 1e3:7.1f} us {pct(moved, ms)}",
                flush=True,
            )


def sweep_quant() -> None:
    from parity import reference as ref
    from parity.optimized.triton import _kernels_quant as kq

    t, h = 8192, 7168
    x = [torch.randn(t, h, device="cuda").bfloat16() for _ in range(4)]
    x2 = [torch.randn(t, 4096, device="cuda").bfloat16() for _ in range(4)]
    mx = [ref.mxfp4_quant(v.float()) for v in x[:2]]
    cases = {
        "fp8_quant": (get_impl("fp8_quant", "triton").fn, [(v,) for v in x], t * h * 3),
        "silu_mul_fp8_quant": (
            get_impl("silu_mul_fp8_quant", "triton").fn,
            [(v,) for v in x2],
            t * 4096 * 2 + t * 2048,
        ),
        "mxfp4_dequant": (get_impl("mxfp4_dequant", "triton").fn, mx, t * h * 2 + t * h // 2),
    }
    old = dict(kq.TILE)
    for op, (fn, sets, moved) in cases.items():
        for elems, warps in itertools.product((1024, 2048, 4096, 8192), (4, 8, 16)):
            kq.TILE.update(elems=elems, warps=warps)
            ms = timed(lambda a, fn=fn: fn(*a), sets)
            print(
                f"{op:20} elems {elems:5d} warps {warps:2d} {ms * 1e3:7.1f} us {pct(moved, ms)}",
                flush=True,
            )
        kq.TILE.update(old)


def sweep_new() -> None:
    """mxfp4_quant [8192, 7168] and fp8_block_quant [7168, 7168] weights (128 x 128 blocks):
    `TILE` of their kernel modules (elements a program, warps) and the kernel variants it names
    (mxfp4's element or word kernel and E2M1 encoder, fp8_block's grid order)."""
    from parity.optimized.triton import _kernels_fp8_block_quant as kb
    from parity.optimized.triton import _kernels_mxfp4_quant as km

    t, h = 8192, 7168
    x = [torch.randn(t, h, device="cuda").bfloat16() for _ in range(4)]
    w = [torch.randn(h, h, device="cuda").bfloat16() for _ in range(4)]
    cases = {
        "mxfp4_quant": (km, get_impl("mxfp4_quant", "triton").fn, x, t * h * 2 + t * h // 2),
        "fp8_block_quant": (kb, get_impl("fp8_block_quant", "triton").fn, w, h * h * 3),
    }
    for op, (mod, fn, sets, moved) in cases.items():
        old = dict(mod.TILE)
        # the kernel variants a TILE names: mxfp4's element or word kernel and its E2M1
        # encoder (compares or bits), fp8_block's grid order (rows or column groups first)
        flags = [f for f in ("pairs", "bits", "cols_first") if f in mod.TILE]
        small = os.environ.get("SWEEP_GRID") == "small"  # a call short of time: the shipped
        # tile with every variant
        elems_grid = (old["elems"],) if small else (2048, 4096, 8192, 16384)
        warps_grid = (old["warps"],) if small else (4, 8, 16)
        names = {"pairs": ("elems", "words"), "bits": ("compares", "bits")}
        names["cols_first"] = ("rows", "cols")
        for combo in itertools.product(*[(False, True)] * len(flags)):
            for elems, warps in itertools.product(elems_grid, warps_grid):
                mod.TILE.update(elems=elems, warps=warps, **dict(zip(flags, combo)))
                ms = timed(fn, sets)
                tag = " ".join(names[f][v] for f, v in zip(flags, combo))
                print(
                    f"{op:16} {tag:16} elems {elems:5d} warps {warps!s:4} {ms * 1e3:7.1f} us"
                    f" {pct(moved, ms)}",
                    flush=True,
                )
        mod.TILE.clear()
        mod.TILE.update(old)


def sweep_sigmoid() -> None:
    """swiglu [8192, 2 x 2048] and silu_mul_fp8_quant [8192, 2 x 2048] bf16 with the sigmoid's
    reciprocal correctly rounded and by div.full.f32 (`_kernels_swiglu.SIGMOID`)."""

    t, n = 8192, 2048
    sets = [torch.randn(t, 2 * n, device="cuda").bfloat16() for _ in range(8)]
    cases = {
        "swiglu": (get_impl("swiglu", "triton").fn, t * n * 6),
        "silu_mul_fp8_quant": (get_impl("silu_mul_fp8_quant", "triton").fn, t * n * 5),
    }
    for op, (fn, moved) in cases.items():
        for fast in (False, True):
            with mock.patch.dict(ks.SIGMOID, fast=fast):  # the process's setting after
                ms = timed(fn, sets)
            tag = "div.full" if fast else "div.rn"
            print(f"{op:20} sigmoid {tag:8} {ms * 1e3:7.1f} us {pct(moved, ms)}", flush=True)


if __name__ == "__main__":
    import sys

    which = sys.argv[1:] or ["swiglu", "quant", "new", "sigmoid"]
    if "swiglu" in which:
        main()
    if "quant" in which:
        sweep_quant()
    if "new" in which:
        sweep_new()
    if "sigmoid" in which:
        sweep_sigmoid()
