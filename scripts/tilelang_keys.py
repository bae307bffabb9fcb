"""TileLang compiles a GPU nightly of the mHC ops asks for, counted on the CPU (issue 11,
section 4): the distinct kernel specialisations that 1000 draws of each op's GPU strategy need,
with the hidden size a compile key (the per-H kernels) and with it dynamic (`post_dyn`,
`fma_partials_dyn`, `finalize_*_dyn`). Each distinct key is one TileLang compile of about 3 s
in every process that meets it.

    python3 scripts/tilelang_keys.py [--examples 1000] [op ...]
"""

from __future__ import annotations

import argparse
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from hypothesis import HealthCheck, given, settings  # noqa: E402

from parity.catalog import get_spec  # noqa: E402
from parity.optimized.tilelang import mhc  # noqa: E402  (no tilelang import until a call)
from parity.optimized.tilelang._shapes import vec_for  # noqa: E402  (the kernels' own rule)

OPS = ("mhc_post", "mhc_pre", "mhc_head", "mhc_fused_post_pre")


def keys(op: str, meta: dict) -> tuple[set, set]:
    """(per-H keys, dynamic-H keys) one case compiles, as the wrappers choose their kernels."""
    t, hc, h, dt = meta["T"], meta["hc"], meta["H"], meta["dtype"]
    xdt = dt if meta.get("x_dtype", "same") == "same" else meta["x_dtype"]
    per, dyn = set(), set()
    if op in ("mhc_post",) or (op == "mhc_fused_post_pre" and t > mhc.FUSED_MAX_TOKENS):
        per.add(("post", hc, h, xdt, dt))
        dyn.add(("post_dyn", hc, vec_for(h, 8), xdt, dt))
    if op == "mhc_post":
        return per, dyn
    m = hc if op == "mhc_head" else hc * (2 + hc)
    fused = op == "mhc_fused_post_pre" and t <= mhc.FUSED_MAX_TOKENS
    s = mhc._tc_splits(t, hc * h) if dt == "bfloat16" and m <= 32 else None
    if not fused and t >= mhc.PRE_TC_MIN_TOKENS and s is not None:
        per.add(("tc_partials", hc, m, h, s))
        dyn.add(("tc_partials", hc, m, h, s))  # per H either way
    else:
        per.add(("fma_partials", hc, m, h, dt, fused, xdt if fused else None))
        dyn.add(("fma_partials_dyn", hc, m, vec_for(h, 4), dt, fused, xdt if fused else None))
    fin = "finalize_head" if op == "mhc_head" else "finalize_pre"
    per.add((fin, hc, h, dt))
    dyn.add((fin + "_dyn", hc, vec_for(h, 8), dt))
    return per, dyn


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("ops", nargs="*", default=list(OPS))
    ap.add_argument("--examples", type=int, default=1000)
    args = ap.parse_args()
    for op in args.ops:
        spec = get_spec(op)
        metas = []

        @settings(
            max_examples=args.examples,
            database=None,
            deadline=None,
            suppress_health_check=list(HealthCheck),
        )
        @given(spec.strategy(size="full"))
        def draw(meta):
            metas.append(meta)  # noqa: B023 (called right below, in this iteration)

        draw()
        per, dyn = set(), set()
        for meta in metas:
            if meta["T"] == 0 or meta.get("invalid"):
                continue  # no kernel runs (validation or the empty path)
            p, d = keys(op, meta)
            per |= p
            dyn |= d
        print(
            f"{op:20} {len(metas):5} draws: {len(per):4} compiles with H a key, "
            f"{len(dyn):4} with H dynamic"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
