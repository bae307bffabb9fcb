"""`parity explain OP`: the contract, the properties and the tolerance model with its numbers;
docs/tolerances.md is its output for every op."""

import argparse
import re
from pathlib import Path

import pytest

from parity.catalog import get_spec
from parity.registry import OP_NAMES
from parity.tools import explain_cmd

ROOT = Path(__file__).resolve().parents[2]


def explain(capsys, *argv) -> tuple[int, str, str]:
    """The command through its own parser (the interface cli.py registers)."""
    p = argparse.ArgumentParser(prog="parity")
    explain_cmd.add_parser(p.add_subparsers(dest="command"))
    try:
        args = p.parse_args(["explain", *argv])
    except SystemExit as e:
        out = capsys.readouterr()
        return int(e.code or 0), out.out, out.err
    rc = explain_cmd.run(args)
    out = capsys.readouterr()
    return rc, out.out, out.err


def flat(s: str) -> str:
    return " ".join(s.split())


@pytest.mark.parametrize("op", OP_NAMES)
def test_every_op_has_its_contract_properties_and_tolerance(op, capsys):
    rc, out, _ = explain(capsys, op)
    assert rc == 0
    spec = get_spec(op)
    assert out.startswith(f"{op}: contract (docs/ops.md)")
    assert "docs/ops.md not found" not in out
    # the spec's one-line model verbatim (wrapped), every property and relation by name
    assert flat(spec.tolerance) in flat(out)
    for prop in spec.all_properties():
        assert re.search(rf"^  {prop} ", out, re.M), prop
    assert "derivation\n  - " in out and "numbers for bfloat16" in out
    for v in spec.variants:
        assert f"  {v.name}: " in out
    assert op in explain_cmd.MODELS  # no op falls back to the bare one-liner


def test_numbers_follow_the_dtype(capsys):
    _, bf16, _ = explain(capsys, "swiglu")
    _, f32, _ = explain(capsys, "swiglu", "--dtype", "float32")
    assert "1 ulp(bfloat16) at |y| = 1  2^-7 = 0.0078125" in re.sub(r" {2,}", "  ", bf16)
    assert "1 ulp(float32) at |y| = 1  2^-23" in re.sub(r" {2,}", "  ", f32)
    assert "2^-20 = 9.53674e-07" in bf16  # 16 u32, dtype-independent


def test_fused_moe_accumulation_term_follows_k(capsys):
    rc, out, _ = explain(capsys, "fused_moe", "--size", "4096")
    assert rc == 0
    line = next(ln for ln in out.splitlines() if "K u_acc at K = 4096" in ln)
    assert f"{2 * 2.0**-24 * 4096:.4g}" in line  # K * 2 u32
    fp8 = next(ln for ln in out.splitlines() if "fp8_block at K = 4096, bc = 128" in ln)
    assert f"{4 * 2 * 2.0**-14 + 2 * 2.0**-24 * (4096 // 128 + 4):.4g}" in fp8
    # by default both GEMMs' K: H and N
    _, out, _ = explain(capsys, "fused_moe", "--size", "H=1024", "--size", "N=512")
    assert "K = 1024 (H (first GEMM))" in out and "K = 512 (N (second GEMM))" in out


def test_quantizers_show_the_code_spacing_and_the_reciprocal_window(capsys):
    from parity.properties.specs._quant import RECIP_MID_ULPS

    _, out, _ = explain(capsys, "fp8_quant")
    assert "2^-3 = 0.125" in out and "2^5 = 32" in out
    assert f"{RECIP_MID_ULPS:.6g} ulp32(m)" in out
    assert f"{RECIP_MID_ULPS * 2.0**-23:.4g}" in out  # at the midpoint 1.0625
    assert "matches_reference   agrees with the reference: exact (bits)" in out


def test_contract_extraction_of_shared_sections():
    text = (ROOT / "docs" / "ops.md").read_text()
    sig, para = explain_cmd.contract("mhc_post", text)
    assert sig.startswith("mhc_post(x, residual, post_mix, comb_res_mix)")
    assert para.startswith("`x [T, H]` (sublayer output)") and "mhc_fused_post_pre" not in para
    sig, para = explain_cmd.contract("mxfp4_dequant", text)
    assert sig.startswith("mxfp4_dequant(packed, scales")
    sig, para = explain_cmd.contract("decoder_stack", text)  # no signature block
    assert sig == "" and para.startswith("A small DeepSeek-V4-shaped stack")


def test_usage_errors_exit_2(capsys):
    rc, _, err = explain(capsys, "no_such_op")
    assert rc == 2 and "unknown op 'no_such_op'" in err and "swiglu" in err
    assert explain(capsys)[0] == 2  # neither OP nor --all
    rc, _, err = explain(capsys, "fused_moe", "--size", "Q=3")
    assert rc == 2 and "unknown size 'Q'" in err
    assert explain(capsys, "fused_moe", "--size", "0")[0] == 2
    assert explain(capsys, "swiglu", "--size", "3")[0] == 2  # elementwise: no size
    assert explain(capsys, "swiglu", "--dtype", "int8")[0] == 2


def test_docs_tolerances_md_is_the_generated_text(capsys):
    rc, out, _ = explain(capsys, "--all", "--markdown")
    assert rc == 0
    doc = (ROOT / "docs" / "tolerances.md").read_text()
    assert doc == out, (
        "docs/tolerances.md is out of date: parity explain --all --markdown > docs/tolerances.md"
    )
    for op in OP_NAMES:
        assert f"\n## {op}\n" in doc


def test_registered_in_the_cli(capsys):
    from parity.tools.cli import main

    assert main(["explain", "fp8_quant", "--dtype", "float16"]) == 0
    assert "numbers for float16" in capsys.readouterr().out
    assert main(["explain", "nosuch"]) == 2
