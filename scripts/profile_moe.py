"""Where the Triton fused MoE's time goes, on the GPU (issue 11, section 1).

    source .gpu/activate.sh && python3 scripts/profile_moe.py kernels [--quant Q] [--tokens T,..]
    python3 scripts/profile_moe.py sweep [--quant Q] [--tokens 1,16] [--budget S]
    ncu --clock-control none -k regex:_gemm_kernel ... python3 scripts/profile_moe.py once ...

`kernels`: the per-kernel GPU time of one call (torch.profiler, CUPTI) beside the wall time of a
call (`parity bench`'s timer): which kernel takes the time, the weight bytes each GEMM reads
over its own time (TB/s), and the share of a call the GPU spends idle (launch gaps).
`sweep`: decode-path tile configs (`_moe_configs.override_config`) at T = 1 and 16, timed with
`parity bench`'s timer, x the weight-read floor; each config's output beside the default's
(max relative difference: split-K only reorders float32 sums, so a large one is a broken tile).
`host`: the host time of an eager call and where it goes (cProfile).
`once`: one warmed-up call, for Nsight Compute to profile.

The layer is `parity bench`'s (the fused_moe OpSpec's bench case: DeepSeek-V4-like, H 7168,
N 2048, 32 experts, top-8), in the three quant modes.
"""

from __future__ import annotations

import argparse
import itertools
import os
import sys
import time
from types import SimpleNamespace

import torch

from parity.catalog import get_impl, get_spec
from parity.optimized.triton import _moe_configs as mc
from parity.tools.bench_cmd import (
    _fused_moe_flops,
    _fused_moe_weight_bytes,
    bench_meta,
    copy_ceiling,
    merge,
    time_calls,
    time_graph,
)

QUANTS = ("none", "fp8_block", "mxfp4")


def cases(quant: str, t: int, n: int = 3) -> list:
    spec = get_spec("fused_moe")
    meta, _ = bench_meta(spec, t, seed=0, device="cuda")
    meta = merge(meta, {"dims": {"quant": quant}})
    return [spec.build({**meta, "seed": meta.get("seed", 0) + i}, "cuda") for i in range(n)]


def call(fn, case):
    return case.call(fn)


def wall_us(fn, cs) -> float:
    runs = [SimpleNamespace(args=c.args, kwargs=c.kwargs) for c in cs]
    sec, _ = time_calls(fn, runs, "cuda", 10.0, 40.0)
    return sec * 1e6


def graph_us(fn, cs, eager_us: float) -> float:
    """us a call under CUDA-graph replay: the kernels alone, no host time (the eager timer
    includes the host's share wherever a call waits on it)."""
    runs = [SimpleNamespace(args=c.args, kwargs=c.kwargs) for c in cs]
    return time_graph(fn, runs, eager_us / 1e6, 40.0) * 1e6


def kernel_times(fn, cs, calls: int = 12) -> list[tuple[str, float]]:
    """(kernel, GPU us) for each launch of one call, in launch order (averaged over calls)."""
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    for c in cs:
        fn(*c.args, **c.kwargs)  # not Case.call: its input clones would be profiled too
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for i in range(calls):
            fn(*cs[i % len(cs)].args, **cs[i % len(cs)].kwargs)
        torch.cuda.synchronize()
    evs = [e for e in prof.events() if e.device_type == DeviceType.CUDA]
    evs.sort(key=lambda e: e.time_range.start)
    if not evs or len(evs) % calls:
        return [(f"{len(evs)} kernels over {calls} calls: not a whole number a call", 0.0)]
    per = len(evs) // calls
    return [
        (evs[i].name, sum(evs[c * per + i].time_range.elapsed_us() for c in range(calls)) / calls)
        for i in range(per)
    ]


def expert_bytes(case) -> tuple[int, int]:
    """(GEMM1, GEMM2) weight and scale bytes of the touched experts."""
    ids = case.args[4]
    touched = int(ids[ids >= 0].unique().numel())
    w13 = [case.args[1], case.kwargs.get("w13_scale")]
    w2 = [case.args[2], case.kwargs.get("w2_scale")]
    per = [sum(t[0].numel() * t.element_size() for t in ws if t is not None) for ws in (w13, w2)]
    return per[0] * touched, per[1] * touched


def cmd_kernels(args) -> None:
    fn = get_impl("fused_moe", "triton").fn
    ceil = copy_ceiling("cuda", 10.0, 40.0)["gbps"]
    print(f"copy ceiling {ceil / 1e3:.2f} TB/s")
    for quant, t in itertools.product(args.quant, args.tokens):
        cs = cases(quant, t)
        floor_us = _fused_moe_weight_bytes(cs[0]) / (ceil * 1e9) * 1e6
        b1, b2 = expert_bytes(cs[0])
        for path in ("decode", "sorted") if t * 8 <= mc.DECODE_MAX_PAIRS else ("sorted",):
            env = {"decode": "1", "sorted": "0"}[path]
            os.environ[mc.DECODE_ENV] = env
            wall = wall_us(fn, cs)
            graph = graph_us(fn, cs, wall)
            rows = kernel_times(fn, cs)
            gpu = sum(r[1] for r in rows)
            print(
                f"\n== {quant} T={t} {path}: {wall:.1f} us eager, {graph:.1f} us graph "
                f"(x{wall / floor_us:.2f}/x{graph / floor_us:.2f} floor "
                f"{floor_us:.1f} us, {_fused_moe_flops(cs[0]) / wall / 1e6:.1f} TFLOP/s); kernels "
                f"{gpu:.1f} us, GPU idle {max(0.0, 1 - gpu / wall):.0%}"
            )
            gemms = iter((("w13", b1), ("w2", b2)))
            for name, us in rows:
                rate = ""
                if "gemm" in name:  # the first GEMM launch reads w13, the second w2
                    w, nb = next(gemms, ("?", 0))
                    rate = f"  {w} {nb / max(us, 1e-9) / 1e6:.2f} TB/s" if nb else ""
                print(f"  {us:9.1f} us  {name[:60]}{rate}")
            os.environ.pop(mc.DECODE_ENV, None)


def decode_grid(quant: str, t: int) -> list[dict]:
    """Decode tile configs to time: the GEMV (T 1) or the dot tile, several K splits. About 30
    a case: each is a compile (done side by side first, `sweep --compile-only`)."""

    def cfg(bm, bn, bk, split, warps, stages, split2=None):
        return dict(
            DECODE_BLOCK_M=bm, DECODE_BLOCK_N1=bn, DECODE_BLOCK_N2=bn, DECODE_BLOCK_K=bk,
            DECODE_SPLIT_K1=split, DECODE_SPLIT_K2=max(1, split // 4) if split2 is None else split2,
            DECODE_NUM_WARPS=warps, DECODE_NUM_STAGES=stages,
        )  # fmt: skip

    out = []
    if t == 1:
        tiles = {
            "none": [(16, 512), (32, 256), (64, 128), (32, 512)],
            "fp8_block": [(32, 128), (64, 128), (128, 128), (256, 128)],
            # mxfp4: the whole-MX-block loads (the default since 2026-12-06) left registers
            # for more bytes in flight a thread: longer K tiles beside the old ones
            "mxfp4": [(32, 128), (32, 256), (32, 512), (64, 256), (16, 512), (16, 1024)],
        }[quant]
        for (bn, bk), split, warps in itertools.product(tiles, (0, 16, 28), (4, 8)):
            out.append(cfg(1, bn, bk, split, warps, 1))
        bn, bk = tiles[1]
        out += [cfg(1, bn, bk, s, 4, 3) for s in (0, 16)]  # does the pipeliner help a GEMV?
        if quant == "mxfp4":  # the GEMV on int32 words (DECODE_MX_WORDS) at the old best tile
            out += [{**cfg(1, 32, 256, s, 4, 1), "DECODE_MX_WORDS": 1} for s in (0, 16)]
            # activations as [1, K] tiles (DECODE_MX_ACT_2D: fewer instructions, 72 registers)
            for (bn, bk), split in itertools.product(tiles[:4], (0, 16)):
                out.append({**cfg(1, bn, bk, split, 4, 1), "DECODE_MX_ACT_2D": 1})
        if quant != "mxfp4":  # the 16-row dot tile at T 1 too
            out += [cfg(16, bn, 128, s, 4, 4) for bn in (64, 128) for s in (0, 16)]
    else:
        for bn, bk, split, stages in itertools.product((64, 128), (64, 128), (0, 8), (3, 4)):
            out.append(cfg(16, bn, bk, split, 4, stages, split2=split // 2))
        if quant == "mxfp4":  # wider N tiles spread a K step's fixed work over more bytes
            # (sm_90 SASS with MX_BF16_MUL=2: 128 x 64 w4 15.2, 256 x 64 w8 14.5, 128 x 128 w4
            # 13.8 instructions a weight byte, 156 registers)
            out += [cfg(16, 256, 64, s, 8, 3, split2=s // 2) for s in (0, 8)]
    if quant == "mxfp4":  # [1, K] activations only where an entry asks (the GPU default is 1)
        out = [{"DECODE_MX_ACT_2D": 0, **c} for c in out]
    return out


def cmd_sweep(args) -> None:
    fn = get_impl("fused_moe", "triton").fn
    ceil = copy_ceiling("cuda", 10.0, 40.0)["gbps"]
    t_end = time.monotonic() + args.budget
    print(f"copy ceiling {ceil / 1e3:.2f} TB/s")
    best: dict = {}
    for quant, t in itertools.product(args.quant, args.tokens):
        cs = cases(quant, t)
        floor_us = _fused_moe_weight_bytes(cs[0]) / (ceil * 1e9) * 1e6
        ref = call(fn, cs[0]).float()
        if args.compile_only:
            for cfg in decode_grid(quant, t):
                if time.monotonic() > t_end:
                    break
                try:
                    with mc.override_config({"DECODE_MAX_PAIRS": 128, **cfg}):
                        call(fn, cs[0])
                except Exception as e:  # reported by the timed pass
                    print(f"compile {cfg}: {type(e).__name__}")
            continue
        eager = wall_us(fn, cs)
        default = graph_us(fn, cs, eager)
        print(
            f"\n== {quant} T={t}: default {default:.1f} us under graph replay (x"
            f"{default / floor_us:.2f}), {eager:.1f} us eager; each config under graph replay"
        )
        for cfg in decode_grid(quant, t):
            if time.monotonic() > t_end:
                print("  budget spent: the rest not run")
                break
            cfg = {"DECODE_MAX_PAIRS": 128, **cfg}
            tag = " ".join(f"{k[7:]}={v}" for k, v in cfg.items() if k != "DECODE_MAX_PAIRS")
            try:
                with mc.override_config(cfg):
                    out = call(fn, cs[0]).float()
                    us = graph_us(fn, cs, default)
            except Exception as e:  # a tile the compiler rejects (registers, shared memory)
                print(f"  {tag}: {type(e).__name__}: {str(e)[:80]}")
                continue
            rel = ((out - ref).abs().max() / ref.abs().max().clamp_min(1e-30)).item()
            flag = "" if rel < 1e-2 else "  OUTPUT DIFFERS"
            print(f"  {us:8.1f} us x{us / floor_us:5.2f}  rel {rel:.1e}  {tag}{flag}", flush=True)
            if not flag and us < best.get((quant, t), (1e30,))[0]:
                best[(quant, t)] = (us, tag)
    if args.compile_only:
        return
    print("\n== best decode config per case (us, x floor)")
    for (quant, t), (us, tag) in best.items():
        print(f"  {quant:10} T={t:<3} {us:8.1f} us  {tag}")


def cmd_host(args) -> None:
    """The host's share of an eager call: cProfile over 300 calls (the GPU keeps up or not;
    the top functions by own time say where the host spends it)."""
    import cProfile
    import pstats

    fn = get_impl("fused_moe", "triton").fn
    for quant, t in itertools.product(args.quant, args.tokens):
        cs = cases(quant, t, n=2)
        for c in cs:
            fn(*c.args, **c.kwargs)
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        for i in range(300):
            fn(*cs[i % 2].args, **cs[i % 2].kwargs)
        host = (time.perf_counter() - t0) / 300 * 1e6
        torch.cuda.synchronize()
        prof = cProfile.Profile()
        prof.enable()
        for i in range(300):
            fn(*cs[i % 2].args, **cs[i % 2].kwargs)
        prof.disable()
        torch.cuda.synchronize()
        print(f"\n== {quant} T={t}: {host:.1f} us of host time a call (300 calls, no profiler)")
        pstats.Stats(prof).sort_stats("tottime").print_stats(18)


def cmd_once(args) -> None:
    fn = get_impl("fused_moe", "triton").fn
    for quant, t in itertools.product(args.quant, args.tokens):
        cs = cases(quant, t, n=1)
        call(fn, cs[0])  # compile
        torch.cuda.synchronize()
        torch.cuda.cudart().cudaProfilerStart()
        call(fn, cs[0])
        torch.cuda.synchronize()
        torch.cuda.cudart().cudaProfilerStop()


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("what", choices=("kernels", "sweep", "host", "once"))
    p.add_argument("--quant", action="append", choices=QUANTS)
    p.add_argument("--tokens", default=None)
    p.add_argument("--budget", type=float, default=150.0, help="sweep: seconds at most")
    p.add_argument("--compile-only", action="store_true", help="sweep: each config once, untimed")
    args = p.parse_args(argv)
    if not torch.cuda.is_available():
        print("NOT RUN: no CUDA device")
        return 3
    args.quant = args.quant or list(QUANTS)
    default = {"kernels": "1,16,8192", "sweep": "1,16", "host": "1,16", "once": "1"}[args.what]
    args.tokens = [int(x) for x in (args.tokens or default).split(",")]
    cmds = {"kernels": cmd_kernels, "sweep": cmd_sweep, "host": cmd_host, "once": cmd_once}
    cmds[args.what](args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
