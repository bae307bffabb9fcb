"""The golden tables (parity/properties/golden.py) against every implementation available here,
and witnesses: broken implementations that only the tables' edge rows catch.

Without a GPU the reference and Triton (in the interpreter) run; TileLang, FlashInfer and the
GPU-only rows report NOT RUN (a skip, never a pass).
"""

from __future__ import annotations

import json

import pytest
import torch

from parity import reference as ref
from parity.catalog import impls
from parity.properties import golden
from parity.registry import Impl

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def _pairs():
    out = []
    for row in golden.TABLE:
        for impl in impls(row.op, include_reference=True):
            out.append(pytest.param(row, impl, id=f"{row.id}|{impl.name}"))
    return out


@pytest.mark.parametrize(("row", "impl"), _pairs())
def test_golden_row(row, impl):
    results = golden.run_row(row, impl, DEVICE)
    failed = [r for r in results if r.status == golden.FAIL]
    assert not failed, "\n".join(f"{r.row} {r.prop}: {r.message}" for r in failed)
    ran = [r for r in results if r.status in (golden.PASS, golden.UNSUPPORTED)]
    if not ran:
        reasons = sorted({r.message for r in results})
        assert all(m.startswith("NOT RUN") for m in reasons), reasons
        pytest.skip(reasons[0])
    if impl.reference:
        assert all(r.status == golden.PASS for r in results), results


def test_rows_are_well_formed():
    from parity.properties.checks import PROPERTIES

    ids = [r.id for r in golden.TABLE]
    assert len(ids) == len(set(ids)), "duplicate row ids"
    for r in golden.TABLE:
        assert r.why.strip(), r.id
        assert r.holds and set(r.holds) <= set(PROPERTIES), r.id
        assert r.each_mutation == ("error_parity" in r.holds), r.id


def test_every_backend_threshold_has_neighbour_rows():
    """A threshold a backend switches paths on has rows at t - 1, t and t + 1 that the CPU runs
    (the reference) and the GPU runs (the kernels): a changed threshold fails here first."""
    from parity.optimized.tilelang import mhc as tl

    for t in (tl.FUSED_MAX_TOKENS, tl.PRE_TC_MIN_TOKENS):
        assert t in golden.MHC_THRESHOLDS
    for op in ("mhc_pre", "mhc_fused_post_pre", "mhc_head"):
        for t in golden.MHC_THRESHOLDS:
            for n in (t - 1, t, t + 1):
                rows = [r for r in golden.TABLE if r.op == op and r.meta.get("T") == n]
                assert any(not r.gpu_only for r in rows), (op, n)
                assert any(r.gpu_only and r.meta["H"] in (4096, 7168) for r in rows), (op, n)


# --- witnesses ------------------------------------------------------------------------------


def _transposed_comb_on_tc_path(residual, fn, hc_scale, hc_base, **kw):
    """mhc_pre whose tensor-core path (T >= 128) returns comb_res_mix transposed: the index
    convention bug, behind a path switch."""
    post, comb, li = ref.mhc_pre(residual, fn, hc_scale, hc_base, **kw)
    if residual.shape[0] >= 128:
        comb = comb.transpose(1, 2).contiguous()
    return post, comb, li


def _renorm_plus_1e20(logits, *, k, routed_scaling_factor=1.0, renormalize=True, **kw):
    """route that renormalises by (sum + 1e-20), as fused_topk_deepseek does: right to 1e-20
    relative on ordinary logits, off by orders of magnitude once the scores underflow."""
    w, ids = ref.route(logits, k=k, renormalize=False, routed_scaling_factor=1.0, **kw)
    if renormalize:
        w = w / (w.sum(-1, keepdim=True) + 1e-20)
    return w * routed_scaling_factor, ids


def _stale_candidate_slots(logits, *, k, bias=None, n_group=1, **kw):
    """route as FlashInfer's single-group kernel for 128 < E <= 384 computed it (flashinfer
    `noAuxTcKernels.cu` before the fix): 8 candidate slots a warp, only k of them written, all
    8 read; an unwritten slot (key 0, expert 0) outranks every negative key."""
    w, ids = ref.route(logits, k=k, bias=bias, n_group=n_group, **kw)
    e = logits.shape[1]
    if n_group == 1 and 128 < e <= 384 and k < 8 and bias is not None:
        key = torch.sigmoid(logits.double()) + bias.double()
        stale = key.max(-1).values < 0  # the slot's 0 wins: expert 0, the whole weight
        ids = torch.where(stale[:, None], torch.zeros_like(ids), ids)
        w = torch.where(stale[:, None], torch.full_like(w, kw.get("routed_scaling_factor", 1.0)), w)
    return w, ids


def _witness(op, fn):
    return Impl(op=op, name=fn.__name__, backend="external", fn=fn, devices=("cpu", "cuda"))


def test_witness_path_switch_bug_caught_only_past_the_threshold():
    w = _witness("mhc_pre", _transposed_comb_on_tc_path)
    table = [
        r
        for r in golden.TABLE
        if r.op == "mhc_pre" and not r.gpu_only and r.holds == ("matches_reference",)
    ]
    res = golden.run_table("cpu", impls=[w], table=table)
    by_t = {}
    for r in res:
        by_t.setdefault(r.meta["T"], set()).add(r.status)
    assert golden.FAIL in by_t[128] and golden.FAIL in by_t[129], by_t
    assert by_t[127] == {golden.PASS}, by_t  # below the switch the witness is right
    assert all(s == {golden.PASS} for t, s in by_t.items() if t < 128), by_t


def _route_value_rows():
    """The CPU route rows that compare values against the reference."""
    return [
        r
        for r in golden.TABLE
        if r.op == "route" and not r.gpu_only and r.holds == ("matches_reference",)
    ]


def test_witness_renormalisation_constant_caught_by_the_underflow_row():
    w = _witness("route", _renorm_plus_1e20)
    res = golden.run_table("cpu", impls=[w], table=_route_value_rows())
    failed = {r.row for r in res if r.status == golden.FAIL}
    assert failed and all("logits~-60" in r for r in failed), failed
    assert any(r.status == golden.PASS for r in res)


def test_cli_runs_a_table_and_writes_json(tmp_path, capsys):
    path = tmp_path / "golden.json"
    assert golden.main(["--device", "cpu", "--op", "sinkhorn", "--json", str(path)]) == 0
    out = capsys.readouterr().out
    assert "golden tables on cpu" in out and "sinkhorn" in out
    results = json.loads(path.read_text())["results"]
    ref_rows = [r for r in results if r["impl"] == "reference"]
    assert ref_rows and {r["status"] for r in ref_rows} <= {"pass", "not run"}
    assert any(r["status"] == "pass" for r in ref_rows)
    # TileLang has no CPU path: reported, never passed
    tl = [r for r in results if r["impl"] == "tilelang"]
    assert tl and all(r["status"] == "not run" and r["message"].startswith("NOT RUN") for r in tl)
    assert golden.main(["--op", "no_such_op"]) == 2


def test_witness_stale_candidate_slots_caught_by_the_single_group_row():
    """The bug FlashInfer's route had (H100 nightly, 2026-12-06): caught by the row of no groups,
    top-1 and every key negative, and by no other row of the table."""
    w = _witness("route", _stale_candidate_slots)
    res = golden.run_table("cpu", impls=[w], table=_route_value_rows())
    failed = {r.row for r in res if r.status == golden.FAIL}
    assert failed == {
        r.row for r in res if "n_group=1,topk_group=1,k=1" in r.row and "dsv3" in r.row
    }
    assert failed and any(r.status == golden.PASS for r in res)
