"""The fused_moe fp8_block counterexample of the 2026-12-05 H100 nightly (T 3, float16, x tiny):
the same inputs through the Triton implementation on CUDA and in the interpreter (CPU), GEMM1's
activation input (codes and scales) compared exactly, and each output against the float64
oracle under the spec's aggregate gate. The meta was printed before 2026-12-06, when every draw
came from the device's generator: PARITY_GEN_LEGACY=1 rebuilds that case on the GPU, which saves
it as a repro file (`parity.campaign.repro`); the CPU run takes the case from that file (a CPU
generator cannot draw CUDA's numbers; `parity replay FILE --impl triton --device cpu` judges it
the same way):

    PARITY_GEN_LEGACY=1 python3 scripts/diag_fp8_tiny.py cuda A.pt   # GPU runner; A.pt.repro/
    TRITON_INTERPRET=1 python3 scripts/diag_fp8_tiny.py cpu B.pt A.pt.repro/*.json
    python3 scripts/diag_fp8_tiny.py compare A.pt B.pt A.pt.repro/*.json
"""

import json
import sys
from pathlib import Path

import torch

# the meta as the H100 printed it (also `parity case --meta @scripts/diag_fp8_tiny.meta.json`)
META = json.loads(Path(__file__).with_name("diag_fp8_tiny.meta.json").read_text())


def run(dev: str, path: str, inputs: str | None = None) -> None:
    from parity.campaign import repro
    from parity.catalog import get_impl, get_spec
    from parity.optimized.triton._kernels_fused_moe import gemm1_input

    if inputs:  # the case another run saved (the GPU's, on the CPU)
        case = repro.load(inputs).case(dev)
    else:
        case = get_spec("fused_moe").build(META, dev)
        saved = repro.save(case, f"{path}.repro", impl="triton", prop="matches_reference")
        print(f"{dev}: the case saved as {saved}")
    out = get_impl("fused_moe", "triton").fn(*case.args, **case.kwargs)
    x, _, _, topk_w, ids = case.args[:5]
    kw = case.kwargs
    a1, a1_s = gemm1_input(
        x, ids, topk_w, True, tuple(kw["block_shape"]), kw["apply_router_weight_on_input"],
        dev == "cpu",
    )  # fmt: skip
    cpu = [a.cpu() if isinstance(a, torch.Tensor) else a for a in case.args]
    kwc = {k: v.cpu() if isinstance(v, torch.Tensor) else v for k, v in kw.items()}
    ref = get_impl("fused_moe", "reference").fn(*cpu, **kwc)
    torch.save(
        {"out": out.cpu(), "a1": a1.view(torch.uint8).cpu(), "a1_s": a1_s.cpu(), "ref": ref,
         "x": x.cpu(), "ids": ids.cpu()},
        path,
    )  # fmt: skip
    print(f"{dev}: saved {path}")


def compare(p1: str, p2: str, case_file: str) -> None:
    import parity.properties.specs.fused_moe as fm
    from parity.campaign import repro

    a, b = torch.load(p1), torch.load(p2)
    case = repro.load(case_file).case("cpu")
    want = fm._oracle(case)
    for name, d in (("cuda", a), ("cpu", b)):
        v = fm._gate(case, d["out"], want)
        print(f"{name}: aggregate gate {'pass' if v.ok else 'FAIL'}, error / allowance "
              f"{v.ratio:.4g} {v.message}")  # fmt: skip
    print("x equal:", torch.equal(a["x"], b["x"]), "ids:", a["ids"].tolist())
    print("x abs max:", a["x"].abs().max().item(), "x abs min nonzero:",
          a["x"][a["x"] != 0].abs().min().item())  # fmt: skip
    print("a1 codes equal:", torch.equal(a["a1"], b["a1"]),
          "differing:", int((a["a1"] != b["a1"]).sum()))  # fmt: skip
    print("a1 scales equal:", torch.equal(a["a1_s"], b["a1_s"]), a["a1_s"].flatten()[:6].tolist(),
          b["a1_s"].flatten()[:6].tolist())  # fmt: skip
    ref = a["ref"].double()
    for name, d in (("cuda", a), ("cpu", b)):
        err = (d["out"].double() - ref).norm() / ref.norm()
        print(f"{name} out vs reference: relative Frobenius {err.item():.4g}")
    diff = (a["out"].double() - b["out"].double()).abs().max().item()
    print("cuda vs cpu out max abs diff:", diff, "ref abs max:", ref.abs().max().item())
    print("out cuda:", a["out"].flatten()[:8].tolist())
    print("out cpu: ", b["out"].flatten()[:8].tolist())
    print("ref:     ", ref.flatten()[:8].tolist())
    for name, d in (("cuda", a), ("cpu", b)):
        o = d["out"].double()
        sub = (o != 0) & (o.abs() < 2.0**-14)
        print(f"{name}: zeros {int((o == 0).sum())} (ref {int((ref == 0).sum())}), float16 "
              f"subnormals {int(sub.sum())}, max |out - ref| {(o - ref).abs().max().item():.3g} "
              f"at {int((o - ref).abs().argmax())}")  # fmt: skip
    e = (a["out"].double() - ref).abs().flatten()
    top = e.argsort(descending=True)[:8].tolist()
    print("largest cuda errors (index, cuda, cpu, ref):")
    for i in top:
        print(f"  {i:4} {a['out'].flatten()[i].item():.6g} {b['out'].flatten()[i].item():.6g} "
              f"{ref.flatten()[i].item():.6g}")  # fmt: skip


if __name__ == "__main__":
    if sys.argv[1] == "compare":
        compare(sys.argv[2], sys.argv[3], sys.argv[4])
    else:
        run(sys.argv[1], sys.argv[2], sys.argv[3] if len(sys.argv) > 3 else None)
