"""Hypothesis building blocks: structure only (sizes, dtypes, options, regimes, seeds).

`size="small"` keeps shapes small enough for the references and the Triton interpreter on a
2-core CPU; `size="full"` reaches real tile counts on a GPU. Both always include 0, 1 and the
tile edges (tile-2 .. tile+2), where tails escape.
"""

from __future__ import annotations

import torch
from hypothesis import strategies as st

from parity.properties.case import Case, dtype_name

FLOAT_DTYPE_NAMES = ("bfloat16", "float16", "float32")


def seeds() -> st.SearchStrategy[int]:
    return st.integers(0, 2**31 - 1)


def around(*tiles: int, lo: int = 0) -> list[int]:
    """tile-2 .. tile+2 for each tile (never below `lo`)."""
    return sorted({t + d for t in tiles for d in (-2, -1, 0, 1, 2) if t + d >= lo})


def sizes(
    *,
    small: list[int],
    full: list[int] | None = None,
    size: str,
    lo: int = 0,
    hi: int | None = None,
) -> st.SearchStrategy[int]:
    """A dimension: named edge values first (Hypothesis shrinks toward the first), or any
    integer in range."""
    values = small if size == "small" else sorted(set(small) | set(full or []))
    values = [v for v in values if v >= lo and (hi is None or v <= hi)]
    top = max(values) if values else lo
    return st.one_of(st.sampled_from(values), st.integers(lo, max(lo, top)))


def tokens(*, size: str) -> st.SearchStrategy[int]:
    """T: 0, 1, small odd counts, block edges (16, 64, 128) and, on a GPU, thousands."""
    return sizes(
        small=[0, 1, 2, 3, 5, 7, 15, 16, 17, 31, 33],
        full=[63, 64, 65, 127, 128, 129, 255, 257, 1000, 1024, 4097],
        size=size,
    )


def float_dtypes(dtypes=None, *, allowed=FLOAT_DTYPE_NAMES) -> st.SearchStrategy[str]:
    names = [n for n in allowed if dtypes is None or any(dtype_name(d) == n for d in dtypes)]
    if not names:
        return st.nothing()
    return st.sampled_from(names)


# --- the representative `parity bench` case (each spec's `bench(T)`) ---------------------------

# DeepSeek-V3/V4-like sizes: hidden 7168, expert intermediate 2048, 256 routed experts (top-8,
# 8 groups, top-4 groups), 4 hyper-connection streams; a rank of an 8-way expert-parallel
# deployment holds 32 experts (fused_moe).
BENCH_H, BENCH_N, BENCH_E, BENCH_K, BENCH_HC = 7168, 2048, 256, 8, 4
BENCH_SWIGLU = {"limit": 10.0, "alpha": 1.0, "beta": 0.0, "layout": "concat", "clamp_mode": "pre"}
# mhc_pre's options as DeepSeek-V4 sets them (mhc_pre and the fused post+pre benchmark alike)
BENCH_MHC_PRE = {
    "rms_eps": 1e-6,
    "pre_eps": 1e-6,
    "sinkhorn_eps": 1e-6,
    "post_mult": 2.0,
    "sinkhorn_iters": 20,
}


# --- metamorphic relations over the token dimension ----------------------------------------


def _take(v, idx):
    return v.index_select(0, idx.to(v.device)) if isinstance(v, torch.Tensor) else v


def _with(case: Case, args, kwargs, **meta) -> Case:
    return Case(case.op, tuple(args), dict(kwargs), {**case.meta, **meta}, case.device)


def permute_tokens(args: tuple[int, ...] = (0,), kwargs: tuple[str, ...] = (), outs=None):
    """Relation transform: permuting the tokens of the inputs permutes the outputs' rows."""

    def transform(case: Case, rng):
        T = case.args[args[0]].shape[0]
        if T < 2:
            return None
        perm = list(range(T))
        rng.shuffle(perm)
        p = torch.tensor(perm, dtype=torch.long)
        inv = torch.argsort(p)
        a = [_take(x, p) if i in args else x for i, x in enumerate(case.args)]
        k = {n: (_take(v, p) if n in kwargs else v) for n, v in case.kwargs.items()}

        def combine(results):
            (out,) = results
            return tuple(
                _take(o, inv) if outs is None or i in outs else o for i, o in enumerate(out)
            )

        return [_with(case, a, k, permuted=True)], combine

    return transform


def split_tokens(args: tuple[int, ...] = (0,), kwargs: tuple[str, ...] = (), outs=None):
    """Relation transform: two calls on a split of the tokens, concatenated, equal one call."""

    def transform(case: Case, rng):
        T = case.args[args[0]].shape[0]
        if T < 2:
            return None
        cut = rng.randint(1, T - 1)
        parts = []
        for sl in (slice(0, cut), slice(cut, T)):
            a = [x[sl].contiguous() if i in args else x for i, x in enumerate(case.args)]
            k = {n: (v[sl].contiguous() if n in kwargs else v) for n, v in case.kwargs.items()}
            parts.append(_with(case, a, k, split=[sl.start, sl.stop]))

        def combine(results):
            first, second = results
            return tuple(
                torch.cat([x, y], 0) if outs is None or i in outs else x
                for i, (x, y) in enumerate(zip(first, second))
            )

        return parts, combine

    return transform
