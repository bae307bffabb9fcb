"""`parity bench --op OP --impl A --impl B ... [--device D] [--tokens 1,16,128] [--json]`.

Median time per call after warm-up, for each implementation and token count, with the ratio to
the first implementation and, for memory-bound ops, the achieved bandwidth (bytes of the inputs
read once plus the outputs written once, divided by the time; see `MEMORY_BOUND`).

Timing: on a GPU, CUDA events around each call, over several input sets that together exceed
twice the L2 cache, rotated per iteration so no call finds its inputs in L2; the calls are
enqueued in chunks while the GPU sleeps (torch.cuda._sleep), so the events measure the kernels
and not the host's launch latency; one synchronize per chunk. On the CPU, time.perf_counter
around each call over a few rotated sets. Warm-up runs for --warmup-ms, then enough calls for
--rep-ms (at least 5).

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
    p.add_argument(
        "--tokens",
        default=None,
        help="comma-separated T values (default 1,16,128,1024,4096 on cuda, 1,16,128 on cpu)",
    )
    p.add_argument("--dtype", default=None, help="override the case dtype (e.g. float16)")
    p.add_argument("--meta", default=None, help="JSON object merged over the case description")
    p.add_argument("--warmup-ms", type=float, default=25.0)
    p.add_argument("--rep-ms", type=float, default=100.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", action="store_true", help="print the rows as JSON")
    return p


# --- representative cases ------------------------------------------------------------------


# DeepSeek-V3/V4-like sizes: hidden 7168, expert intermediate 2048, 256 routed experts (top-8,
# 8 groups, top-4 groups), 4 hyper-connection streams; a rank of an 8-way expert-parallel
# deployment holds 32 experts. Each function maps T (tokens) to a case description of the op's
# strategy (the seed is added by `bench_meta`).
H, N, E, K, HC = 7168, 2048, 256, 8, 4
_SWIGLU_DSV4 = {"limit": 10.0, "alpha": 1.0, "beta": 0.0, "layout": "concat", "clamp_mode": "pre"}
_PRE_OPTS = {
    "rms_eps": 1e-6,
    "pre_eps": 1e-6,
    "sinkhorn_eps": 1e-6,
    "post_mult": 2.0,
    "sinkhorn_iters": 20,
}
_BF16 = "bfloat16"


BENCH_META = {
    "swiglu": lambda T: {
        "T": T,
        "lead": [],
        "N": N,
        "dtype": _BF16,
        "regime": "normal",
        "options": dict(_SWIGLU_DSV4),
    },
    "fp8_quant": lambda T: {
        "M": T,
        "K": H,
        "dtype": _BF16,
        "regime": "normal",
        "options": {
            "group_size": 128,
            "scale_format": "fp32",
            "column_major_scales": False,
            "eps": 1e-10,
        },
    },
    # a weight quantizer: T rows of a [T, 7168] matrix, 128 x 128 blocks
    "fp8_block_quant": lambda T: {
        "lead": [],
        "R": T,
        "C": H,
        "dtype": _BF16,
        "regime": "normal",
        "options": {"block_shape": [128, 128], "scale_format": "fp32"},
    },
    "silu_mul_fp8_quant": lambda T: {
        "M": T,
        "N": N,
        "dtype": _BF16,
        "regime": "normal",
        "options": {
            "group_size": 128,
            "limit": 10.0,
            "clamp_mode": "pre",
            "scale_format": "fp32",
            "column_major_scales": False,
        },
    },
    "mxfp4_quant": lambda T: {
        "lead": [T],
        "K": H,
        "dtype": _BF16,
        "regime": "normal",
        "options": {"scale_rounding": "floor"},
    },
    "mxfp4_dequant": lambda T: {"lead": [T], "K": H, "dtype": _BF16, "scale_regime": "typical"},
    "route": lambda T: {
        "T": T,
        "dtype": "float32",
        "bias_dtype": "float32",
        "bias_regime": "random",
        "regime": "normal",
        "renormalize": True,
        "routed_scaling_factor": 2.5,
        "config": {"E": E, "method": "dsv3", "n_group": 8, "topk_group": 4, "k": K},
    },
    "moe_align": lambda T: {"T": T, "k": K, "E": E, "block_size": 64, "regime": "uniform"},
    "fused_moe": lambda T: {
        "T": T,
        "dtype": _BF16,
        "x_regime": "normal",
        "dims": {"quant": "fp8_block", "block_shape": [128, 128], "H": H, "N": N},
        "route": {"E": 32, "k": K, "routing": "uniform", "arwi": False},
        "options": {
            "swiglu_limit": 10.0,
            "swiglu_alpha": 1.0,
            "swiglu_beta": 0.0,
            "layout": "concat",
            "swiglu_clamp_mode": "pre",
        },
    },
    "sinkhorn": lambda T: {
        "T": T,
        "lead": "T",
        "n": HC,
        "iters": 20,
        "eps": 1e-6,
        "regime": "normal",
    },
    "mhc_pre": lambda T: {
        "T": T,
        "H": H,
        "hc": HC,
        "dtype": _BF16,
        "regime": "normal",
        "options": dict(_PRE_OPTS),
    },
    "mhc_post": lambda T: {
        "T": T,
        "H": H,
        "hc": HC,
        "dtype": _BF16,
        "regime": "normal",
        "x_dtype": "same",
        "post_shape": "3d",
    },
    "mhc_fused_post_pre": lambda T: {
        "T": T,
        "H": H,
        "hc": HC,
        "dtype": _BF16,
        "regime": "normal",
        "x_dtype": "same",
        "post_shape": "3d",
        "options": dict(_PRE_OPTS),
    },
    "mhc_head": lambda T: {
        "T": T,
        "H": H,
        "hc": HC,
        "dtype": _BF16,
        "regime": "normal",
        "options": {"rms_eps": 1e-6, "hc_eps": 1e-6},
    },
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
    "sinkhorn": None,
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
        # at most ~4 GiB of inputs: one huge set (fused_moe weights) is larger than L2 anyway
        fit = max(1, (4 << 30) // max(set_bytes, 1))
        return max(1, min(n, 64, fit))
    return max(1, min(4, math.ceil((32 << 20) / max(set_bytes, 1))))


CHUNK = 100  # calls enqueued per GPU sleep
GPU_CYCLES_PER_S = 2.0e9  # about the SM clock of an H100/H200 under load; only sizes the sleep


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
    host = (time.perf_counter() - t0) / min(n, 5)  # host time to enqueue one call
    sync()
    est = max((time.perf_counter() - t0) / min(n, 5), 1e-7)
    reps = int(min(max(5, rep_ms / 1e3 / est), 10_000))
    if cuda:
        # The GPU sleeps while the host enqueues a chunk of calls, so the events time the
        # kernels back to back rather than the host's launch latency (small T is launch-bound).
        sleep = getattr(torch.cuda, "_sleep", None)
        times = []
        for c0 in range(0, reps, CHUNK):
            m = min(CHUNK, reps - c0)
            starts = [torch.cuda.Event(enable_timing=True) for _ in range(m)]
            ends = [torch.cuda.Event(enable_timing=True) for _ in range(m)]
            if sleep is not None:
                sleep(int(min(2.0 * host * m, 0.5) * GPU_CYCLES_PER_S))
            for j in range(m):
                a, k = calls[(c0 + j) % n]
                starts[j].record()
                fn(*a, **k)
                ends[j].record()
            torch.cuda.synchronize()
            times += [st.elapsed_time(en) / 1e3 for st, en in zip(starts, ends)]
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
    from parity.catalog import get_impl, get_spec
    from parity.properties.case import as_tuple
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
        print("parity bench: tokens must be >= 0, --rep-ms > 0, --warmup-ms >= 0", file=sys.stderr)
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
        cases = [first] + [
            spec.build({**meta, "seed": meta.get("seed", 0) + i + 1}, device) for i in range(n - 1)
        ]
        base = None
        for impl in chosen:
            row = {
                "op": spec.name,
                "T": T,
                "impl": impl.name,
                "device": device,
                "case": first.describe(),
                "meta_source": source,
                "sets": n,
                "status": "ok",
                "median_us": None,
                "ratio": None,
                "gbps": None,
                "tflops": None,
                "iters": 0,
                "bytes": None,
                "note": "",
            }
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
            except Exception as e:  # report it, time the others
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

    def f(x, fmt):
        return "-" if x is None else format(x, fmt)

    cols = [
        ("T", lambda r: str(r["T"])),
        ("impl", lambda r: r["impl"]),
        ("time (us)", lambda r: f(r["median_us"], ".2f")),
        ("vs first", lambda r: f(r["ratio"], ".3f")),
    ]
    if any(r["gbps"] is not None for r in rows):
        cols.append(("GB/s", lambda r: f(r["gbps"], ".1f")))
    if any(r["tflops"] is not None for r in rows):
        cols.append(("TFLOP/s", lambda r: f(r["tflops"], ".2f")))
    cols += [
        ("iters", lambda r: str(r["iters"])),
        ("sets", lambda r: str(r["sets"])),
        ("status", lambda r: r["status"] + (f": {r['note'][:60]}" if r["note"] else "")),
    ]
    t = Table(title=f"parity bench: {op} on {device} (median per call)")
    for name, _ in cols:
        t.add_column(
            name,
            justify="left" if name in ("impl", "status") else "right",
            no_wrap=name != "status",
        )
    for r in rows:
        t.add_row(*(get(r) for _, get in cols))
    Console(width=max(100, Console().width)).print(t)
    if rows:
        print(f"case: {rows[0]['case']} (from {rows[0]['meta_source']}; T varies)")
