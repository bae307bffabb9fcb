"""Instructions a weight byte in the inner loop of fused_moe's mxfp4 decode GEMMs, compiled for
sm_90 without a GPU (triton's ptxas and nvdisasm): the byte GEMV beside the word GEMV
(DECODE_MX_WORDS) and the whole-MX-block loads (`MX_VEC`, the default since 2026-12-06), and the
16-row dot tile with and without them. The H100 ran the GEMV issue-bound (Nsight Compute: SM
70%, DRAM 35%), so fewer instructions a byte is the lead a timing must confirm.

Use the runner's triton (3.6: `pip install triton==3.6.0` in a separate venv): triton 3.9 gave
the GEMV 90 and 168 registers where 3.6 and the H100 give 64 and 79, and other counts.

    env -u TRITON_INTERPRET PYTHONPATH=$PWD python scripts/sass_gemv.py
"""

from __future__ import annotations

import collections
import os
import re
import subprocess
import tempfile

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from parity.optimized.triton import _kernels_moe_decode as dec

FN = dec._gemm_kernel
NAMES = FN.arg_names
STAGES = int(os.environ.get("STAGES", "2"))  # the default decode config: 2 for the GEMV
NVDISASM = os.path.join(os.path.dirname(triton.__file__), "backends/nvidia/bin/nvdisasm")


def compile_gemv(
    words: int,
    bn: int,
    bk: int,
    warps: int,
    vec: int = 0,
    bm: int = 1,
    act2d: int = 0,
    bf16mul: int = 0,
    ptx: int = 0,
    a32: int = 0,
):
    """The GEMM as the launcher specialises it: unit strides constant, the rest multiples of 16
    (bm 1: the GEMV; 16: the dot tile; act2d: MX_ACT_2D; bf16mul: MX_BF16_MUL; ptx: MX_PTX;
    a32: float32 activations, as PARITY_MOE_MX_PTX=2 passes them)."""
    sig = {n: "i32" for n in NAMES}
    sig.update(
        a_ptr="*fp32" if a32 else "*bf16", b_ptr="*i32" if words else "*u8", part_ptr="*fp32",
        a_scale_ptr="*fp32", b_scale_ptr="*u8", pairs_ptr="*i32", slot_e_ptr="*i32",
        slot_start_ptr="*i32", slot_cnt_ptr="*i32",
    )  # fmt: skip
    consts = dict(
        a_row_div=1, QUANT=2, UPCAST_DOT=False, BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk,
        MX_WORDS=words, MX_VEC=vec, MX_ACT_2D=act2d, MX_BF16_MUL=bf16mul, MX_PTX=ptx, stride_ak=1,
        stride_bk=1, stride_bsk=1, stride_pm=1,
    )  # fmt: skip
    const, attrs = {}, {}
    for k, v in consts.items():
        sig[k] = "constexpr"
        const[(NAMES.index(k),)] = v
    for n in NAMES:
        if n not in consts and (n.endswith("_ptr") or n.startswith("stride") or n in "NK"):
            attrs[(NAMES.index(n),)] = [["tt.divisibility", 16]]
    src = ASTSource(FN, sig, const, attrs)
    stages = STAGES if bm == 1 else 3  # the default decode configs
    return triton.compile(
        src, target=GPUTarget("cuda", 90, 32), options=dict(num_warps=warps, num_stages=stages)
    )


def loop_sass(ck) -> list[str]:
    """The SASS of the K loop: the shortest backward-branch span that loads from global memory
    (the longest is the loop over an expert's rows, which holds the K loop and its reduction)."""
    with tempfile.NamedTemporaryFile(suffix=".cubin", delete=False) as f:
        f.write(ck.asm["cubin"])
    text = subprocess.run([NVDISASM, "-c", f.name], capture_output=True, text=True).stdout
    os.unlink(f.name)
    lines = text.split("\n")
    labels = {m.group(1): i for i, ln in enumerate(lines) if (m := re.match(r"^\.L_x_(\d+):", ln))}
    spans = []
    for i, ln in enumerate(lines):
        m = re.search(r"BRA\s+`\(\.L_x_(\d+)\)", ln)
        if m and labels.get(m.group(1), i) < i:
            body = lines[labels[m.group(1)] : i + 1]
            if any("LDG" in b for b in body):
                spans.append(body)
    body = min(spans, key=len)
    return [ln for ln in body if re.search(r"/\*[0-9a-f]{4,}\*/", ln)]


def registers(ck) -> str:
    """The kernel's register count (cuobjdump -res-usage of the cubin)."""
    with tempfile.NamedTemporaryFile(suffix=".cubin", delete=False) as f:
        f.write(ck.asm["cubin"])
    cuobjdump = os.path.join(os.path.dirname(NVDISASM), "cuobjdump")
    out = subprocess.run([cuobjdump, "-res-usage", f.name], capture_output=True, text=True).stdout
    os.unlink(f.name)
    m = re.search(r"REG:(\d+)", out)
    return m.group(1) if m else "?"


def main() -> None:
    # (bm, bn, bk, words, vec, act2d, bf16mul, ptx)
    rows = [(1, bn, bk, w, v, 0, 0, 0) for bn, bk in ((32, 256), (64, 128), (128, 128)) for w, v
            in ((0, 0), (0, 1), (1, 0))]  # fmt: skip
    # DECODE_MX_ACT_2D: the activations as [1, K] tiles
    rows += [(1, bn, bk, 0, 1, 1, 0, 0) for bn, bk in ((32, 256), (16, 512), (32, 512))]
    # PARITY_MOE_MX_PTX: the word GEMV decoded in PTX (2: float32 activations)
    rows += [(1, bn, bk, 1, 0, 0, 0, p) for p in (1, 2) for bn, bk in ((32, 256), (128, 128))]
    # the T 16 dot tile, and with PARITY_MOE_MX_BF16_MUL
    rows += [(16, 128, 64, 0, v, 0, b, 0) for v, b in ((0, 0), (1, 0), (1, 1), (1, 2))]
    for bm, bn, bk, words, vec, act2d, bf16mul, ptx in rows:
        ck = compile_gemv(
            words, bn, bk, 4, vec=vec, bm=bm, act2d=act2d, bf16mul=bf16mul, ptx=int(ptx > 0),
            a32=int(ptx == 2),
        )  # fmt: skip
        body = loop_sass(ck)
        ops = collections.Counter(
            re.sub(r"^\s*/\*[0-9a-f]+\*/\s*(@!?U?P\w+\s+)?", "", ln).split()[0].split(".")[0]
            for ln in body
        )
        per_thread = bn * bk // 2 // (32 * 4)  # weight bytes a thread an iteration
        kind = ("gemv " if bm == 1 else "dot  ") + ("words" if words else "bytes")
        kind += (" vec" if vec else "    ") + (" 2d" if act2d else "   ")
        kind += f" bf16mul{bf16mul}" if bf16mul else ""
        kind += f" ptx{ptx}" if ptx else ""
        print(
            f"{kind} {bn}x{bk}: {len(body)} SASS instructions a K step, "
            f"{len(body) / per_thread:.1f} a weight byte, {registers(ck)} registers; "
            + ", ".join(f"{k} {v}" for k, v in ops.most_common(6))
        )


if __name__ == "__main__":
    main()
