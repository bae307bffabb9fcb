"""--accept NAME in the CLI (issue 10 section 4): judged under a named variant, an unknown name
is a usage error listing the op's variants, and a failure says which variant explains it."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent / "kernels"))
from parity_tools_testlib import parity

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "external_repo"
FAST = "myswiglu.kernels:swiglu_fast"  # rounds silu(gate) to x.dtype: the rounded_act variant
META = {"N": 1, "T": 2, "dtype": "float16", "lead": [], "regime": "wide", "seed": 5}
META["options"] = {"alpha": 1.0, "beta": 0.0, "clamp_mode": "pre", "layout": "concat"}
META["options"]["limit"] = None


@pytest.fixture(autouse=True)
def _example(monkeypatch):
    monkeypatch.syspath_prepend(str(EXAMPLE))


def test_unknown_variant_is_a_usage_error_listing_the_variants(capsys):
    for cmd in (["fuzz"], ["case", "--property", "matches_reference", "--meta", "{}"]):
        r = parity(capsys, *cmd, "--op", "swiglu", "--impl", FAST, "--accept", "nosuch")
        assert r.code == 2, r
        assert "unknown variant nosuch" in r.err and "rounded_act" in r.err, r.err


def test_fuzz_accepts_the_variant_and_says_so(capsys, tmp_path):
    common = ["--op", "swiglu", "--impl", FAST, "--property", "matches_reference"]
    common += ["--max-examples", "8", "--device", "cpu", "--out", str(tmp_path)]
    r = parity(capsys, "fuzz", *common, "--accept", "rounded_act", "--json")
    doc = json.loads(r.out)
    assert r.code == 0 and doc["accepted"] == ["rounded_act"], r
    r = parity(capsys, "fuzz", *common, "--json")  # strict: the same kernel fails, diagnosed
    doc = json.loads(r.out)
    f = doc["properties"][0]["failure"]
    assert r.code == 1 and ["rounded_act"] in f["diagnosis"]["variants"], f


def test_case_prints_the_diagnosis_and_judges_under_accept(capsys):
    common = ["--op", "swiglu", "--impl", FAST, "--property", "matches_reference"]
    common += ["--device", "cpu", "--meta"]
    bad = dict(META, regime="normal", T=16, N=64, seed=3)
    r = parity(capsys, "case", *common, json.dumps(bad))
    assert r.code == 1 and "this output matches the reference under: rounded_act" in r.out, r
    r = parity(capsys, "case", *common, json.dumps(bad), "--accept", "rounded_act")
    assert r.code == 0 and "accepted variants (--accept): rounded_act" in r.out, r
