"""Golden tables: fixed cases at the edges where implementations switch paths, run against every
implementation of the op that is available on the device.

A row names an op, a case (a description for the op's `build`, or a builder of explicit
inputs), the properties that must hold on it, and one line of why the case is there. Every
verdict comes from the engine: `matches_reference` is the op's own `OpSpec.compare` (its
tolerance model against the float64 oracle), the others are the shared properties of
`parity.properties.checks`. No private tolerance, no timer.

The rows replace the threshold-neighbour checks of the former scripts/gpu_issue5.py:
- T on both sides of every token threshold a backend switches paths on (TileLang: the fused
  post+pre kernel for T <= 128, tensor-core partials from T = 128 on, for bfloat16 streams with
  hc*H a multiple of 64): 127, 128, 129, with H that tiles and H that does not;
- odd shapes (H not a multiple of any tile, hc != 4, hc = 1, hc = 8), mixed x/residual dtypes,
  the two post_mix layouts; T = 0;
- FlashInfer's limits: swiglu with a clamp it does not implement, fused_topk_deepseek beyond
  8 groups / 4 selected groups, and scores that underflow (its +1e-20 in the renormalisation);
- bad input (every mutation the spec declares) and NaN input at a threshold shape.

Rows too large for a CPU run are `gpu_only` and reported NOT RUN there. An implementation that
raises NotImplementedError on a row is reported "unsupported" (never a pass); the reference must
support every row.

    python -m parity.properties.golden --device cuda [--op OP] [--impl NAME] [--json PATH]

Exit 0 no failure, 1 a failure, 2 usage (an unknown --op or --impl), 3 nothing ran.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from parity.properties.case import Case, Gen
from parity.properties.checks import evaluate

PASS, FAIL, UNSUPPORTED, NOT_RUN = "pass", "fail", "unsupported", "not run"

# A row whose float64 oracle takes more than a second or so on a CPU core is for the GPU only.
CPU_ELEMENTS = 1 << 18


@dataclass(frozen=True)
class Row:
    op: str
    name: str  # short and unique within the op: what the case is
    meta: dict  # the description `build` turns into a case (seed included)
    why: str
    holds: tuple[str, ...] = ("matches_reference",)
    build: Callable[[dict, str], Case] | None = None  # explicit inputs; None: the spec's build
    gpu_only: bool = False
    each_mutation: bool = False  # error_parity over every mutation the spec declares

    @property
    def id(self) -> str:
        return f"{self.op}:{self.name}"


@dataclass
class Result:
    row: str
    op: str
    impl: str
    prop: str
    status: str
    message: str = ""
    seconds: float = 0.0
    meta: dict = field(default_factory=dict)


# --- the tables -----------------------------------------------------------------------------

BF16, F16, F32 = "bfloat16", "float16", "float32"
# TileLang's path switches (parity/optimized/tilelang/mhc.py, FUSED_MAX_TOKENS and
# PRE_TC_MIN_TOKENS); tests/test_golden_tables.py asserts the rows sit on both sides of them.
MHC_THRESHOLDS = (128,)
_PRE_OPTS = {
    "rms_eps": 1e-6,
    "pre_eps": 1e-6,
    "sinkhorn_eps": 1e-6,
    "post_mult": 2.0,
    "sinkhorn_iters": 20,
}


def _neighbours(*ts: int) -> list[int]:
    return sorted({v for t in ts for v in (t - 1, t, t + 1)})


def _stream(op: str, t: int, hc: int, h: int, dtype: str, *, why: str, **extra) -> Row:
    meta = {"T": t, "H": h, "hc": hc, "dtype": dtype, "regime": "normal", "seed": t * 31 + h}
    if op in ("mhc_post", "mhc_fused_post_pre"):
        meta.update(x_dtype="same", post_shape="3d")
    if op in ("mhc_pre", "mhc_fused_post_pre"):
        meta["options"] = dict(_PRE_OPTS)
    if op == "mhc_head":
        meta["options"] = {"rms_eps": 1e-6, "hc_eps": 1e-6}
    holds = extra.pop("holds", ("matches_reference",))
    each = extra.pop("each_mutation", False)
    meta.update(extra)
    name = f"T={t},hc={hc},H={h},{dtype}" + "".join(f",{k}={v}" for k, v in extra.items())
    if holds != ("matches_reference",):
        name += ",bad input" if each else f",{'+'.join(holds)}"
    return Row(
        op,
        name,
        meta,
        why,
        holds=holds,
        gpu_only=t * hc * h > CPU_ELEMENTS,
        each_mutation=each,
    )


def _mhc_rows() -> list[Row]:
    rows: list[Row] = []
    big = (4096, 7168)  # DeepSeek-V3/V4 hidden sizes: both tile, 7168 = 112 x 64
    th = _neighbours(*MHC_THRESHOLDS)
    # mhc_post: one kernel, no switch; shapes, dtypes and layouts
    for t in (0, 1, 4, 16, 33, 4096):
        for h in big:
            rows.append(_stream("mhc_post", t, 4, h, BF16, why="decode and prefill sizes"))
    rows += [
        _stream("mhc_post", 7, 4, 100, BF16, post_shape="2d", why="H not a tile; 2-D post_mix"),
        _stream("mhc_post", 5, 3, 100, F16, x_dtype=F32, why="hc = 3, float32 x, float16 streams"),
        _stream("mhc_post", 3, 2, 7, F32, x_dtype=F16, why="hc = 2, float16 x, float32 streams"),
        _stream("mhc_post", 2, 1, 1, BF16, why="hc = 1, H = 1"),
        _stream("mhc_post", 128, 4, 4096, BF16, post_shape="2d", why="2-D post_mix, T = 128"),
        _stream("mhc_post", 9, 8, 520, BF16, why="hc = 8"),
        _stream("mhc_post", 5, 4, 4100, BF16, why="H = 4096 + 4: a tail past the last tile"),
        _stream(
            "mhc_post",
            3,
            4,
            64,
            BF16,
            holds=("matches_reference", "inputs_unchanged", "deterministic"),
            why="inputs untouched, two calls equal",
        ),
        _stream("mhc_post", 3, 4, 64, BF16, nan=True, holds=("nan_policy",), why="NaN input"),
        _stream(
            "mhc_post", 3, 4, 64, BF16, holds=("error_parity",), each_mutation=True, why="bad input"
        ),
    ]
    # mhc_pre: FMA partials below 128 tokens, tensor cores from 128 on (bf16, hc*H % 64 == 0)
    for t in sorted({0, 1, 2, 4, 16, 1024, 8192, *th}):
        for h in big:
            rows.append(_stream("mhc_pre", t, 4, h, BF16, why="FMA / tensor-core switch at 128"))
    for t in th:  # the same switch at a size the CPU can check the reference on
        rows.append(_stream("mhc_pre", t, 4, 64, BF16, why="switch at 128, hc*H = 256 tiles"))
        rows.append(_stream("mhc_pre", t, 4, 100, BF16, why="switch at 128, hc*H does not tile"))
        rows.append(_stream("mhc_pre", t, 4, 64, F16, why="switch at 128, float16: FMA only"))
    rows += [
        _stream("mhc_pre", 5, 4, 100, BF16, why="H not a tile"),
        _stream("mhc_pre", 70, 4, 96, BF16, why="hc*H = 384"),
        _stream("mhc_pre", 3, 2, 33, F32, why="hc = 2, float32 streams"),
        _stream("mhc_pre", 66, 3, 48, F16, why="hc = 3, float16 streams"),
        _stream("mhc_pre", 2, 1, 64, BF16, why="hc = 1"),
        _stream("mhc_pre", 65, 8, 64, BF16, why="hc = 8: 80 mixes, beyond the 32 of tensor cores"),
        _stream("mhc_pre", 129, 4, 64, BF16, nan=True, holds=("nan_policy",), why="NaN input"),
        _stream(
            "mhc_pre", 3, 4, 64, BF16, holds=("error_parity",), each_mutation=True, why="bad input"
        ),
    ]
    # mhc_fused_post_pre: one fused kernel for T <= 128, mhc_post + mhc_pre above
    for t in sorted({0, 1, 4, 16, *th}):
        for h in big:
            rows.append(_stream("mhc_fused_post_pre", t, 4, h, BF16, why="fused / unfused at 128"))
    for t in th:
        rows.append(_stream("mhc_fused_post_pre", t, 4, 64, BF16, why="switch at 128, small H"))
    rows += [
        _stream("mhc_fused_post_pre", 5, 3, 100, F32, why="hc = 3, float32"),
        _stream("mhc_fused_post_pre", 129, 2, 64, F16, why="unfused, hc = 2, float16"),
        _stream("mhc_fused_post_pre", 7, 4, 100, BF16, post_shape="2d", why="2-D post_mix"),
        _stream(
            "mhc_fused_post_pre",
            128,
            4,
            64,
            BF16,
            nan=True,
            holds=("nan_policy",),
            why="NaN input, fused path",
        ),
        _stream(
            "mhc_fused_post_pre",
            3,
            4,
            64,
            BF16,
            holds=("error_parity",),
            each_mutation=True,
            why="bad input",
        ),
    ]
    # mhc_head: the partials of mhc_pre (same switch), one mix per stream
    for t in sorted({0, 1, 5, 64, 300, *th}):
        for h in big:
            rows.append(_stream("mhc_head", t, 4, h, BF16, why="FMA / tensor-core switch at 128"))
    rows += [
        _stream("mhc_head", 7, 3, 100, F16, why="hc = 3, float16"),
        _stream("mhc_head", 65, 2, 64, BF16, why="hc = 2"),
        *(_stream("mhc_head", t, 4, 64, BF16, why="switch at 128, small H") for t in th),
        _stream(
            "mhc_head", 3, 4, 64, BF16, holds=("error_parity",), each_mutation=True, why="bad input"
        ),
    ]
    # sinkhorn: one thread per matrix, n <= 8
    for t, lead, n, iters, eps, regime, why in [
        (0, "T", 4, 20, 1e-6, "normal", "T = 0"),
        (5, "T", 4, 20, 1e-6, "large", "saturated softmax"),
        (3, "T2", 4, 1, 1e-6, "normal", "two batch dims, one iteration"),
        (2, "T", 2, 2, 0.25, "normal", "n = 2, large eps"),
        (100_000, "T", 4, 20, 1e-6, "one_hot", "many matrices: every program's tail"),
        (9, "T", 1, 3, 1e-6, "normal", "n = 1"),
        (33, "T", 8, 20, 1e-6, "normal", "n = 8, the largest in registers"),
        (17, "T", 3, 7, 1e-3, "near_uniform", "n = 3"),
        (4, "none", 4, 20, 1e-6, "normal", "one matrix, no batch dim"),
    ]:
        meta = {"T": t, "lead": lead, "n": n, "iters": iters, "eps": eps, "regime": regime}
        rows.append(
            Row(
                "sinkhorn",
                f"T={t},lead={lead},n={n},iters={iters},eps={eps},{regime}",
                {**meta, "seed": t + n},
                why,
                gpu_only=t * n * n > CPU_ELEMENTS,
            )
        )
    rows.append(
        Row(
            "sinkhorn",
            "bad input",
            {"T": 3, "lead": "T", "n": 4, "iters": 20, "eps": 1e-6, "regime": "normal", "seed": 1},
            "bad input",
            holds=("error_parity",),
            each_mutation=True,
        )
    )
    return rows


_SWIGLU_PLAIN = {"limit": None, "alpha": 1.0, "beta": 0.0, "layout": "concat", "clamp_mode": "pre"}


def _swiglu(t, n, dtype, *, why, regime="normal", options=None, holds=("matches_reference",)):
    opts = {**_SWIGLU_PLAIN, **(options or {})}
    meta = {"T": t, "lead": [], "N": n, "dtype": dtype, "options": opts, "regime": regime}
    name = f"T={t},N={n},{dtype},{regime}" + "".join(
        f",{k}={v}" for k, v in (options or {}).items()
    )
    return Row("swiglu", name, {**meta, "seed": t + n}, why, holds=holds)


def _swiglu_rows() -> list[Row]:
    return [
        _swiglu(0, 64, BF16, why="T = 0"),
        _swiglu(1, 64, BF16, why="one token"),
        _swiglu(7, 1000, F16, regime="wide", why="N not a power of two, float16"),
        _swiglu(128, 4096, BF16, why="a full tile of tokens"),
        _swiglu(33, 7, BF16, why="N = 7: every row a tail"),
        _swiglu(4, 2048, F16, why="the V4 intermediate size"),
        _swiglu(
            5,
            64,
            BF16,
            regime="across_limit",
            options={"limit": 7.0},
            why="a clamp FlashInfer does not implement: unsupported, never wrong",
        ),
        _swiglu(
            9,
            2048,
            BF16,
            regime="across_limit",
            options={"limit": 10.0},
            why="DeepSeek-V4's clamp",
        ),
        _swiglu(3, 64, BF16, options={"layout": "interleaved"}, why="interleaved gate/up"),
        _swiglu(
            3,
            64,
            BF16,
            holds=("inputs_unchanged", "deterministic", "writes_all_outputs"),
            why="inputs untouched, two calls equal, every element written",
        ),
    ]


def _route(t, dtype, cfg, *, why, regime="normal", bias_regime="random", holds=None):
    meta = {
        "T": t,
        "config": cfg,
        "renormalize": True,
        "routed_scaling_factor": 2.5,
        "dtype": dtype,
        "bias_dtype": F32,
        "regime": regime,
        "bias_regime": bias_regime,
        "seed": t + cfg["E"],
    }
    cfg_s = ",".join(f"{k}={v}" for k, v in cfg.items())
    return Row(
        "route",
        f"T={t},{dtype},{cfg_s},{regime}",
        meta,
        why,
        holds=holds or ("matches_reference",),
        gpu_only=t * cfg["E"] > CPU_ELEMENTS // 4,  # the Triton interpreter: ~10 s at T = 1000
    )


def _underflow_build(meta: dict, device: str) -> Case:
    """Logits near -60: every sigmoid score is about 1e-26, so a renormalisation that adds a
    constant to the sum (FlashInfer's 1e-20) is visible in the weights."""
    g = Gen(meta["seed"], device)
    t, e = meta["T"], meta["config"]["E"]
    logits = g.normal((t, e)) - 60.0
    cfg = meta["config"]
    kw = {
        "k": cfg["k"],
        "method": "dsv3",
        "bias": torch.zeros(e, device=device),
        "n_group": cfg["n_group"],
        "topk_group": cfg["topk_group"],
        "renormalize": True,
        "routed_scaling_factor": 1.0,
    }
    return Case("route", (logits,), kw, meta, str(device))


def _route_rows() -> list[Row]:
    v3 = {"E": 256, "method": "dsv3", "n_group": 8, "topk_group": 4, "k": 8}
    rows = [
        _route(t, dt, v3, why="DeepSeek-V3 router")
        for t in (0, 1, 4, 128, 1000)
        for dt in (F32, BF16)
    ]
    rows += [
        _route(64, F32, {**v3, "n_group": 16}, why="16 groups: beyond fused_topk_deepseek's 8"),
        _route(
            64,
            F32,
            {"E": 128, "method": "dsv3", "n_group": 8, "topk_group": 5, "k": 8},
            why="5 selected groups: beyond fused_topk_deepseek's 4",
        ),
        _route(33, F32, v3, regime="ties", why="exact ties at the k-th key: lower expert id wins"),
        _route(33, F32, v3, regime="negative", bias_regime="negative", why="all-negative keys"),
        _route(
            33,
            F32,
            {"E": 256, "method": "dsv3", "n_group": 1, "topk_group": 1, "k": 1},
            bias_regime="negative",
            why="no groups, top-1, every key negative: candidate slots beyond k must not take part "
            "(FlashInfer's single-group kernel returned expert 0, H100 2026-12-06)",
        ),
        _route(
            33,
            F32,
            {"E": 256, "method": "sqrtsoftplus", "n_group": 1, "topk_group": 1, "k": 6},
            bias_regime="dsv4",
            why="DeepSeek-V4-Flash router",
        ),
        Row(
            "route",
            f"T=4,logits~-60,{','.join(f'{k}={v}' for k, v in v3.items())}",
            {"T": 4, "config": v3, "seed": 60, "explicit": "underflow"},
            "scores underflow to ~1e-26: the renormalisation must not add a constant",
            build=_underflow_build,
        ),
        _with_each(_route(17, F32, v3, holds=("error_parity",), why="bad input")),
    ]
    return rows


def _with_each(row: Row) -> Row:
    return dataclasses.replace(row, name=row.name + ",bad input", each_mutation=True)


TABLE: tuple[Row, ...] = (*_mhc_rows(), *_swiglu_rows(), *_route_rows())


def rows(ops=None) -> list[Row]:
    return [r for r in TABLE if ops is None or r.op in ops]


# --- running --------------------------------------------------------------------------------


def cases_of(row: Row, spec, device: str) -> list[tuple[str, Case]]:
    """(label, case) pairs of a row: one case, or one per declared mutation."""
    build = row.build or spec.build
    if not row.each_mutation:
        return [("", build(dict(row.meta), device))]
    names = getattr(spec, "mutations", None) or _mutation_names(spec)
    return [(f"invalid={m}", build({**row.meta, "invalid": m}, device)) for m in names]


def _mutation_names(spec) -> tuple[str, ...]:
    """The mutations of a spec that predates `OpSpec.mutations`: drawn from its strategy."""
    from hypothesis import HealthCheck, Phase, given, settings

    seen: set[str] = set()

    @settings(
        max_examples=200,
        phases=[Phase.generate],
        database=None,
        deadline=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(spec.invalid(size="small"))
    def collect(meta):
        seen.add(meta["invalid"])

    collect()
    return tuple(sorted(seen))


def run_row(row: Row, impl, device: str) -> list[Result]:
    """Every property of `row` on `impl`, on `device`: results in the order of `holds`."""
    from parity.catalog import get_spec

    def result(prop, status, message="", seconds=0.0, label=""):
        name = row.id + (f" [{label}]" if label else "")
        return Result(name, row.op, impl.name, prop, status, message, seconds, dict(row.meta))

    if row.gpu_only and device != "cuda":
        return [
            result(p, NOT_RUN, "NOT RUN: a GPU-only row (too large for a CPU run)")
            for p in row.holds
        ]
    ok, why = impl.availability(device)
    if not ok:
        return [result(p, NOT_RUN, f"NOT RUN: {why}") for p in row.holds]
    spec = get_spec(row.op)
    declared = tuple(getattr(impl, "accept", ()) or ())  # its named conventions, if any
    out = []
    try:
        cases = cases_of(row, spec, device)
    except Exception as e:  # a row the spec cannot build is a broken table, never a pass
        return [result(p, FAIL, f"row does not build: {type(e).__name__}: {e}") for p in row.holds]
    for label, case in cases:
        if impl.dtypes is not None and not _dtypes_ok(case, impl.dtypes):
            out += [
                result(p, NOT_RUN, "NOT RUN: dtype outside the implementation's", label=label)
                for p in row.holds
            ]
            continue
        for prop in row.holds:
            t0 = time.perf_counter()
            try:
                status, verdict = evaluate(spec, prop, impl.fn, case, accept=declared)
            except AssertionError as e:  # the engine's own consistency checks
                status, verdict = FAIL, None
                msg = f"{type(e).__name__}: {e}"
            else:
                msg = verdict.message if verdict is not None else ""
            if device == "cuda":
                torch.cuda.synchronize()
            if status == "unsupported" and impl.reference:
                status, msg = FAIL, f"the reference does not support the row: {msg}"
            elif status == "n/a":
                status = NOT_RUN
            if declared:  # judged under the library conventions it declares: said so
                msg = f"[under {', '.join(declared)}] {msg}".rstrip()
            out.append(result(prop, status, msg, time.perf_counter() - t0, label))
    return out


def _dtypes_ok(case: Case, dtypes) -> bool:
    want = case.meta.get("dtype")
    return want is None or any(str(d).replace("torch.", "") == want for d in dtypes)


def run_table(
    device: str, *, ops=None, impl_names=None, impls=None, budget_s=None, table=None, each=None
):
    """Results of every row on every implementation of its op (the reference included), or on
    `impls` (Impl objects) where given. Rows left when `budget_s` runs out are NOT RUN.
    `each(results)` is called after every row (a run cut short keeps what it checked)."""
    from parity.catalog import impls as catalog_impls

    t0 = time.perf_counter()
    results: list[Result] = []
    chosen = table if table is not None else rows(ops)
    for row in chosen:
        cands = impls if impls is not None else catalog_impls(row.op, include_reference=True)
        cands = [i for i in cands if i.op == row.op]
        if impl_names:
            cands = [i for i in cands if i.name in impl_names]
        for impl in cands:
            if budget_s is not None and time.perf_counter() - t0 > budget_s:
                results += [
                    Result(row.id, row.op, impl.name, p, NOT_RUN, "NOT RUN: budget spent")
                    for p in row.holds
                ]
                continue
            results += run_row(row, impl, device)
        if each is not None:
            each(results)
    return results


def summary(results: list[Result]) -> str:
    by: dict = {}
    for r in results:
        c = by.setdefault((r.op, r.impl), {PASS: 0, FAIL: 0, UNSUPPORTED: 0, NOT_RUN: 0})
        c[r.status] += 1
    lines = [f"{'op':20} {'impl':12} {'pass':>5} {'fail':>5} {'unsup':>5} {'not run':>7}"]
    for (op, impl), c in by.items():
        lines.append(
            f"{op:20} {impl:12} {c[PASS]:5d} {c[FAIL]:5d} {c[UNSUPPORTED]:5d} {c[NOT_RUN]:7d}"
        )
    for r in results:
        if r.status == FAIL:
            lines.append(f"FAIL {r.impl} {r.row} {r.prop}: {r.message[:200]}")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m parity.properties.golden", description=__doc__)
    ap.add_argument("--device", choices=["cpu", "cuda"], default=None)
    ap.add_argument("--op", action="append", default=None, help="repeatable; default: all")
    ap.add_argument("--impl", action="append", default=None, help="repeatable; default: all")
    ap.add_argument("--budget", type=float, default=None, help="seconds; later rows NOT RUN")
    ap.add_argument("--json", default=None, metavar="PATH", help="write every result here")
    ap.add_argument("--list", action="store_true", help="print the rows and exit")
    a = ap.parse_args(argv)
    from parity._interp import use_triton_interpreter_without_gpu

    use_triton_interpreter_without_gpu()  # before anything imports triton
    device = a.device or ("cuda" if torch.cuda.is_available() else "cpu")
    known = {r.op for r in TABLE}
    if a.op and not set(a.op) <= known:
        print(
            f"golden: --op: no table for {sorted(set(a.op) - known)}; tables: {sorted(known)}",
            file=sys.stderr,
        )
        return 2
    if a.impl:  # a typo must not turn the gate green with nothing run
        from parity.catalog import impls

        names = {"reference"} | {i.name for op in (a.op or known) for i in impls(op)}
        unknown = sorted(set(a.impl) - names)
        if unknown:
            print(f"golden: --impl: unknown {unknown}; known: {sorted(names)}", file=sys.stderr)
            return 2
    if a.list:
        for r in rows(a.op):
            gpu = " (GPU only)" if r.gpu_only else ""
            print(f"{r.id}{gpu}: {', '.join(r.holds)}; {r.why}")
        return 0

    def save(results):
        if a.json:
            doc = {"device": device, "results": [dataclasses.asdict(r) for r in results]}
            with open(a.json, "w") as fh:
                json.dump(doc, fh, indent=1, default=str)

    t0 = time.perf_counter()
    results = run_table(device, ops=a.op, impl_names=a.impl, budget_s=a.budget, each=save)
    save(results)
    print(summary(results))
    n = {s: sum(r.status == s for r in results) for s in (PASS, FAIL, UNSUPPORTED, NOT_RUN)}
    print(
        f"golden tables on {device}: {n[PASS]} passed, {n[FAIL]} failed, "
        f"{n[UNSUPPORTED]} unsupported, {n[NOT_RUN]} not run ({time.perf_counter() - t0:.1f}s)"
    )
    if not n[PASS] and not n[FAIL]:
        print("golden tables: nothing ran (every row unsupported or not run here)")
        return 3
    return 1 if n[FAIL] else 0


if __name__ == "__main__":
    sys.exit(main())
