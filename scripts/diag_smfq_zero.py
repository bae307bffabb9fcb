"""One GPU counterexample, element by element: the reference `silu_mul_fp8_quant` on CUDA gave
code +0 where the contract's interval is exactly -0 (H100, 2026-12-05; meta below). Runs the
reference on the case's CUDA inputs and on the same inputs copied to the CPU, and prints every
element whose code differs: gate, up, the float32 SwiGLU on each device, the group's scale.

    source .gpu/activate.sh && python3 scripts/diag_smfq_zero.py
"""

from __future__ import annotations

import json
import os

import torch

from parity.catalog import get_spec
from parity.reference.quant import silu_mul_fp8_quant
from parity.reference.swiglu import swiglu_math

META = json.loads(
    '{"M": 700, "N": 2048, "dtype": "bfloat16", "options": {"clamp_mode": "pre", '
    '"column_major_scales": false, "group_size": 128, "limit": null, "scale_format": "fp32"}, '
    '"regime": "zero_groups", "seed": 1}'
)

case = get_spec("silu_mul_fp8_quant").build(META, "cuda")
x = case.args[0]
opts = case.kwargs
if os.environ.get("OUT"):  # the inputs (a CUDA generator drew them) for a CPU replay of the check
    torch.save({"x": x.cpu(), "meta": META}, os.path.join(os.environ["OUT"], "smfq_case.pt"))
qg, sg = silu_mul_fp8_quant(x, **opts)
qc, sc = silu_mul_fp8_quant(x.cpu(), **opts)
bg, bc = qg.cpu().view(torch.uint8), qc.view(torch.uint8)
bad = (bg != bc).nonzero().tolist()
print(f"{len(bad)} codes differ; scales equal: {torch.equal(sg.cpu(), sc)}")
kw = dict(limit=None, alpha=1.0, beta=0.0, layout="concat", clamp_mode="pre", dtype=torch.float32)
yg, yc = swiglu_math(x, **kw).cpu(), swiglu_math(x.cpu(), **kw)
n = x.shape[1] // 2
for r, c in bad[:10]:
    g, u = x[r, c].item(), x[r, n + c].item()
    sig_g = torch.sigmoid(x[r, c].float()).item()
    sig_c = torch.sigmoid(x[r, c].float().cpu()).item()
    print(
        f"[{r},{c}] gate {g!r} up {u!r} sigmoid cuda {sig_g!r} cpu {sig_c!r} y cuda "
        f"{yg[r, c].item()!r} cpu {yc[r, c].item()!r} code cuda {int(bg[r, c]):#04x} cpu "
        f"{int(bc[r, c]):#04x} scale {sc[r, c // 128].item()!r}"
    )
