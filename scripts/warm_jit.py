"""Build FlashInfer's JIT modules once, before the timed work of a GPU call (issue 11, section 4:
"FlashInfer JIT modules built once per run"). On the H100 (2026-12-05) `parity bench --op route`
spent its whole 35 s limit in FlashInfer's first-use build of `dsv3_fused_routing`, so the
comparison with parity's route never ran.

    source .gpu/activate.sh && python3 scripts/warm_jit.py     # gpu_all.sh starts it first

Calls every FlashInfer implementation in the catalog once on its op's benchmark case at T = 1
(`OpSpec.bench`; the modules are keyed by what the case fixes, so this is the module the
benchmark uses), and prints the seconds each call took (the build) or why it could not run.
The FlashInfer CUTLASS MoE build is never started: no fused_moe implementation is FlashInfer's.
"""

from __future__ import annotations

import sys
import time


def main() -> int:
    import torch

    if not torch.cuda.is_available():
        print("warm_jit: NOT RUN (needs a CUDA GPU)")
        return 0
    from parity.catalog import get_spec, impls

    built = failed = 0
    for impl in impls():
        if impl.backend != "flashinfer" or impl.op == "fused_moe":
            continue
        spec = get_spec(impl.op)
        if spec.bench is None:
            continue
        meta = {**spec.bench(1), "seed": 0}
        metas = [meta]
        if "options" in meta:  # e.g. swiglu's clamp, which silu_and_mul lacks: the plain form too
            metas.append({**meta, "options": {**meta["options"], "limit": None}})
        t0 = time.perf_counter()
        why = None
        for m in metas:
            try:
                case = spec.build(m, "cuda")
                impl.fn(*case.args, **case.kwargs)
                torch.cuda.synchronize()
                why = None
                break
            except Exception as exc:  # unsupported case, missing bundle: said, not fatal
                why = f"{type(exc).__name__}: {exc}"
        if why is None:
            built += 1
            print(f"warm_jit: {impl.op}:{impl.name} ready in {time.perf_counter() - t0:.1f} s")
        else:
            failed += 1
            print(f"warm_jit: {impl.op}:{impl.name} not built: {why}"[:200])
    print(f"warm_jit: {built} built, {failed} not")
    return 0


if __name__ == "__main__":
    sys.exit(main())
