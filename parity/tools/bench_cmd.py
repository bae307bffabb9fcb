"""`parity bench --op OP --impl A --impl B ... [--device D] [--tokens 1,16,128] [--json]`.

Median time per call after warm-up, for each implementation and token count, with the ratio to
the first implementation and, for memory-bound ops, the achieved bandwidth (bytes of the inputs
read once plus the outputs written once, divided by the time; see `MEMORY_BOUND`).

Timing: on a GPU, CUDA events around each call (one synchronize at the end), over several input
sets that together exceed twice the L2 cache, rotated per iteration so no call finds its inputs
in L2; on the CPU, time.perf_counter around each call over a few rotated sets. Warm-up runs for
--warmup-ms, then enough calls for --rep-ms (at least 5).

Each case is built from a representative description: `BENCH_META[op](T)` where defined here
(DeepSeek-V4-like sizes), else the first case of the op's strategy with T tokens. --meta JSON
overrides fields of it (e.g. '{"N": 64}' for a quick CPU run).

Exit 0 every benchmark ran, 1 an implementation raised or was unavailable, 2 usage.
"""

from __future__ import annotations

import json
import math
import statistics
import sys
import time


def add_parser(sub):
    p = sub.add_parser("bench", help="time implementations against each other")
    p.add_argument("--op", required=True)
    p.add_argument("--impl", action="append", required=True, help="repeatable; first = baseline")
    p.add_argument("--device", choices=["cpu", "cuda"], default=None)
    p.add_argument("--tokens", default=None,
                   help="comma-separated T values (default 1,16,128,1024,4096 on cuda, "
                        "1,16,128 on cpu)")
    p.add_argument("--dtype", default=None, help="override the case dtype (e.g. float16)")
    p.add_argument("--meta", default=None, help="JSON object merged over the case description")
    p.add_argument("--warmup-ms", type=float, default=25.0)
    p.add_argument("--rep-ms", type=float, default=100.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", action="store_true", help="print the rows as JSON")
    return p


# --- representative cases ------------------------------------------------------------------


def _swiglu(T: int) -> dict:
    # DeepSeek-V4 expert SwiGLU: gate|up of 2 x 2048, limit 10 (FlashInfer's SM90 settings)
    return {
        "T": T, "lead": [], "N": 2048, "dtype": "bfloat16", "regime": "normal",
        "options": {"limit": 10.0, "alpha": 1.0, "beta": 0.0, "layout": "concat",
                    "clamp_mode": "pre"},
    }


BENCH_META = {
    "swiglu": _swiglu,
}

# Ops whose speed is bounded by memory traffic: bytes = a function of the case and its outputs,
# or None for the default (every input tensor read once + every output written once).
MEMORY_BOUND = {
    "swiglu": None,
    "fp8_quant": None,
    "fp8_block_quant": None,
    "silu_mul_fp8_quant": None,
    "mxfp4_quant": None,
    "mxfp4_dequant": None,
    "mhc_post": None,
    "mhc_pre": None,
    "mhc_fused_post_pre": None,
    "mhc_head": None,
    "moe_align": None,
}


def tensor_bytes(values) -> int:
    import torch

    total = 0
    for v in values:
        if isinstance(v, torch.Tensor):
            total += v.numel() * v.element_size()
        elif isinstance(v, (list, tuple)):
            total += tensor_bytes(v)
        elif isinstance(v, dict):
            total += tensor_bytes(v.values())
    return total


def bench_meta(spec, T: int, *, seed: int, device: str) -> tuple[dict, str]:
    """(description, where it came from) of a representative case with T tokens."""
    if spec.name in BENCH_META:
        return {**BENCH_META[spec.name](T), "seed": seed}, "bench_meta"
    from parity.tools.golden_cmd import draw_metas

    size = "full" if device == "cuda" else "small"
    metas = draw_metas(spec.strategy(size=size, dtypes=None), 20, seed=seed)
    metas = [m for m in metas if m.get("T", 1) > 0] or metas
    meta = dict(metas[-1])  # later draws are less minimal than the first ones
    if "T" in meta:
        meta["T"] = T
    return meta, "strategy"


# --- timing --------------------------------------------------------------------------------


def _n_sets(set_bytes: int, device: str) -> int:
    import torch

    if device == "cuda":
        l2 = getattr(torch.cuda.get_device_properties(0), "L2_cache_size", 50 << 20)
        n = math.ceil(2 * l2 / max(set_bytes, 1))
        n = min(n, max(1, (4 << 30) // max(set_bytes, 1)))  # at most ~4 GiB of inputs
        return max(2, min(n, 64))
    return max(1, min(4, math.ceil((32 << 20) / max(set_bytes, 1))))


def time_calls(fn, cases, device: str, warmup_ms: float, rep_ms: float) -> tuple[float, int]:
    """(median seconds per call, calls timed), rotating over `cases` per iteration."""
    import torch

    calls = [(c.args, c.kwargs) for c in cases]
    n = len(calls)
    cuda = device == "cuda"

    def sync():
        if cuda:
            torch.cuda.synchronize()

    # estimate one call, then warm up for warmup_ms
    sync()
    t0 = time.perf_counter()
    a, k = calls[0]
    fn(*a, **k)
    sync()
    est = max(time.perf_counter() - t0, 1e-7)
    warm = max(1, int(warmup_ms / 1e3 / est))
    for i in range(warm):
        a, k = calls[i % n]
        fn(*a, **k)
    sync()
    t0 = time.perf_counter()
    for i in range(min(n, 5)):
        a, k = calls[i % n]
        fn(*a, **k)
    sync()
    est = max((time.perf_counter() - t0) / min(n, 5), 1e-7)
    reps = int(min(max(5, rep_ms / 1e3 / est), 10_000))
    if cuda:
        starts = [torch.cuda.Event(enable_timing=True) for _ in range(reps)]
        ends = [torch.cuda.Event(enable_timing=True) for _ in range(reps)]
        for i in range(reps):
            a, k = calls[i % n]
            starts[i].record()
            fn(*a, **k)
            ends[i].record()
        torch.cuda.synchronize()
        times = [s.elapsed_time(e) / 1e3 for s, e in zip(starts, ends)]
    else:
        times = []
        for i in range(reps):
            a, k = calls[i % n]
            t0 = time.perf_counter()
            fn(*a, **k)
            times.append(time.perf_counter() - t0)
    return statistics.median(times), reps


# --- the command ---------------------------------------------------------------------------


def run(args) -> int:
    from parity.properties.case import as_tuple
    from parity.registry import get_impl, get_spec
    from parity.tools.golden_cmd import default_device

    device = default_device(args.device)
    try:
        spec = get_spec(args.op)
        chosen = [get_impl(args.op, name) for name in args.impl]
        default_tokens = "1,16,128,1024,4096" if device == "cuda" else "1,16,128"
        tokens = [int(t) for t in (args.tokens or default_tokens).split(",") if t.strip()]
        override = json.loads(args.meta) if args.meta else {}
        if not isinstance(override, dict):
            raise ValueError("--meta must be a JSON object")
    except (KeyError, ImportError, AttributeError, TypeError, ValueError) as e:
        print(f"parity bench: {e}", file=sys.stderr)
        return 2
    if any(t < 0 for t in tokens) or args.rep_ms <= 0 or args.warmup_ms < 0:
        print("parity bench: tokens must be >= 0, --rep-ms > 0, --warmup-ms >= 0",
              file=sys.stderr)
        return 2
    rows, bad = [], False
    for T in tokens:
        meta, source = bench_meta(spec, T, seed=args.seed, device=device)
        meta.update(override)
        if args.dtype:
            meta["dtype"] = args.dtype
        first = spec.build(meta, device)
        in_bytes = tensor_bytes(first.tensors().values())
        n = _n_sets(in_bytes, device)
        cases = [first] + [spec.build({**meta, "seed": meta.get("seed", 0) + i + 1}, device)
                           for i in range(n - 1)]
        base = None
        for impl in chosen:
            row = {"op": spec.name, "T": T, "impl": impl.name, "device": device,
                   "case": first.describe(), "meta_source": source, "sets": n,
                   "status": "ok", "median_us": None, "ratio": None, "gbps": None,
                   "tflops": None, "iters": 0, "bytes": None, "note": ""}
            rows.append(row)
            ok, why = impl.availability(device)
            if not ok:
                row.update(status="unavailable", note=why)
                bad = True
                continue
            try:
                outs = as_tuple(first.call(impl.fn))
                sec, reps = time_calls(impl.fn, cases, device, args.warmup_ms, args.rep_ms)
            except NotImplementedError as e:
                row.update(status="unsupported", note=str(e))
                continue
            except Exception as e:  # noqa: BLE001 - report it, time the others
                row.update(status="error", note=f"{type(e).__name__}: {e}")
                bad = True
                continue
            row.update(median_us=sec * 1e6, iters=reps)
            if spec.name in MEMORY_BOUND:
                count = MEMORY_BOUND[spec.name]
                nbytes = count(first, outs) if count else in_bytes + tensor_bytes(outs)
                row.update(bytes=nbytes, gbps=nbytes / sec / 1e9)
            flops = FLOPS.get(spec.name)
            if flops is not None:
                row["tflops"] = flops(first) / sec / 1e12
            if base is None:
                base = sec
            row["ratio"] = sec / base
    if args.json:
        print(json.dumps(rows, indent=1))
    else:
        _table(rows, spec.name, device)
    return 1 if bad else 0


def _fused_moe_flops(case) -> float:
    # two GEMMs per routed (token, expert): 2*(2N*H) + 2*(H*N) flops
    x, w13 = case.args[0], case.args[1]
    ids = case.args[4]
    routed = int((ids >= 0).sum())
    two_n, h = w13.shape[1], x.shape[1]
    return 6.0 * routed * (two_n // 2) * h


FLOPS = {"fused_moe": _fused_moe_flops}


def _table(rows, op, device) -> None:
    from rich.console import Console
    from rich.table import Table

    t = Table(title=f"parity bench: {op} on {device} (median per call)")
    for col in ("T", "impl", "time (us)", "vs first", "GB/s", "TFLOP/s", "iters", "sets",
                "status"):
        t.add_column(col, justify="right" if col not in ("impl", "status") else "left")

    def f(x, fmt):
        return "-" if x is None else format(x, fmt)

    for r in rows:
        t.add_row(str(r["T"]), r["impl"], f(r["median_us"], ".2f"), f(r["ratio"], ".3f"),
                  f(r["gbps"], ".1f"), f(r["tflops"], ".2f"), str(r["iters"]), str(r["sets"]),
                  r["status"] + (f": {r['note'][:60]}" if r["note"] else ""))
    Console().print(t)
