"""The `scale` regime: cases whose flat offsets cross 2**31 (and 2**32) elements, for the ops
that index by token, checked against the reference on the GPU in chunks (issue 11, section 5).

A known escape class of production MoE kernels is 32-bit offset arithmetic: `pid * stride` in
int32 wraps once T*k*N passes 2**31 (sgl-project/sglang#4727, vllm-project/vllm#34279,
linkedin/Liger-Kernel#1248). No drawn case of the property suite reaches that size, so this
regime draws a handful of fixed sizes just past 2**31 and 2**32 elements in the tensor whose
offsets cross (`ScaleCase.row_elements`: x [T, 2N] for swiglu, the [T*k, 2N] intermediate of
fused_moe, the residual [T, hc, H] of mhc_post, ...), with the values of the spec's own
generators (`OpSpec.build`, called on row chunks so that its float32 temporaries stay small).

How a case is checked (`check_case`):
- the implementation runs ONCE on the full input (that is what crosses the offsets);
- the reference is computed on row windows (a few million elements each, small enough for the
  float64 oracle) and each window is judged by the op's own `OpSpec.compare` (its tolerance
  model, quantizer codes and scales exactly), on the window's rows of the inputs and outputs:
  every op here is row-separable (a token's outputs depend on its own rows and the shared
  weights); moe_align is not (a global sort) and is judged whole (`ScaleCase.whole`);
- the windows always include the first rows, the rows where each tensor's flat offset crosses
  2**31 and 2**32 (in elements and in bytes) and the LAST rows (where int32 offsets have
  wrapped); the other windows follow in a seeded random order while the case's check time
  lasts (`--exhaustive`: all of them). The result says how many rows were checked.

Memory is computed before anything large is allocated (a one-row probe gives bytes per row); a
case that needs more than the GPU has free is "not run" with the numbers. Without CUDA every
case is "not run" with the reason, never a pass. An illegal address poisons the CUDA context,
so on the GPU the cases run in a worker process that is restarted after such a crash (the case
that crashed fails with the crash's text).

    python -m parity.properties.scale --device cuda [--op OP] [--impl NAME|module:function]
        [--json PATH] [--budget SECONDS] [--exhaustive] [--list]

Exit 0 every case that ran passed (at least one ran), 1 a failure, 2 usage, 3 nothing ran.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field

import torch

from parity.properties.case import Case, as_tuple
from parity.properties.checks import call_kernel

PASS, FAIL, UNSUPPORTED, NOT_RUN = "pass", "fail", "unsupported", "not run"
STATUSES = (PASS, FAIL, UNSUPPORTED, NOT_RUN)

LIMIT = 2**31  # int32 offsets wrap here; unsigned 32-bit ones at 2 * LIMIT
CHUNK_ELEMENTS = 1 << 22  # elements of the crossing tensor per checked window
BUILD_ELEMENTS = 1 << 26  # elements of the crossing tensor per call of the spec's build
CHECK_SECONDS = 2.0  # per case: windows beyond the mandatory ones while this lasts
RESERVE_BYTES = 1 << 30  # allocator slack and the implementation's own small buffers
STOP_GRACE_S = 10.0  # past the deadline, a worker still running is stopped
CONTEXT_LOST = 75  # the worker's exit code after a CUDA error that poisons the context


# --- the cases ------------------------------------------------------------------------------


@dataclass(frozen=True)
class ScaleCase:
    op: str
    name: str
    meta: dict  # the spec's description at full size (seed included)
    rows_key: tuple  # where the row count sits in meta: ("T",), ("M",), ("lead", 0)
    token_args: tuple[int, ...]  # positional args indexed by row on dim 0; others shared
    row_elements: int  # elements per row of the tensor whose flat offsets cross the limits
    crossing: str  # that tensor, in words
    why: str
    limits: tuple[int, ...] = (LIMIT, 2 * LIMIT)
    chunk_rows: int = 1  # rows per checked window
    build_rows: int = 1  # rows per call of the spec's build
    extra_row_bytes: int = 0  # the implementation's own buffers per row (fused_moe's caches)
    whole: bool = False  # not row-separable: the spec's compare on the whole case

    @property
    def id(self) -> str:
        return f"{self.op}:{self.name}"

    @property
    def rows(self) -> int:
        return get_rows(self.meta, self.rows_key)

    @property
    def elements(self) -> int:
        return self.rows * self.row_elements


def get_rows(meta: dict, key: tuple) -> int:
    v = meta
    for k in key:
        v = v[k]
    return int(v)


def with_rows(meta: dict, key: tuple, rows: int) -> dict:
    """A copy of `meta` with `rows` rows (the lists on the path copied, not shared)."""
    out = json.loads(json.dumps(meta))
    v = out
    for k in key[:-1]:
        v = v[k]
    v[key[-1]] = int(rows)
    return out


def _past(limit: int, row_el: int, extra: int = 0) -> int:
    """The least row count whose flat size passes `limit`, plus `extra` rows."""
    return limit // row_el + 1 + extra


def _full(min_elements: int) -> bool:
    """Full-size dims at the real limits; tiny dims where a test lowers `min_elements`."""
    return min_elements >= 1 << 20


def _case(op, name, meta, key, token_args, row_el, crossing, why, min_elements, **kw):
    limits = (min_elements, 2 * min_elements)
    chunk_el = min(CHUNK_ELEMENTS, max(1, min_elements // 8))
    build_el = min(BUILD_ELEMENTS, max(1, min_elements // 2))
    return ScaleCase(
        op,
        name,
        meta,
        key,
        token_args,
        row_el,
        crossing,
        why,
        limits=limits,
        chunk_rows=max(1, chunk_el // row_el),
        build_rows=max(1, build_el // row_el),
        **kw,
    )


SWIGLU_OPTS = {"limit": 10.0, "alpha": 1.0, "beta": 0.0, "layout": "concat", "clamp_mode": "pre"}


def _swiglu(m: int) -> list[ScaleCase]:
    out = []
    for n, lim, extra, why in [
        (4096 if _full(m) else 8, m, 0, "x [T, 8192]: the last row starts at 2**31"),
        (3585 if _full(m) else 7, m, 5, "2N = 7170: the crossing falls inside a row"),
        (4096 if _full(m) else 8, 2 * m, 0, "x past 2**32, y past 2**31 elements"),
    ]:
        t = _past(lim, 2 * n, extra)
        meta = {"T": t, "lead": [], "N": n, "dtype": "bfloat16", "regime": "normal"}
        meta.update(options=dict(SWIGLU_OPTS), seed=t + n)
        out.append(_case("swiglu", f"T={t},N={n}", meta, ("T",), (0,), 2 * n, "x [T, 2N]", why, m))
    return out


def _fp8_quant(m: int) -> list[ScaleCase]:
    out = []
    k = 7168 if _full(m) else 256
    for lim, fmt in [(m, "fp32"), (m, "ue8m0"), (2 * m, "fp32")]:
        rows = _past(lim, k)
        opts = {"group_size": 128, "scale_format": fmt, "column_major_scales": False}
        meta = {"M": rows, "K": k, "dtype": "bfloat16", "options": {**opts, "eps": 1e-10}}
        meta.update(regime="normal", seed=rows + k)
        why = f"x [M, K] past {'2**32' if lim > m else '2**31'} elements, {fmt} scales"
        out.append(
            _case("fp8_quant", f"M={rows},K={k},{fmt}", meta, ("M",), (0,), k, "x [M, K]", why, m)
        )
    return out


def _silu_mul(m: int) -> list[ScaleCase]:
    out = []
    n = 2048 if _full(m) else 128
    for lim in (m, 2 * m):
        rows = _past(lim, 2 * n)
        opts = {"group_size": 128, "limit": 10.0, "clamp_mode": "pre", "scale_format": "fp32"}
        meta = {"M": rows, "N": n, "dtype": "bfloat16", "regime": "normal", "seed": rows}
        meta["options"] = {**opts, "column_major_scales": False}
        out.append(
            _case(
                "silu_mul_fp8_quant",
                f"M={rows},N={n}",
                meta,
                ("M",),
                (0,),
                2 * n,
                "x [M, 2N]",
                "the input past 2**31 / 2**32 elements",
                m,
            )
        )
    return out


def _fp8_block(m: int) -> list[ScaleCase]:
    r, c = (2048, 7168) if _full(m) else (64, 64)
    bs = [128, 128] if _full(m) else [32, 32]
    out = []
    for lim in (m, 2 * m):
        e = _past(lim, r * c)
        meta = {"lead": [e], "R": r, "C": c, "dtype": "bfloat16", "regime": "normal", "seed": e}
        meta["options"] = {"block_shape": bs, "scale_format": "fp32"}
        out.append(
            _case(
                "fp8_block_quant",
                f"E={e},R={r},C={c}",
                meta,
                ("lead", 0),
                (0,),
                r * c,
                "w [E, R, C]",
                "expert weights past 2**31 / 2**32 elements (rows: experts)",
                m,
            )
        )
    return out


def _mxfp4_quant(m: int) -> list[ScaleCase]:
    k = 7168 if _full(m) else 256
    out = []
    for lim, rnd in [(m, "floor"), (2 * m, "ceil")]:
        t = _past(lim, k)
        meta = {"lead": [t], "K": k, "dtype": "bfloat16", "regime": "normal", "seed": t}
        meta["options"] = {"scale_rounding": rnd}
        out.append(
            _case(
                "mxfp4_quant",
                f"T={t},K={k},{rnd}",
                meta,
                ("lead", 0),
                (0,),
                k,
                "x [T, K]",
                f"x past {'2**32' if lim > m else '2**31'} elements",
                m,
            )
        )
    return out


def _mxfp4_dequant(m: int) -> list[ScaleCase]:
    k = 7168 if _full(m) else 256
    out = []
    for lim in (m, 2 * m):
        t = _past(lim, k)
        meta = {"lead": [t], "K": k, "dtype": "bfloat16", "scale_regime": "typical", "seed": t}
        out.append(
            _case(
                "mxfp4_dequant",
                f"T={t},K={k}",
                meta,
                ("lead", 0),
                (0, 1),
                k,
                "x [T, K] (the output)",
                "the output past 2**31 / 2**32 elements",
                m,
            )
        )
    return out


PRE_OPTS = {"rms_eps": 1e-6, "pre_eps": 1e-6, "sinkhorn_eps": 1e-6, "post_mult": 2.0}


def _mhc(m: int) -> list[ScaleCase]:
    hc, h = (4, 7168) if _full(m) else (4, 32)
    row = hc * h
    out = []
    for op, lims, args in [
        ("mhc_post", (m, 2 * m), (0, 1, 2, 3)),
        ("mhc_pre", (m,), (0,)),
        ("mhc_head", (m,), (0,)),
        ("mhc_fused_post_pre", (m,), (0, 1, 2, 3)),
    ]:
        for lim in lims:
            t = _past(lim, row)
            meta = {"T": t, "H": h, "hc": hc, "dtype": "bfloat16", "regime": "normal", "seed": t}
            if op in ("mhc_post", "mhc_fused_post_pre"):
                meta.update(x_dtype="same", post_shape="3d")
            if op in ("mhc_pre", "mhc_fused_post_pre"):
                meta["options"] = {**PRE_OPTS, "sinkhorn_iters": 20}
            if op == "mhc_head":
                meta["options"] = {"rms_eps": 1e-6, "hc_eps": 1e-6}
            why = f"residual streams past {'2**32' if lim > m else '2**31'} elements"
            name = f"T={t},hc={hc},H={h}"
            out.append(_case(op, name, meta, ("T",), args, row, "residual [T, hc, H]", why, m))
    return out


def _fused_moe(m: int) -> list[ScaleCase]:
    """The [T*k, 2N] intermediate crosses (the escaped bug's T*k*N); H is kept small so the
    weights and the float64 reference windows stay cheap."""
    h, n, e, k = (512, 2048, 32, 8) if _full(m) else (32, 16, 4, 2)
    out = []
    for lim, quant in [(m, "none"), (m, "fp8_block"), (2 * m, "none")]:
        t = _past(lim, k * 2 * n)
        bs = [128, 128] if _full(m) else [16, 16]
        meta = {
            "T": t,
            "dtype": "bfloat16",
            "x_regime": "normal",
            "dims": {"quant": quant, "block_shape": bs, "H": h, "N": n},
            "route": {"E": e, "k": k, "routing": "uniform", "arwi": False},
            "options": {
                "swiglu_limit": 10.0,
                "swiglu_alpha": 1.0,
                "swiglu_beta": 0.0,
                "layout": "concat",
                "swiglu_clamp_mode": "pre",
            },
            "seed": t,
        }
        out.append(
            _case(
                "fused_moe",
                f"T={t},H={h},N={n},E={e},k={k},{quant}",
                meta,
                ("T",),
                (0, 3, 4),
                k * 2 * n,
                "the intermediate [T*k, 2N]",
                f"T*k*2N past {'2**32' if lim > m else '2**31'}",
                m,
                extra_row_bytes=k * (2 * n + n + h) * 2 + k * 16,  # the three caches, sorted ids
            )
        )
    return out


def _moe_align(m: int) -> list[ScaleCase]:
    """The contract keeps sorted_ids below 2**31 entries (int32 ids): T*k crosses 2**31 bytes
    of the int32 arrays (2**32 of int64 indices) near 2**29 entries, and the flat indices come
    within the padding of 2**31 at the contract's limit. Not row-separable: judged whole."""
    k, e, bs = 8, 256, 64
    out = []
    for n_flat, why in [
        (m // 4 + 8 * k, "T*k past 2**29: int32 sorted_ids past 2**31 bytes"),
        (m - e * (bs - 1) - k, "T*k at the contract's limit: flat ids within 2**31 - E*bs"),
    ]:
        t = max(1, n_flat // k)
        meta = {"T": t, "k": k, "E": e, "block_size": bs, "regime": "uniform", "seed": t}
        name = f"T={t},k={k},E={e},bs={bs}"
        out.append(_case("moe_align", name, meta, ("T",), (0,), k, "topk_ids", why, m, whole=True))
    return out


BUILDERS = {
    "swiglu": _swiglu,
    "fp8_quant": _fp8_quant,
    "fp8_block_quant": _fp8_block,
    "silu_mul_fp8_quant": _silu_mul,
    "mxfp4_quant": _mxfp4_quant,
    "mxfp4_dequant": _mxfp4_dequant,
    "moe_align": _moe_align,
    "fused_moe": _fused_moe,
    "mhc": _mhc,
}
OPS = (
    "swiglu",
    "fp8_quant",
    "fp8_block_quant",
    "silu_mul_fp8_quant",
    "mxfp4_quant",
    "mxfp4_dequant",
    "moe_align",
    "fused_moe",
    "mhc_post",
    "mhc_pre",
    "mhc_head",
    "mhc_fused_post_pre",
)


def cases(ops=None, *, min_elements: int = LIMIT) -> list[ScaleCase]:
    """Every scale case of `ops` (default all). `min_elements` lowers the limits for tests:
    the same machinery on shapes a CPU can check."""
    out: list[ScaleCase] = []
    for b in BUILDERS.values():
        out += b(min_elements)
    return [c for c in out if ops is None or c.op in ops]


# --- results --------------------------------------------------------------------------------


@dataclass
class Result:
    case: str
    op: str
    impl: str
    status: str
    message: str = ""
    rows: int = 0
    rows_checked: int = 0
    windows: int = 0
    bytes_needed: int = 0
    seconds: float = 0.0
    impl_seconds: float = 0.0
    checked: list = field(default_factory=list)  # [(lo, hi, why)] of the mandatory windows


def _gib(b: int) -> str:
    return f"{b / 2**30:.1f} GiB"


# --- memory ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Probe:
    """Bytes and elements per row and of the shared tensors, from a one-row case."""

    in_row_bytes: int
    in_row_elements: int
    shared_bytes: int
    out_row_bytes: int
    out_row_elements: int
    tensors: tuple  # (name, elements per row, itemsize) of every token input and output


def probe(sc: ScaleCase, device: str) -> Probe:
    """Build one row (small) and run the reference on it: bytes per row, before anything
    large is allocated."""
    from parity.catalog import get_spec

    spec = get_spec(sc.op)
    case = spec.build(with_rows(sc.meta, sc.rows_key, 1), device)
    ins, shared, tensors = 0, 0, []
    in_el = 0
    for i, a in enumerate(case.args):
        if not isinstance(a, torch.Tensor):
            continue
        if i in sc.token_args:
            ins += a.numel() * a.element_size()
            in_el += a.numel()
            tensors.append((f"arg{i}", a.numel(), a.element_size()))
        else:
            shared += a.numel() * a.element_size()
    for v in case.kwargs.values():
        if isinstance(v, torch.Tensor):
            shared += v.numel() * v.element_size()
    outs = as_tuple(spec.reference(*case.clone().args, **case.kwargs))
    if sc.whole:  # outputs sized by the flat count plus a constant: per row from two sizes
        two = spec.build(with_rows(sc.meta, sc.rows_key, 2), device)
        outs2 = as_tuple(spec.reference(*two.clone().args, **two.kwargs))
        b1 = sum(o.numel() * o.element_size() for o in outs)
        out_b = sum(o.numel() * o.element_size() for o in outs2) - b1
        out_el = sum(o.numel() for o in outs2) - sum(o.numel() for o in outs)
        shared += b1 - out_b
    else:
        out_b = sum(o[:1].numel() * o.element_size() for o in outs)
        out_el = sum(o[:1].numel() for o in outs)
        tensors += [(f"out{j}", o[:1].numel(), o.element_size()) for j, o in enumerate(outs)]
    return Probe(ins, in_el, shared, out_b, out_el, tuple(tensors))


def bytes_needed(sc: ScaleCase, p: Probe) -> int:
    """Inputs and outputs at full size, the implementation's own buffers, one build chunk's
    float32 temporaries and one window's float64 reference (about 12 float64 tensors of the
    window's elements, the shared tensors in float64 too)."""
    rows = sc.rows
    full = rows * (p.in_row_bytes + p.out_row_bytes + sc.extra_row_bytes) + p.shared_bytes
    build = build_rows(sc, p) * p.in_row_elements * 4 * 4
    if sc.whole:  # moe_align's reference and canonical forms: int64 copies and sorts
        check = rows * p.in_row_elements * 96
    else:
        check = sc.chunk_rows * (p.in_row_elements + p.out_row_elements) * 8 * 12
        check += p.shared_bytes * 4
    return full + build + check + RESERVE_BYTES


# --- building and checking ------------------------------------------------------------------


def build_rows(sc: ScaleCase, p: Probe | None) -> int:
    """Rows per call of the spec's build: BUILD_ELEMENTS of the inputs (not of the crossing
    tensor, which may be the implementation's own: fused_moe's weights are drawn per call)."""
    if p is None or p.in_row_elements <= 0:
        return sc.build_rows
    return max(sc.build_rows, sc.build_rows * sc.row_elements // p.in_row_elements)


def build_full(sc: ScaleCase, device: str, p: Probe | None = None) -> Case:
    """The full case, built a chunk of rows at a time by the spec's own build (seed + chunk
    index), so its float32 temporaries stay one chunk's. Shared tensors (weights) come from
    the first chunk."""
    from parity.catalog import get_spec

    spec = get_spec(sc.op)
    rows = sc.rows
    step = build_rows(sc, p)
    full: dict[int, torch.Tensor] = {}
    first = None
    for c, lo in enumerate(range(0, rows, step)):
        hi = min(rows, lo + step)
        meta = with_rows(sc.meta, sc.rows_key, hi - lo)
        meta["seed"] = int(sc.meta["seed"]) * 1_000_003 + c
        part = spec.build(meta, device)
        if first is None:
            first = part
            for i in sc.token_args:
                a = part.args[i]
                full[i] = torch.empty((rows, *a.shape[1:]), dtype=a.dtype, device=device)
        for i in sc.token_args:
            full[i][lo:hi].copy_(part.args[i])
        del part
    args = tuple(full.get(i, a) for i, a in enumerate(first.args))
    return Case(sc.op, args, dict(first.kwargs), dict(sc.meta), str(device))


def row_window(sc: ScaleCase, case: Case, outs: tuple, lo: int, hi: int) -> tuple[Case, tuple]:
    """The case and outputs restricted to rows [lo, hi) (views, no copy)."""
    args = tuple(a[lo:hi] if i in sc.token_args else a for i, a in enumerate(case.args))
    meta = with_rows(sc.meta, sc.rows_key, hi - lo)
    return Case(sc.op, args, dict(case.kwargs), meta, case.device), tuple(o[lo:hi] for o in outs)


def mandatory_windows(sc: ScaleCase, tensors) -> list[tuple[int, int, str]]:
    """First rows, the rows where a flat offset crosses each limit (elements, and bytes) in
    the crossing tensor and every token input and output, and the last rows."""
    rows, c = sc.rows, sc.chunk_rows
    out = [(0, min(c, rows), "first rows")]
    seen = {0}
    named = [(sc.crossing, sc.row_elements, 1), *tensors]
    for name, row_el, size in named:
        for lim in sc.limits:
            for unit, el in (("elements", lim), ("bytes", lim // size)):
                if row_el <= 0 or (unit == "bytes" and size == 1):
                    continue
                b = el // row_el
                if b >= rows:
                    continue
                lo = max(0, min(rows - c, b - c // 2))
                if lo not in seen:
                    seen.add(lo)
                    out.append((lo, min(rows, lo + c), f"{name} crosses {lim} {unit}"))
    lo = max(0, rows - c)
    if lo not in seen:
        out.append((lo, rows, "last rows"))
    else:
        out = [(a, b, w + " (last rows)" if a == lo else w) for a, b, w in out]
    return out


def check_case(
    sc: ScaleCase,
    impl,
    device: str,
    *,
    check_seconds: float = CHECK_SECONDS,
    exhaustive: bool = False,
    free_bytes: int | None = None,
) -> Result:
    """Run `impl` once on the full case and judge it window by window with the spec's compare.
    `free_bytes`: the memory available (default: the GPU's free memory on cuda, no limit on
    cpu)."""
    from parity.catalog import get_spec

    t0 = time.perf_counter()
    res = Result(sc.id, sc.op, impl.name, NOT_RUN, rows=sc.rows)
    ok, why = impl.availability(device)
    if not ok:
        res.message = f"NOT RUN: {why}"
        return res
    want = sc.meta.get("dtype")
    if (
        want
        and impl.dtypes is not None
        and not any(str(d).replace("torch.", "") == want for d in impl.dtypes)
    ):
        res.message = "NOT RUN: dtype outside the implementation's"
        return res
    spec = get_spec(sc.op)
    try:
        p = probe(sc, device)
    except torch.OutOfMemoryError as e:
        return _oom(res, "probing one row", free_bytes, e, t0)
    except Exception as e:  # parity's own probe: not the implementation's crash at scale
        res.status = FAIL
        res.message = f"the case's setup (parity's probe) raised {type(e).__name__}: {str(e)[:500]}"
        return res
    res.bytes_needed = bytes_needed(sc, p)
    if free_bytes is None and device == "cuda":
        torch.cuda.empty_cache()  # the probe's blocks back to the driver before asking
        free_bytes = torch.cuda.mem_get_info()[0]
    if free_bytes is not None and res.bytes_needed > free_bytes:
        res.message = f"NOT RUN: needs {_gib(res.bytes_needed)}, {_gib(free_bytes)} free"
        return res
    try:
        case = build_full(sc, device, p)
    except torch.OutOfMemoryError as e:
        return _oom(res, "building the case", free_bytes, e, t0)
    except Exception as e:  # parity's own build: not the implementation's crash at scale
        res.status = FAIL
        res.message = f"the case's setup (parity's build) raised {type(e).__name__}: {str(e)[:500]}"
        res.seconds = time.perf_counter() - t0
        return res
    ti = time.perf_counter()
    try:
        # the implementation's prepare step (if it declares one), then the kernel, as everywhere
        outs = as_tuple(
            call_kernel(impl.fn, case.args, case.kwargs, getattr(impl, "prepare", None))
        )
        _sync(device)
    except NotImplementedError as e:
        res.status, res.message = UNSUPPORTED, f"unsupported: {e}"
        return res
    except torch.OutOfMemoryError as e:  # past the estimate: this GPU is too small for the case
        del case
        return _oom(res, "in the implementation", free_bytes, e, t0)
    except Exception as e:  # the implementation's failure at scale (an illegal address too)
        res.status, res.message = FAIL, f"raised {type(e).__name__}: {str(e)[:500]}"
        res.seconds = time.perf_counter() - t0
        return res
    res.impl_seconds = time.perf_counter() - ti
    try:
        _judge(sc, spec, case, outs, res, p, check_seconds, exhaustive)
    except torch.OutOfMemoryError as e:
        del case, outs
        return _oom(res, f"in the check after {res.windows} windows", free_bytes, e, t0)
    except Exception as e:  # parity's own check raised: never a pass
        res.status, res.message = FAIL, f"the check raised {type(e).__name__}: {str(e)[:500]}"
    res.seconds = time.perf_counter() - t0
    return res


def _oom(res: Result, where: str, free_bytes, e: Exception, t0: float) -> Result:
    """Out of memory past the estimate: NOT RUN with the numbers (a case the GPU cannot hold
    is not a failure of the implementation, and never a pass)."""
    free = "unknown" if free_bytes is None else _gib(free_bytes)
    res.status = NOT_RUN
    res.message = (
        f"NOT RUN: out of memory {where} (estimated {_gib(res.bytes_needed)}, {free} free): "
        f"{str(e)[:300]}"
    )
    res.seconds = time.perf_counter() - t0
    return res


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def _judge(sc, spec, case, outs, res: Result, p: Probe, check_seconds, exhaustive) -> None:
    bad = [i for i, o in enumerate(outs) if not isinstance(o, torch.Tensor)]
    if bad:
        res.status, res.message = FAIL, f"output {bad[0]} is not a tensor"
        return
    if sc.whole:
        v = spec.compare(case, outs)
        res.windows, res.rows_checked = 1, sc.rows
        res.checked = [(0, sc.rows, "the whole case")]
        res.status = PASS if v.ok else FAIL
        res.message = "" if v.ok else f"whole case: {v.message}"
        return
    rows = sc.rows
    for j, o in enumerate(outs):
        if o.dim() == 0 or o.shape[0] != rows:
            res.status = FAIL
            res.message = f"output {j} has shape {list(o.shape)}, want {rows} rows on dim 0"
            return
    must = mandatory_windows(sc, p.tensors)
    res.checked = must
    seen = bytearray(rows)  # 1 where a row was checked: windows overlap, and are off the grid
    t_end = time.perf_counter() + check_seconds

    def judge(lo, hi, why) -> bool:
        c, o = row_window(sc, case, outs, lo, hi)
        v = spec.compare(c, o)
        res.windows += 1
        res.rows_checked += (hi - lo) - seen.count(1, lo, hi)  # rows new to this window
        seen[lo:hi] = b"\x01" * (hi - lo)
        if not v.ok:
            res.status = FAIL
            res.message = f"rows [{lo}, {hi}) ({why}): {v.message}"
        return v.ok

    for lo, hi, why in must:
        if not judge(lo, hi, why):
            return
    grid = list(range(0, rows, sc.chunk_rows))
    random.Random(int(sc.meta["seed"])).shuffle(grid)
    for g in grid:
        if not exhaustive and time.perf_counter() > t_end:
            break
        for lo, hi in _unchecked(seen, g, min(rows, g + sc.chunk_rows)):
            if not judge(lo, hi, "sweep"):
                return
    res.status = PASS
    res.message = (
        f"{res.windows} windows, {res.rows_checked} of {rows} rows checked"
        f"{' (all)' if res.rows_checked >= rows else ''}"
    )


def _unchecked(seen: bytearray, lo: int, hi: int) -> list[tuple[int, int]]:
    """The runs of rows in [lo, hi) not yet checked."""
    out, start = [], None
    for r in range(lo, hi):
        if not seen[r] and start is None:
            start = r
        elif seen[r] and start is not None:
            out.append((start, r))
            start = None
    if start is not None:
        out.append((start, hi))
    return out


# --- the run --------------------------------------------------------------------------------


def items(ops=None, impl_names=None, *, min_elements: int = LIMIT) -> list[tuple]:
    """(case, impl) pairs in a fixed order: the worker and the parent agree on the indices.
    Default implementations: every registered one (the reference only when named). A
    `module:function` is named, not imported (a file handed to parity is data): `run_items`
    imports it in the worker when its first case starts."""
    from parity.campaign.candidate import lookup
    from parity.catalog import impls

    out = []
    for sc in cases(ops, min_elements=min_elements):
        if impl_names:
            cands = []
            for name in impl_names:
                try:
                    cands.append(lookup(sc.op, name))  # ImportUsage: not a module:function
                except KeyError:
                    continue
        else:
            cands = impls(sc.op)
        out += [(sc, i) for i in cands]
    return out


def not_run(work, reason: str) -> list[Result]:
    return [
        Result(sc.id, sc.op, impl.name, NOT_RUN, f"NOT RUN: {reason}", rows=sc.rows)
        for sc, impl in work
    ]


def run_items(work, device: str, *, start=0, deadline=None, emit=None, **kw) -> list[Result]:
    """Check each (case, impl) from `start`; cases left when `deadline` passes are NOT RUN.
    `emit(index, result_or_None)` is called before (None) and after each case."""
    out = []
    imported: dict[tuple, object] = {}
    for idx in range(start, len(work)):
        sc, impl = work[idx]
        if deadline is not None and time.time() > deadline:
            r = not_run([work[idx]], "budget spent")[0]
        else:
            if emit:
                emit(idx, None)  # before the import too: an exit at import is this case's
            impl = _imported(impl, imported)
            if isinstance(impl, str):
                r = Result(sc.id, sc.op, work[idx][1].name, FAIL, impl, rows=sc.rows)
            else:
                r = check_case(sc, impl, device, **kw)
            if device == "cuda":
                try:
                    torch.cuda.empty_cache()
                except Exception:  # a poisoned context: judged just below
                    pass
        out.append(r)
        if emit:
            emit(idx, r)
        if r.status == FAIL and device == "cuda" and not _context_ok():
            raise ContextLost(idx)
    return out


def _imported(impl, cache: dict):
    """`impl` with its `module:function` imported here (once a process), or the failure's
    text: a module that raises or exits while importing is the candidate's failure."""
    from parity.campaign.candidate import CandidateFailed, ImportUsage, import_in_process

    key = (impl.op, impl.name)  # registered names repeat across ops ("triton")
    if key not in cache:
        try:
            cache[key] = import_in_process(impl)
        except (ImportUsage, CandidateFailed) as e:
            cache[key] = f"cannot import the implementation: {e}"
    return cache[key]


class ContextLost(Exception):
    """A CUDA error left the context unusable: the worker must be restarted."""


def _context_ok() -> bool:
    try:
        torch.cuda.synchronize()
        torch.zeros(1, device="cuda").add_(1).item()
        return True
    except Exception:
        return False


def _worker(a, work) -> int:
    deadline = a.deadline

    def emit(idx, r):
        if r is not None:  # progress: the parent prints the table at the end
            print(f"[scale] {r.impl} {r.case}: {r.status} ({r.seconds:.1f}s)", flush=True)
        with open(a.worker, "a") as fh:
            doc = {"index": idx, "result": dataclasses.asdict(r) if r else None}
            fh.write(json.dumps(doc, default=str) + "\n")

    try:
        run_items(
            work,
            a.device or "cuda",
            start=a.start,
            deadline=deadline,
            emit=emit,
            check_seconds=a.check_seconds,
            exhaustive=a.exhaustive,
        )
    except ContextLost:
        return CONTEXT_LOST
    return 0


def orchestrate(argv_base: list[str], work, deadline) -> list[Result]:
    """Run the cases in worker processes; after a crash (or a poisoned CUDA context) the case
    in flight fails with what the worker said and a new worker takes the rest."""
    results: dict[int, Result] = {}
    start = 0
    while start < len(work):
        fd, path = tempfile.mkstemp(prefix="parity-scale-", suffix=".jsonl")
        os.close(fd)
        cmd = [sys.executable, "-m", "parity.properties.scale", *argv_base]
        cmd += ["--worker", path, "--start", str(start)]
        if deadline is not None:
            cmd += ["--deadline", str(deadline)]
        try:  # a case running past the budget: stopped, so the results so far are reported
            wait = None if deadline is None else max(0.0, deadline - time.time()) + STOP_GRACE_S
            rc = subprocess.run(cmd, timeout=wait).returncode
        except subprocess.TimeoutExpired:
            rc = None
        started = None
        with open(path) as fh:
            for line in fh:
                doc = json.loads(line)
                if doc["result"] is None:
                    started = doc["index"]
                else:
                    results[doc["index"]] = Result(**doc["result"])
        os.unlink(path)
        if rc is None:  # stopped at the deadline: the case in flight and the rest not run
            for i in range(start, len(work)):
                sc, impl = work[i]
                msg = "NOT RUN: budget spent" + (" during this case" if i == started else "")
                results.setdefault(i, Result(sc.id, sc.op, impl.name, NOT_RUN, msg, rows=sc.rows))
            break
        if started is not None and started not in results:
            sc, impl = work[started]
            msg = f"the worker died (exit {rc}) during this case: a crash at scale"
            results[started] = Result(sc.id, sc.op, impl.name, FAIL, msg, rows=sc.rows)
        nxt = max(results, default=-1) + 1
        if nxt <= start:  # no progress (whatever the exit code): do not loop
            for i in range(start, len(work)):
                sc, impl = work[i]
                msg = f"NOT RUN: the worker exited {rc} before this case"
                results.setdefault(i, Result(sc.id, sc.op, impl.name, NOT_RUN, msg, rows=sc.rows))
            break
        start = nxt
    return [results[i] for i in sorted(results)]


def counts(results) -> dict[str, int]:
    return {s: sum(r.status == s for r in results) for s in STATUSES}


def table(results) -> str:
    lines = [f"{'op':19} {'impl':11} {'case':40} {'status':8} {'GiB':>6} {'s':>6}  detail"]
    for r in results:
        name = r.case.split(":", 1)[1]
        gib = f"{r.bytes_needed / 2**30:6.1f}" if r.bytes_needed else f"{'-':>6}"
        lines.append(
            f"{r.op:19} {r.impl:11} {name:40} {r.status:8} {gib} {r.seconds:6.1f}  "
            f"{r.message[:160]}"
        )
    n = counts(results)
    lines.append(
        f"scale regime: {n[PASS]} passed, {n[FAIL]} failed, {n[UNSUPPORTED]} unsupported, "
        f"{n[NOT_RUN]} not run"
    )
    return "\n".join(lines)


def exit_code(results) -> int:
    n = counts(results)
    if n[FAIL]:
        return 1
    return 0 if n[PASS] else 3


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m parity.properties.scale", description=__doc__)
    ap.add_argument("--device", choices=["cpu", "cuda"], default=None)
    ap.add_argument("--op", action="append", default=None, help="repeatable; default: all")
    ap.add_argument("--impl", action="append", default=None, help="NAME or module:function")
    ap.add_argument("--json", default=None, metavar="PATH")
    ap.add_argument("--budget", type=float, default=None, help="seconds; later cases NOT RUN")
    ap.add_argument("--check-seconds", type=float, default=CHECK_SECONDS)
    ap.add_argument("--exhaustive", action="store_true", help="check every window")
    ap.add_argument("--list", action="store_true", help="print the cases (and their memory)")
    ap.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--start", type=int, default=0, help=argparse.SUPPRESS)
    ap.add_argument("--deadline", type=float, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--min-elements", type=int, default=LIMIT, help=argparse.SUPPRESS)  # tests
    a = ap.parse_args(argv)
    argv = list(sys.argv[1:] if argv is None else argv)
    if a.op and not set(a.op) <= set(OPS):
        print(f"scale: --op: unknown {sorted(set(a.op) - set(OPS))}; ops: {OPS}", file=sys.stderr)
        return 2
    from parity._interp import use_triton_interpreter_without_gpu
    from parity.campaign.candidate import ImportUsage

    use_triton_interpreter_without_gpu()  # before any backend (or a worker's module) loads triton
    device = a.device or ("cuda" if torch.cuda.is_available() else "cpu")
    try:
        work = items(a.op, a.impl, min_elements=a.min_elements)
    except (ImportUsage, ImportError, AttributeError, ValueError, TypeError) as e:
        print(f"scale: --impl: {e}", file=sys.stderr)
        return 2
    if a.impl:  # a typo must not turn the gate green with nothing run
        known = {i.name for _, i in work}
        unknown = sorted(set(a.impl) - known)
        if unknown:
            print(f"scale: --impl: no such implementation of {a.op or 'any op'}: {unknown}")
            return 2
    if a.list:
        for sc in cases(a.op, min_elements=a.min_elements):
            p = probe(sc, "cpu")
            print(
                f"{sc.id}: {sc.rows} rows, {sc.crossing} {sc.elements} elements "
                f"({sc.elements / LIMIT:.4f} x 2**31); needs about "
                f"{_gib(bytes_needed(sc, p))}; {sc.why}"
            )
        return 0
    if a.worker:
        return _worker(a, work)
    t0 = time.time()
    deadline = t0 + a.budget if a.budget is not None else None
    if device != "cuda":
        results = not_run(work, "the scale regime runs on a CUDA GPU only (device cpu)")
    elif not torch.cuda.is_available():
        results = not_run(work, "needs a CUDA GPU, none visible")
    else:
        base = _drop_value(argv, ("--budget", "--json"))
        results = orchestrate(base, work, deadline)
    if a.json:
        with open(a.json, "w") as fh:
            doc = {"device": device, "results": [dataclasses.asdict(r) for r in results]}
            json.dump(doc, fh, indent=1, default=str)
    print(table(results))
    print(f"({time.time() - t0:.1f}s on {device})")
    code = exit_code(results)
    if code == 3:
        print("scale regime: nothing ran (every case not run or unsupported here)")
    return code


def _drop_value(argv: list[str], names) -> list[str]:
    """argv without the options `names` (and their values): the worker gets its own."""
    out, skip = [], False
    for x in argv:
        if skip:
            skip = False
            continue
        if x in names:
            skip = True
            continue
        if any(x.startswith(n + "=") for n in names):
            continue
        out.append(x)
    return out


if __name__ == "__main__":
    sys.exit(main())


__all__ = [
    "LIMIT",
    "OPS",
    "Result",
    "ScaleCase",
    "build_full",
    "cases",
    "check_case",
    "items",
    "main",
    "mandatory_windows",
    "probe",
    "run_items",
]
