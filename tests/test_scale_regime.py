"""The scale regime (parity/properties/scale.py, issue 11 section 5).

CPU: every case reports NOT RUN (never pass) with exit code 3 and the summary counts them; the
chunk machinery, run on small shapes (`min_elements` lowered), passes the reference and catches
an implementation that is wrong only past an offset (the int32 wrap) or only in its last rows;
the int32 witness kernels are correct on small shapes (so only scale can catch them).
GPU (marked `gpu`, NOT RUN without CUDA): the int32 witnesses fail at scale and parity's own
Triton swiglu passes there.
"""

import json
import os
import subprocess
import sys

import pytest
import torch

from parity import reference as ref
from parity.catalog import get_spec, reference_impl
from parity.properties import scale
from parity.registry import Impl

CUDA = torch.cuda.is_available()
SMALL = 4096  # the limits of the small cases: 4096 and 8192 elements


def _impl(op, fn, name="broken"):
    return Impl(op=op, name=name, backend="torch", fn=fn, devices=("cpu", "cuda"))


def _swiglu_case(i=0):
    return scale.cases(["swiglu"], min_elements=SMALL)[i]


def test_cpu_every_case_not_run_exit_3(tmp_path, capsys):
    if CUDA:
        pytest.skip("NOT RUN: this machine has CUDA (the CPU behaviour is what is tested)")
    out = tmp_path / "scale.json"
    rc = scale.main(["--device", "cpu", "--json", str(out)])
    assert rc == 3
    doc = json.loads(out.read_text())
    results = doc["results"]
    assert len(results) == len(scale.items()) > 0
    assert {r["status"] for r in results} == {"not run"}
    assert all(r["message"].startswith("NOT RUN: ") for r in results)
    assert {r["op"] for r in results} >= {"swiglu", "fp8_quant", "mhc_post", "fused_moe"}
    text = capsys.readouterr().out
    assert f"0 passed, 0 failed, 0 unsupported, {len(results)} not run" in text
    # a CUDA run asked for on a machine without one: not run too, never pass
    assert scale.main(["--device", "cuda", "--op", "swiglu"]) == 3


def test_unknown_op_or_impl_is_a_usage_error():
    assert scale.main(["--op", "nope"]) == 2
    assert scale.main(["--op", "swiglu", "--impl", "nope"]) == 2


def test_cases_cross_the_limits():
    for sc in scale.cases():
        if sc.op == "moe_align":  # the contract keeps its flat ids below 2**31
            assert sc.whole and sc.rows * sc.meta["k"] < scale.LIMIT
            continue
        assert sc.elements > scale.LIMIT, sc.id
        assert (sc.rows - 1) * sc.row_elements < 2 * scale.LIMIT or sc.elements > 2 * scale.LIMIT
    past32 = {sc.op for sc in scale.cases() if sc.elements > 2 * scale.LIMIT}
    assert past32 >= {"swiglu", "fp8_quant", "mxfp4_quant", "mxfp4_dequant", "mhc_post"}


def test_windows_cover_first_crossing_and_last_rows():
    sc = _swiglu_case()
    wins = scale.mandatory_windows(sc, [("arg0", 16, 2), ("out0", 8, 2)])
    rows = sc.rows
    assert wins[0][0] == 0
    assert any(lo < rows <= hi for lo, hi, _ in wins)  # the last rows
    wrap = SMALL // sc.row_elements  # the first row whose offset passes the limit
    assert any(lo <= wrap < hi for lo, hi, _ in wins)
    assert all(hi - lo <= sc.chunk_rows for lo, hi, _ in wins)


@pytest.mark.parametrize("op", scale.OPS)
def test_reference_passes_small_cases(op):
    """The reference as the implementation passes every small case of every op: the chunked
    build, the window slicing and the spec's compare agree with themselves."""
    for sc in scale.cases([op], min_elements=SMALL)[:1]:
        r = scale.check_case(sc, reference_impl(op), "cpu", check_seconds=0.5)
        assert r.status == scale.PASS, (sc.id, r.message)
        assert r.rows_checked > 0 and r.windows >= (1 if sc.whole else 2)


def _wrapped(x, **kw):
    """swiglu whose rows past the int32 wrap read the rows the wrapped offset points at."""
    y = ref.swiglu(x, **kw)
    wrap = SMALL // x.shape[1]
    if y.shape[0] > wrap:
        y[wrap:] = y[: y.shape[0] - wrap].clone()
    return y


def _last_row_off(x, **kw):
    y = ref.swiglu(x, **kw)
    y[-1, -1] = y[-1, -1] * 2 + 1
    return y


def test_chunked_checker_catches_wrong_rows_past_the_wrap():
    for i in range(3):
        sc = _swiglu_case(i)
        r = scale.check_case(sc, _impl("swiglu", _wrapped), "cpu", check_seconds=0.0)
        assert r.status == scale.FAIL, (sc.id, r.message)
        assert "rows [" in r.message


def test_chunked_checker_catches_a_wrong_last_row_only():
    sc = _swiglu_case(1)
    r = scale.check_case(sc, _impl("swiglu", _last_row_off), "cpu", check_seconds=0.0)
    assert r.status == scale.FAIL
    lo = int(r.message.split("rows [")[1].split(",")[0])
    assert lo + sc.chunk_rows >= sc.rows  # found in the last window


def test_sweep_catches_a_middle_row_when_exhaustive():
    sc = _swiglu_case(2)
    must = scale.mandatory_windows(sc, [("arg0", sc.row_elements, 2)])
    covered = {r for lo, hi, _ in must for r in range(lo, hi)}
    mid = next(r for r in range(sc.rows) if r not in covered)

    def broken(x, **kw):
        y = ref.swiglu(x, **kw)
        y[mid] = -y[mid] + 3
        return y

    impl = _impl("swiglu", broken)
    r = scale.check_case(sc, impl, "cpu", check_seconds=0.0, exhaustive=True)
    assert r.status == scale.FAIL and "sweep" in r.message


def test_quantizer_scales_of_the_last_rows_compared_exactly():
    sc = scale.cases(["fp8_quant"], min_elements=SMALL)[0]

    def broken(x, **kw):
        q, s = ref.fp8_quant(x, **kw)
        s[-1] = s[-1] * 2  # a power of two: the codes stay plausible, the scales do not
        return q, s

    r = scale.check_case(sc, _impl("fp8_quant", broken), "cpu", check_seconds=0.0)
    assert r.status == scale.FAIL and "rows [" in r.message


def test_not_run_when_memory_is_short():
    sc = _swiglu_case()
    r = scale.check_case(sc, reference_impl("swiglu"), "cpu", free_bytes=1)
    assert r.status == scale.NOT_RUN and "free" in r.message and r.bytes_needed > 1


def test_full_size_cases_fit_an_80_gb_gpu():
    """The memory computed before allocating (a one-row probe on the CPU): every case but
    moe_align at the contract's limit (its whole reference) fits 80 GB."""
    for sc in scale.cases():
        if sc.op in ("fp8_block_quant",):  # a one-expert probe is 15M elements: slow here
            continue
        need = scale.bytes_needed(sc, scale.probe(sc, "cpu"))
        if sc.op == "moe_align" and sc.rows * sc.meta["k"] > scale.LIMIT // 2:
            assert need > 80e9
        else:
            assert need < 70e9, (sc.id, need)


# --- the witnesses ----------------------------------------------------------------------------


def _witness(name):
    pytest.importorskip("triton")
    from tests import witnesses_scale

    return getattr(witnesses_scale, name)


@pytest.mark.parametrize(
    "op,name,meta",
    [
        (
            "swiglu",
            "swiglu_int32",
            {"T": 9, "lead": [], "N": 37, "dtype": "bfloat16", "regime": "normal"},
        ),
        (
            "mxfp4_dequant",
            "mxfp4_dequant_int32",
            {"lead": [5], "K": 96, "dtype": "bfloat16", "scale_regime": "typical"},
        ),
    ],
)
def test_int32_witness_is_right_on_small_shapes(op, name, meta):
    """The witnesses pass the spec on small shapes (in the interpreter without a GPU): only
    the scale regime can catch them."""
    fn = _witness(name)
    spec = get_spec(op)
    if op == "swiglu":
        meta = {**meta, "options": dict(scale.SWIGLU_OPTS)}
    for seed in (1, 2):
        case = spec.build({**meta, "seed": seed}, "cuda" if CUDA else "cpu")
        out = case.call(fn)
        v = spec.compare(case, out if isinstance(out, tuple) else (out,))
        assert v.ok, v.message


def _run_scale(tmp_path, *args):
    out = tmp_path / "r.json"
    cmd = [sys.executable, "-m", "parity.properties.scale", "--device", "cuda", *args]
    rc = subprocess.run([*cmd, "--json", str(out)], timeout=560).returncode
    return rc, json.loads(out.read_text())["results"]


@pytest.mark.gpu
def test_gpu_int32_witnesses_caught_at_scale_and_triton_swiglu_passes(tmp_path):
    if not CUDA:
        pytest.skip("NOT RUN: needs a CUDA GPU (the scale regime runs on the GPU only)")
    pytest.importorskip("triton")
    rc, res = _run_scale(tmp_path, "--op", "swiglu", "--impl", "tests.witnesses_scale:swiglu_int32")
    assert rc == 1
    assert all(r["status"] == "fail" for r in res), res
    rc, res = _run_scale(
        tmp_path, "--op", "mxfp4_dequant", "--impl", "tests.witnesses_scale:mxfp4_dequant_int32"
    )
    # its int32 product is `row * k` (pointer + column is 64-bit): it wraps only in the case
    # whose last rows start past 2**31 (T=599187); at T=299594 the last row starts at
    # 2147482624 and the witness is right there (H100, 2026-12-05: that case passed)
    by = {r["case"]: r["status"] for r in res}
    assert rc == 1 and by["mxfp4_dequant:T=599187,K=7168"] == "fail", res
    rc, res = _run_scale(tmp_path, "--op", "swiglu", "--impl", "triton")
    assert rc == 0 and all(r["status"] == "pass" for r in res), res


def crash_swiglu(x, **kw):
    """A kernel that takes its process down (as an illegal address can on a GPU)."""
    import os

    os._exit(7)


def test_worker_protocol_survives_a_crash():
    """The worker processes of a GPU run, exercised on the CPU: a case that kills its worker
    fails with the crash's exit code, and a new worker runs the rest."""
    argv = ["--device", "cpu", "--op", "swiglu", "--min-elements", str(SMALL)]
    argv += ["--impl", "tests.test_scale_regime:crash_swiglu", "--impl", "reference"]
    work = scale.items(
        ["swiglu"], ["tests.test_scale_regime:crash_swiglu", "reference"], min_elements=SMALL
    )
    res = scale.orchestrate(argv, work, None)
    assert len(res) == len(work) == 6
    by = {(r.impl, r.case): r for r in res}
    for sc, impl in work:
        r = by[(impl.name, sc.id)]
        if impl.name == "reference":
            assert r.status == scale.PASS, r.message
        else:
            assert r.status == scale.FAIL and "exit 7" in r.message


# --- review findings (each failed before its fix) ---------------------------------------------


def test_exhaustive_checks_every_row():
    """--exhaustive checks every row: a mandatory window that does not start on the sweep's
    grid must not mark the rows of its grid cell before it as checked."""
    sc = _swiglu_case()
    must = scale.mandatory_windows(sc, scale.probe(sc, "cpu").tensors)
    checked = {r for lo, hi, _ in must for r in range(lo, hi)}
    marked = {lo // sc.chunk_rows for lo, _, _ in must}
    gap = [r for r in range(sc.rows) if r not in checked and r // sc.chunk_rows in marked]
    assert gap, "the case no longer has a mandatory window off the grid"
    bad = gap[0]

    def broken(x, **kw):
        y = ref.swiglu(x, **kw)
        y[bad] = -y[bad] + 3
        return y

    r = scale.check_case(sc, _impl("swiglu", broken), "cpu", check_seconds=0.0, exhaustive=True)
    assert r.status == scale.FAIL, r.message
    ok = scale.check_case(sc, reference_impl("swiglu"), "cpu", check_seconds=0.0, exhaustive=True)
    assert ok.status == scale.PASS and ok.rows_checked == sc.rows, ok.message


def test_rows_checked_counts_each_row_once():
    """Overlapping windows (first, crossing and last rows) are counted once: a pass never
    claims more rows than it checked, nor "(all)" with rows left unchecked."""
    import dataclasses

    sc = dataclasses.replace(_swiglu_case(), chunk_rows=52, limits=(900,))
    r = scale.check_case(sc, reference_impl("swiglu"), "cpu", check_seconds=0.0)
    union = {x for lo, hi, _ in r.checked for x in range(lo, hi)}
    assert sum(hi - lo for lo, hi, _ in r.checked) >= sc.rows > len(union)  # overlapping
    assert r.status == scale.PASS and r.rows_checked == len(union), r.message
    assert "(all)" not in r.message


def _oom(*args, **kwargs):
    raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")


@pytest.mark.parametrize("where", ["build_full", "impl", "compare"])
def test_out_of_memory_is_not_run_never_a_failure_of_the_impl(monkeypatch, where):
    """An OOM past the memory estimate (building the case, in the implementation, or in the
    chunked check) is NOT RUN with the numbers, not a crash blamed on the case."""
    sc = _swiglu_case()
    impl = reference_impl("swiglu")
    if where == "build_full":
        monkeypatch.setattr(scale, "build_full", _oom)
    elif where == "impl":
        impl = _impl("swiglu", _oom)
    else:
        import dataclasses

        import parity.catalog

        spec = dataclasses.replace(get_spec("swiglu"), compare=_oom)
        monkeypatch.setattr(parity.catalog, "get_spec", lambda op: spec)
    r = scale.check_case(sc, impl, "cpu", check_seconds=0.0)
    assert r.status == scale.NOT_RUN and "out of memory" in r.message, r.message


def test_setup_error_is_parity_s_failure_not_a_crash_at_scale(monkeypatch):
    """parity's own setup raising is a failure that says so, not an exception that kills the
    worker (which the parent reports as the implementation's crash at scale)."""

    def boom(*a, **k):
        raise ValueError("the spec's build broke")

    monkeypatch.setattr(scale, "build_full", boom)
    r = scale.check_case(_swiglu_case(), reference_impl("swiglu"), "cpu", check_seconds=0.0)
    assert r.status == scale.FAIL and "setup" in r.message and "build broke" in r.message


def _module(tmp_path, name, body):
    (tmp_path / f"{name}.py").write_text(body)
    return f"{name}:fn"


def test_impl_module_is_never_imported_by_the_parent(tmp_path, monkeypatch):
    """A `module:function` is data to the harness: only a worker imports it."""
    marker = tmp_path / "imported"
    body = f"open({str(marker)!r}, 'w').close()\ndef fn(*a, **k):\n    raise AssertionError\n"
    name = _module(tmp_path, "scale_marker_mod", body)
    monkeypatch.syspath_prepend(str(tmp_path))
    assert scale.main(["--device", "cpu", "--op", "mhc_pre", "--impl", name]) == 3
    assert not marker.exists()
    assert scale.main(["--op", "mhc_pre", "--impl", "not a name"]) == 2


def test_worker_dying_at_import_with_exit_0_fails_its_cases(tmp_path, monkeypatch):
    """A module that exits 0 at import takes its worker down with exit 0: its case fails (it is
    imported only when its first case starts), the parent does not loop, the rest run."""
    name = _module(tmp_path, "scale_exit0_mod", "import os\nos._exit(0)\ndef fn(): pass\n")
    path = [str(tmp_path), *filter(None, [os.environ.get("PYTHONPATH")])]
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(path))
    monkeypatch.syspath_prepend(str(tmp_path))
    argv = ["--device", "cpu", "--op", "mhc_pre", "--min-elements", str(SMALL)]
    argv += ["--impl", name, "--impl", "reference"]
    work = scale.items(["mhc_pre"], [name, "reference"], min_elements=SMALL)
    res = scale.orchestrate(argv, work, None)
    assert [(r.impl, r.status) for r in res] == [(name, scale.FAIL), ("reference", scale.PASS)]
    assert "exit 0" in res[0].message


def test_run_items_imports_in_the_worker_per_op():
    """The worker's import of each implementation is per (op, name): the reference of one op
    is not reused for another; a module that cannot be imported fails its cases (a typo must
    not read as not run beside passing implementations)."""
    work = scale.items(
        ["swiglu", "mhc_pre"], ["reference", "no_such_module_x:fn"], min_elements=SMALL
    )
    res = scale.run_items(work, "cpu", check_seconds=0.0)
    got = {(r.op, r.impl, r.status) for r in res}
    assert got == {
        ("swiglu", "reference", scale.PASS),
        ("mhc_pre", "reference", scale.PASS),
        ("swiglu", "no_such_module_x:fn", scale.FAIL),
        ("mhc_pre", "no_such_module_x:fn", scale.FAIL),
    }
    assert all("cannot import" in r.message for r in res if r.status == scale.FAIL)


def hang_mhc_pre(*args, **kw):
    import time

    time.sleep(60)


def test_a_case_past_the_budget_is_stopped_and_reported_not_run(monkeypatch):
    """A worker still in a case after the deadline is stopped: that case and the rest are
    NOT RUN and the results come back (before, the parent waited without limit and the outer
    timeout lost every result)."""
    import time

    monkeypatch.setattr(scale, "STOP_GRACE_S", 0.0)
    name = "tests.test_scale_regime:hang_mhc_pre"
    argv = ["--device", "cpu", "--op", "mhc_pre", "--min-elements", str(SMALL)]
    argv += ["--impl", name, "--impl", "reference"]
    work = scale.items(["mhc_pre"], [name, "reference"], min_elements=SMALL)
    t0 = time.time()
    res = scale.orchestrate(argv, work, t0 + 3)  # the worker may or may not reach the case by then
    assert time.time() - t0 < 30
    assert [(r.impl, r.status) for r in res] == [
        (name, scale.NOT_RUN),
        ("reference", scale.NOT_RUN),
    ]
    assert all("budget spent" in r.message for r in res)
