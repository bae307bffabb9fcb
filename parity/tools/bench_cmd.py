"""`parity bench --op OP --impl A --impl B ... [--device D] [--tokens 1,16,128] [--graph] [--json]`.

Median time per call after warm-up, for each implementation and token count, with the ratio to
the first implementation; for ops whose OpSpec says `memory_bound`, the achieved bandwidth
(every input read once plus every output written once, divided by the time) and its percentage
of the copy ceiling; for fused_moe, TFLOP/s and the weight-read floor (bytes of the experts the
case touches at the copy ceiling's rate) with the time's multiple of it.

The copy ceiling is measured in the same run: a device-to-device copy of 2 x 1 GiB on the GPU
(64 MiB on the CPU), timed like the kernels; its row is first.

Implementations: registered names, "reference", `module:function`, a peer of `PEERS` (another
library's kernel or a plain torch formulation: a baseline, never judged), or "all" (the
reference, every registered implementation and every peer of the op).

bench imports and runs the candidate in this process: timing needs the kernel next to the
clock (no worker round trip), and bench gives no verdict. A `module:function` that exits or
crashes at import is reported as the candidate's failure; one that crashes or hangs in a call
takes bench with it (`parity fuzz` isolates; bench does not).

Timing (eager): on a GPU, CUDA events around each call, over several input sets that together
exceed twice the L2 cache, rotated per iteration so no call finds its inputs in L2; the calls
are enqueued in chunks while the GPU sleeps (torch.cuda._sleep), so the events measure the
kernels and not the host's launch latency; one synchronize per chunk. On the CPU,
time.perf_counter around each call over a few rotated sets. Warm-up runs for --warmup-ms, then
enough calls for --rep-ms (at least 5).

--graph adds CUDA-graph replay beside eager: the calls over the rotated sets captured once in a
graph, the graph replayed and timed with events, per call. On the CPU it reports "not run on
cpu"; an implementation that cannot be captured (a host synchronisation) says so.

Each case is the op's representative description (`OpSpec.bench(T)`, DeepSeek-V4-like sizes),
else a draw of the op's strategy with T tokens. --meta JSON is merged over it (nested objects
merged key by key); repeat --meta to bench variants in one run (e.g. the three quant modes of
fused_moe: '{"dims": {"quant": "mxfp4"}}').

Exit 0 every benchmark ran, 1 an implementation raised or was unavailable, 2 usage.
"""

from __future__ import annotations

import json
import math
import statistics
import sys
import time
from types import SimpleNamespace


def add_parser(sub):
    p = sub.add_parser(
        "bench",
        help="time implementations against each other (bench imports and runs the candidate "
        "in this process)",
    )
    p.add_argument("--op", required=True)
    p.add_argument(
        "--impl",
        action="append",
        required=True,
        help="repeatable; first = baseline; 'all' = reference, registered and peers",
    )
    p.add_argument("--device", choices=["cpu", "cuda"], default=None)
    p.add_argument(
        "--tokens",
        default=None,
        help="comma-separated T values (default 1,16,128,1024,4096 on cuda, 1,16,128 on cpu)",
    )
    p.add_argument("--dtype", default=None, help="override the case dtype (e.g. float16)")
    p.add_argument(
        "--meta",
        action="append",
        default=None,
        help="JSON object merged over the case description; repeat for variants",
    )
    p.add_argument("--warmup-ms", type=float, default=25.0)
    p.add_argument("--rep-ms", type=float, default=100.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--graph", action="store_true", help="also time CUDA-graph replay")
    p.add_argument("--json", action="store_true", help="print the rows as JSON")
    return p


# --- representative cases ------------------------------------------------------------------


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
    if spec.bench is not None:
        return {**spec.bench(T), "seed": seed}, "spec.bench"
    from parity.tools.common import draw_metas

    size = "full" if device == "cuda" else "small"
    metas = draw_metas(spec.strategy(size=size, dtypes=None), 20, seed=seed)
    metas = [m for m in metas if m.get("T", 1) > 0] or metas
    meta = dict(metas[-1])  # later draws are less minimal than the first ones
    if "T" in meta:
        meta["T"] = T
    return meta, "strategy"


def merge(base: dict, over: dict) -> dict:
    """`over` merged into a copy of `base`, nested objects key by key."""
    out = dict(base)
    for k, v in over.items():
        out[k] = merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


# --- peers: baselines from outside parity, timed but never judged ---------------------------


def _flashinfer_silu_and_mul(x, *, limit=None, alpha=1.0, beta=0.0, layout="concat", **kw):
    """FlashInfer's silu_and_mul: the plain SwiGLU only (the launch-cost and bandwidth peer)."""
    if limit is not None or alpha != 1.0 or beta != 0.0 or layout != "concat":
        raise NotImplementedError("silu_and_mul: no clamp, alpha 1, beta 0, concat halves only")
    import flashinfer

    return flashinfer.activation.silu_and_mul(x)


def _torch_dequant_mm(x, w13, w2, topk_weights, topk_ids, *, quant="none", **kw):
    """fused_moe as a serving stack without a fused kernel does it: dequantize the weights to
    x.dtype (every call), then per expert gather its tokens, two torch GEMMs, scatter-add."""
    import torch

    from parity import reference as ref
    from parity.reference.quant import fp8_block_dequant
    from parity.reference.swiglu import swiglu_math

    if quant == "fp8_block":
        bs = tuple(kw.get("block_shape", (128, 128)))
        w13 = fp8_block_dequant(w13, kw["w13_scale"], bs).to(x.dtype)
        w2 = fp8_block_dequant(w2, kw["w2_scale"], bs).to(x.dtype)
    elif quant == "mxfp4":
        w13 = ref.mxfp4_dequant(w13, kw["w13_scale"], dtype=x.dtype)
        w2 = ref.mxfp4_dequant(w2, kw["w2_scale"], dtype=x.dtype)
    k = topk_ids.shape[1]
    out = torch.zeros(x.shape[0], w2.shape[1], device=x.device, dtype=torch.float32)
    flat = topk_ids.reshape(-1).long()
    order = torch.argsort(flat, stable=True)
    counts = torch.bincount(flat.clamp(min=0), minlength=w13.shape[0])
    counts[0] -= int((flat < 0).sum())  # skipped slots (-1) sort first
    start = int((flat < 0).sum())
    act = {
        "limit": kw.get("swiglu_limit"),
        "alpha": kw.get("swiglu_alpha", 1.0),
        "beta": kw.get("swiglu_beta", 0.0),
        "layout": kw.get("layout", "concat"),
        "clamp_mode": kw.get("swiglu_clamp_mode", "pre"),
    }
    for e, c in enumerate(counts.tolist()):
        if c == 0:
            continue
        idx = order[start : start + c]
        start += c
        tok = idx // k
        wt = topk_weights.reshape(-1)[idx, None].float()
        xin = x[tok]
        if kw.get("apply_router_weight_on_input"):
            xin, wt = (xin.float() * wt).to(x.dtype), torch.ones_like(wt)
        h = swiglu_math(xin @ w13[e].T, dtype=torch.float32, **act).to(x.dtype)
        out.index_add_(0, tok, (h @ w2[e].T).float() * wt)
    return out.to(x.dtype)


def _flashinfer_fused_topk_deepseek(logits, *, k, method="softmax", bias=None, **kw):
    """FlashInfer's fused_topk_deepseek called directly (outputs allocated here): DeepSeek-V3
    routing with renormalisation only; its limits (8 groups, 4 selected) are its own checks."""
    if method != "dsv3" or not kw.get("renormalize", True) or bias is None:
        raise NotImplementedError("fused_topk_deepseek: dsv3 with bias, renormalised, only")
    if kw.get("n_group", 1) > 8 or kw.get("topk_group", 1) > 4 or k > 8:
        # its Python check lets these through, its kernel has 8 warps and 4 top groups
        raise NotImplementedError("fused_topk_deepseek: n_group <= 8, topk_group <= 4, k <= 8")
    import torch
    from flashinfer.fused_moe import fused_topk_deepseek

    t = logits.shape[0]
    w = torch.empty(t, k, dtype=torch.float32, device=logits.device)
    ids = torch.empty(t, k, dtype=torch.int32, device=logits.device)
    fused_topk_deepseek(
        logits.float().contiguous(),
        bias.float().contiguous(),
        kw.get("n_group", 1),
        kw.get("topk_group", 1),
        k,
        kw.get("routed_scaling_factor", 1.0),
        w,
        ids,
    )
    return w, ids


PEERS = {
    "swiglu": {
        "flashinfer_silu_and_mul": (_flashinfer_silu_and_mul, ("cuda",), ("flashinfer",)),
    },
    "route": {
        "flashinfer_fused_topk_deepseek": (
            _flashinfer_fused_topk_deepseek,
            ("cuda",),
            ("flashinfer",),
        ),
    },
    "fused_moe": {"torch_dequant_mm": (_torch_dequant_mm, ("cpu", "cuda"), ())},
}


def resolve_impls(op: str, names: list[str]) -> list:
    from parity.campaign.candidate import import_in_process, lookup
    from parity.catalog import get_impl, impls
    from parity.registry import Impl

    def peer(name):
        fn, devices, requires = PEERS[op][name]
        return Impl(op=op, name=name, backend="peer", fn=fn, devices=devices, requires=requires)

    out = []
    for name in names:
        if name == "all":  # what is not named already
            have = {i.name for i in out} | set(names)
            every = impls(op, include_reference=True) + [peer(n) for n in PEERS.get(op, {})]
            out += [i for i in every if i.name not in have]
        elif name in PEERS.get(op, {}):
            out.append(peer(name))
        elif ":" in name:  # timing needs the kernel here: imported in this process, on purpose
            out.append(import_in_process(lookup(op, name)))
        else:
            out.append(get_impl(op, name))
    return out


# --- timing --------------------------------------------------------------------------------


def prepared_cases(impl, cases) -> list:
    """The input sets as the kernel takes them: each through the implementation's prepare step
    once, before any timing (a layout made at load time is not the kernel's time); a prepare
    that raises is the row's error (`checks.PrepareFailed`)."""
    if impl.prepare is None:
        return cases
    from parity.properties.case import Case
    from parity.properties.checks import prepared

    out = []
    for c in cases:
        c = c.clone()
        a, k = prepared(impl.prepare, c.args, c.kwargs)
        out.append(Case(c.op, a, k, c.meta, c.device))
    return out


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


def time_graph(fn, cases, eager_s: float, rep_ms: float) -> float:
    """Median seconds per call under CUDA-graph replay: the calls over the rotated sets captured
    once (short calls several times over, so one replay's launch is amortised), then replayed."""
    import torch

    calls = [(c.args, c.kwargs) for c in cases]
    n = len(calls)
    per_graph = n * max(1, min(20, int(1e-3 / max(eager_s * n, 1e-9))))
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # lazy initialisation (JIT, allocations) outside the capture
        for a, k in calls[: min(n, 3)]:
            fn(*a, **k)
    torch.cuda.current_stream().wait_stream(side)
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for j in range(per_graph):
            a, k = calls[j % n]
            fn(*a, **k)
    graph.replay()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    graph.replay()
    end.record()
    end.synchronize()
    est = max(start.elapsed_time(end) / 1e3, 1e-7)
    times = []
    for _ in range(int(min(max(5, rep_ms / 1e3 / est), 1000))):
        start.record()
        graph.replay()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / 1e3 / per_graph)
    del graph
    return statistics.median(times)


def copy_ceiling(device: str, warmup_ms: float, rep_ms: float) -> dict:
    """A device-to-device copy, timed like the kernels: the bandwidth a memory-bound kernel
    cannot beat (bytes read + bytes written per second)."""
    import torch

    n = (1 << 30) if device == "cuda" else (64 << 20)
    src = torch.empty(n, dtype=torch.uint8, device=device).fill_(1)
    dst = torch.empty_like(src)
    case = SimpleNamespace(args=(dst, src), kwargs={})
    sec, reps = time_calls(torch.Tensor.copy_, [case], device, warmup_ms, rep_ms)
    del src, dst
    return {"median_us": sec * 1e6, "iters": reps, "bytes": 2 * n, "gbps": 2 * n / sec / 1e9}


# --- work per call -------------------------------------------------------------------------


def _fused_moe_flops(case) -> float:
    # two GEMMs per routed (token, expert): 2*(2N*H) + 2*(H*N) flops
    x, w13 = case.args[0], case.args[1]
    ids = case.args[4]
    routed = int((ids >= 0).sum())
    two_n, h = w13.shape[1], x.shape[1]
    return 6.0 * routed * (two_n // 2) * h


def _fused_moe_weight_bytes(case) -> int:
    """Bytes of the weights (and scales) of the experts the case routes to: what one call must
    read at least once."""
    ids = case.args[4]
    touched = int(ids[ids >= 0].unique().numel())
    per_expert = [case.args[1], case.args[2]]
    per_expert += [case.kwargs.get(s) for s in ("w13_scale", "w2_scale")]
    return sum(t[0].numel() * t.element_size() * touched for t in per_expert if t is not None)


FLOPS = {"fused_moe": _fused_moe_flops}
FLOOR_BYTES = {"fused_moe": _fused_moe_weight_bytes}


# --- the command ---------------------------------------------------------------------------


def _row(**kw) -> dict:
    row = {
        "op": None,
        "variant": "",
        "T": None,
        "impl": None,
        "device": None,
        "case": "",
        "meta_source": "",
        "sets": 0,
        "status": "ok",
        "median_us": None,
        "ratio": None,
        "gbps": None,
        "pct_copy": None,
        "tflops": None,
        "floor_us": None,
        "x_floor": None,
        "graph_us": None,
        "graph_status": "",
        "iters": 0,
        "bytes": None,
        "note": "",
    }
    row.update(kw)
    return row


def run(args) -> int:
    from parity.campaign.candidate import CandidateFailed, ImportUsage
    from parity.catalog import get_spec
    from parity.properties.case import as_tuple
    from parity.tools.common import add_sys_path_cwd, default_device

    add_sys_path_cwd()
    device = default_device(args.device)
    try:
        spec = get_spec(args.op)
        chosen = resolve_impls(spec.name, args.impl)
        default_tokens = "1,16,128,1024,4096" if device == "cuda" else "1,16,128"
        tokens = [int(t) for t in (args.tokens or default_tokens).split(",") if t.strip()]
        variants = [json.loads(m) for m in (args.meta or ["{}"])]
        if not all(isinstance(v, dict) for v in variants):
            raise ValueError("--meta must be a JSON object")
    except CandidateFailed as e:  # its import exited: the candidate's failure
        print(f"parity bench: {e}", file=sys.stderr)
        return 1
    except (KeyError, ImportError, ImportUsage, AttributeError, TypeError, ValueError) as e:
        print(f"parity bench: {e}", file=sys.stderr)
        return 2
    if any(t < 0 for t in tokens) or args.rep_ms <= 0 or args.warmup_ms < 0:
        print("parity bench: tokens must be >= 0, --rep-ms > 0, --warmup-ms >= 0", file=sys.stderr)
        return 2
    import torch

    ceiling = copy_ceiling(device, args.warmup_ms, args.rep_ms)
    rows = [
        _row(
            op=spec.name,
            impl="copy (ceiling)",
            device=device,
            case=f"copy_ of {ceiling['bytes'] // 2 >> 20} MiB",
            median_us=ceiling["median_us"],
            gbps=ceiling["gbps"],
            pct_copy=100.0,
            iters=ceiling["iters"],
            bytes=ceiling["bytes"],
            graph_status="not run on cpu" if device != "cuda" and args.graph else "",
        )
    ]
    bad = False
    for over in variants:
        variant = json.dumps(over, sort_keys=True) if over else ""
        for T in tokens:
            meta, source = bench_meta(spec, T, seed=args.seed, device=device)
            meta = merge(meta, over)
            if args.dtype:
                meta["dtype"] = args.dtype
            first = spec.build(meta, device)
            in_bytes = tensor_bytes(first.tensors().values())
            n = _n_sets(in_bytes, device)
            cases = [first] + [
                spec.build({**meta, "seed": meta.get("seed", 0) + i + 1}, device)
                for i in range(n - 1)
            ]
            base = None
            for impl in chosen:
                row = _row(
                    op=spec.name,
                    variant=variant,
                    T=T,
                    impl=impl.name,
                    device=device,
                    case=first.describe(),
                    meta_source=source,
                    sets=n,
                )
                rows.append(row)
                ok, why = impl.availability(device)
                if not ok:
                    row.update(status="unavailable", note=why)
                    bad = True
                    continue
                try:
                    runs = prepared_cases(impl, cases)
                    outs = as_tuple(runs[0].call(impl.fn))
                    sec, reps = time_calls(impl.fn, runs, device, args.warmup_ms, args.rep_ms)
                except NotImplementedError as e:
                    row.update(status="unsupported", note=str(e))
                    continue
                except Exception as e:  # report it, time the others
                    row.update(status="error", note=f"{type(e).__name__}: {e}")
                    bad = True
                    continue
                row.update(median_us=sec * 1e6, iters=reps)
                if spec.memory_bound:
                    nbytes = in_bytes + tensor_bytes(outs)
                    gbps = nbytes / sec / 1e9
                    row.update(bytes=nbytes, gbps=gbps, pct_copy=100.0 * gbps / ceiling["gbps"])
                if spec.name in FLOPS:
                    row["tflops"] = FLOPS[spec.name](first) / sec / 1e12
                if spec.name in FLOOR_BYTES:
                    floor = FLOOR_BYTES[spec.name](first) / (ceiling["gbps"] * 1e9)
                    row.update(floor_us=floor * 1e6, x_floor=sec / floor if floor else None)
                if base is None:
                    base = sec
                row["ratio"] = sec / base
                if args.graph:
                    row["graph_status"] = _graph(row, impl.fn, runs, device, sec, args.rep_ms)
                del runs
            del cases, first
            if device == "cuda":
                torch.cuda.empty_cache()
    if args.json:
        from parity.tools.common import json_out

        print(json.dumps(rows, indent=1), file=json_out())
    else:
        _table(rows, spec.name, device, args.graph)
    return 1 if bad else 0


def _graph(row: dict, fn, cases, device: str, eager_s: float, rep_ms: float) -> str:
    if device != "cuda":
        return "not run on cpu"
    import torch

    try:
        sec = time_graph(fn, cases, eager_s, rep_ms)
    except Exception as e:  # e.g. a host synchronisation inside the call
        try:
            torch.cuda.synchronize()
        except Exception:
            pass
        return f"not capturable: {type(e).__name__}: {e}"[:200]
    row["graph_us"] = sec * 1e6
    return "ok"


def _table(rows, op, device, graph: bool) -> None:
    from rich.console import Console
    from rich.table import Table

    def f(x, fmt):
        return "-" if x is None else format(x, fmt)

    cols = []
    if len({r["variant"] for r in rows[1:]}) > 1:
        cols.append(("variant", lambda r: r["variant"][:32]))
    cols += [
        ("T", lambda r: "-" if r["T"] is None else str(r["T"])),
        ("impl", lambda r: r["impl"]),
        ("time (us)", lambda r: f(r["median_us"], ".2f")),
    ]
    if graph:
        cols.append(("graph (us)", _graph_cell))
    cols.append(("vs first", lambda r: f(r["ratio"], ".3f")))
    if any(r["gbps"] is not None for r in rows[1:]):
        cols += [
            ("GB/s", lambda r: f(r["gbps"], ".1f")),
            ("% copy", lambda r: f(r["pct_copy"], ".1f")),
        ]
    if any(r["tflops"] is not None for r in rows):
        cols.append(("TFLOP/s", lambda r: f(r["tflops"], ".2f")))
    if any(r["floor_us"] is not None for r in rows):
        cols.append(("x floor", lambda r: f(r["x_floor"], ".2f")))
    cols += [
        ("iters", lambda r: str(r["iters"])),
        ("sets", lambda r: str(r["sets"])),
        ("status", _status),
    ]
    t = Table(title=f"parity bench: {op} on {device} (median per call)")
    for name, _ in cols:
        t.add_column(
            name,
            justify="left" if name in ("variant", "impl", "status") else "right",
            no_wrap=name != "status",
        )
    for r in rows:
        t.add_row(*(get(r) for _, get in cols))
    Console(width=max(140, Console().width)).print(t)
    for variant in dict.fromkeys(r["variant"] for r in rows[1:]):
        first = next(r for r in rows[1:] if r["variant"] == variant)
        over = f" with {variant}" if variant else ""
        print(f"case{over}: {first['case']} (from {first['meta_source']}; T varies)")


def _status(r) -> str:
    return r["status"] + (f": {r['note'][:60]}" if r["note"] else "")


def _graph_cell(r) -> str:
    if r["graph_us"] is not None:
        return format(r["graph_us"], ".2f")
    return (r["graph_status"] or "-")[:40]
