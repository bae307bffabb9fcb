"""Lower a TileLang kernel of parity to CUDA source on any machine, no GPU or nvcc needed
(issue 11, section 4: to develop the mHC kernels' compile keys offline). Needs tilelang (the
bundle's 0.1.15 installs from the registry: `pip install tilelang==0.1.15`).

    python3 scripts/tilelang_lower.py post_dyn hc=4 vec=8 xdt=bfloat16 rdt=bfloat16 [--source]
    python3 scripts/tilelang_lower.py post hc=4 H=4096 xdt=bfloat16 rdt=bfloat16
    python3 scripts/tilelang_lower.py fma_partials_dyn hc=4 M=24 vec=4 rdt=bfloat16 fused=True \
        xdt=bfloat16
    python3 scripts/tilelang_lower.py finalize_pre_dyn hc=4 vec=8 rdt=bfloat16

Prints the kernel's global accesses by width (16-byte `uint4` / `float4`, 8-byte `uint2` /
`float2`, scalar) and its size in lines; `--source` prints the CUDA source too.
"""

from __future__ import annotations

import os
import re
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)


def lower(name: str, spec: dict) -> str:
    import tilelang
    import tvm

    from parity.optimized.tilelang import _kernels_mhc as km

    func = km.build(name, **spec)
    target = tvm.target.Target({"kind": "cuda", "arch": "sm_90"})
    with tvm.transform.PassContext(config=km.PASS_CONFIGS), target:
        return str(tilelang.lower(func, target=target).kernel_source)


def widths(src: str) -> dict:
    body = src[src.index("__global__") :]
    kinds = ("uint4", "float4", "uint2", "float2")
    vec = {w: len(re.findall(rf"\*\({w}\*\)", body)) for w in kinds}
    vec["lines"] = body.count("\n")
    return vec


def main() -> None:
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    if not args:
        print(__doc__)
        raise SystemExit(2)
    spec = {}
    for kv in args[1:]:
        k, v = kv.split("=", 1)
        spec[k] = int(v) if v.lstrip("-").isdigit() else {"True": True, "False": False}.get(v, v)
    src = lower(args[0], spec)
    print(args[0], spec, widths(src))
    if "--source" in sys.argv:
        print(src)


if __name__ == "__main__":
    main()
