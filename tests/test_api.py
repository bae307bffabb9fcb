"""The public API (issue 10 section 1): parity.check, Report, strategies, ops, register, and
what the pytest plugin passes to check (section 2-3)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import parity
from parity import api

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "external_repo"
FAST = "myswiglu.kernels:swiglu_fast"  # rounds silu(gate) early: a real bug
GOOD = "myswiglu.kernels:swiglu"


def _device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"  # check's default


@pytest.fixture
def example(monkeypatch):
    monkeypatch.syspath_prepend(str(EXAMPLE))
    monkeypatch.delenv("PARITY_MAX_EXAMPLES", raising=False)
    # no example store unless a test names one: a failure saved by one test would be replayed
    # (unshrunk, at case 1) in another
    monkeypatch.setenv("PARITY_HYPOTHESIS_DB", "off")
    monkeypatch.setattr(api, "SESSION", {})


def test_import_parity_is_light_and_reexports_the_api():
    code = (
        "import sys, parity; assert 'torch' not in sys.modules and 'hypothesis' not in "
        "sys.modules, sorted(sys.modules); from parity import check, ops, register, strategies;"
        " print(ops()[0])"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and r.stdout.strip() == "swiglu", r.stderr
    assert parity.check is api.check and parity.register is api.register
    assert "swiglu" in parity.ops() and "fp8_quant" in parity.ops()
    assert parity.Report.__name__ == "Report"


def test_check_finds_the_broken_kernel_with_a_rerun_line(example, tmp_path, capsys):
    report = parity.check("swiglu", FAST, max_examples=8, out_dir=str(tmp_path))
    dev = _device()
    assert report.exit_code == 1 and not report.ok and report.device == dev
    st = report["matches_reference"]
    assert st.failure is not None and st.failure["shrunk"] and st.cases_to_failure <= 8
    # run from here, the example's folder must be on the path: the line says so
    prefix = f"PYTHONPATH={os.path.relpath(EXAMPLE)}:$PYTHONPATH "
    assert st.failure["repro"].startswith(f"{prefix}parity case --op swiglu --impl {FAST} ")
    assert st.repro_file and Path(st.repro_file).exists()
    with pytest.raises(AssertionError) as e:
        report.raise_for_failure()
    assert str(e.value) == report.text()
    assert f"FAIL swiglu / {FAST} / matches_reference on {dev}: counterexample" in str(e.value)
    assert "rerun    PYTHONPATH=" in str(e.value) and f"--impl {FAST}" in str(e.value)
    # progress went to stderr as plain lines (not a terminal here), one per property done
    err = capsys.readouterr().err
    assert re.search(rf"parity swiglu / \S+ on {dev}: \[1/8\] matches_reference: FAIL", err), err


def test_check_passes_the_correct_kernel_and_reports_what_was_skipped(example):
    from myswiglu import swiglu

    report = parity.check("swiglu", swiglu, max_examples=8, skip=["error_parity"], out_dir=None)
    assert report.exit_code == 0, report.text()
    assert report.impl == GOOD  # a callable importable by name runs isolated, under that name
    assert "error_parity" not in {st.prop for st in report.properties}
    assert report.skipped == ["error_parity"] and "skipped: error_parity" in report.text()
    assert report.raise_for_failure() is report
    only = parity.check("swiglu", swiglu, properties=["matches_reference"], max_examples=4)
    assert [st.prop for st in only.properties] == ["matches_reference"] and only.ok


def test_a_kernel_not_importable_by_name_runs_in_process(example):
    from myswiglu.kernels import swiglu_fast

    def local(x, **kw):  # a test's own function: no worker can import it
        return swiglu_fast(x, **kw)

    report = parity.check(
        "swiglu", local, properties=["matches_reference"], max_examples=8, out_dir=None
    )
    assert report.exit_code == 1 and "run in-process" in report.text()
    with pytest.raises(ValueError, match="isolate=False"):
        parity.check("swiglu", local, isolate=True)


def test_unknown_names_are_clear_errors(example):
    with pytest.raises(ValueError, match="unknown op 'swiglo'; ops: swiglu"):
        parity.check("swiglo", GOOD)
    with pytest.raises(ValueError, match=r"unknown properties \['nosuch'\] for swiglu"):
        parity.check("swiglu", GOOD, properties=["nosuch"])
    with pytest.raises(ValueError, match="error_parity"):  # the message lists the properties
        parity.check("swiglu", GOOD, skip=["eror_parity"])
    with pytest.raises(ValueError, match=r"unknown variant nosuch .*rounded_act"):
        parity.check("swiglu", GOOD, accept=["nosuch"])
    with pytest.raises(ValueError, match="unknown profile 'weekly'"):
        parity.check("swiglu", GOOD, profile="weekly")
    with pytest.raises(KeyError, match="no implementation 'nosuch'"):
        parity.check("swiglu", "nosuch")
    with pytest.raises(ValueError, match="unknown op"):
        parity.strategies("swiglo")
    assert api._profile("parity-pr") == api._profile("pr")


def test_accept_judges_under_the_named_variant(example):
    """swiglu_fast rounds the activation to the input dtype: exactly the `rounded_act` variant
    (vLLM's silu_and_mul); accepted, it passes; the report lists what was accepted."""
    kw = dict(properties=["matches_reference"], max_examples=8, out_dir=None)
    report = parity.check("swiglu", FAST, accept=["rounded_act"], **kw)
    assert report.ok and report.accepted == ["rounded_act"], report.text()
    assert "accepted variants: rounded_act" in report.text()
    # the case the strict run shrinks to (an infinite gate and up): under the variant the
    # same element is NaN (silu(-inf) = -inf * 0), not the -inf of a bracketed sigmoid
    meta = {"N": 1, "T": 2, "dtype": "float16", "lead": [], "regime": "wide", "seed": 5}
    meta["options"] = {"alpha": 1.0, "beta": 0.0, "clamp_mode": "pre", "layout": "concat"}
    meta["options"]["limit"] = None
    from myswiglu.kernels import swiglu_fast

    from parity.catalog import get_spec
    from parity.properties.variants import judge_under

    spec = get_spec("swiglu")
    case = spec.build(meta, "cpu")
    out = (swiglu_fast(*case.clone().args, **case.kwargs),)
    assert judge_under(spec, case, out, ["rounded_act"]), "the variant's NaN is not derived"


def test_a_failure_is_diagnosed_by_the_variants_that_explain_it(example):
    """Without accept=, the shrunk failure of swiglu_fast says which variant explains it (in the
    text, and in the failure dict)."""
    kw = dict(properties=["matches_reference"], max_examples=8, out_dir=None)
    report = parity.check("swiglu", FAST, **kw)
    f = report["matches_reference"].failure
    assert f is not None and ["rounded_act"] in f["diagnosis"]["variants"], f
    assert "this output matches the reference under: rounded_act" in report.text()


def test_failing_examples_are_replayed_first_from_the_database(example, tmp_path):
    """parity's own example store: the final failing case is saved under
    parity:op:impl:prop:device and replayed first next run (a derandomized run: Hypothesis's
    own database would not be used); fixed, it is deleted."""
    db = tmp_path / "db"
    kw = dict(properties=["matches_reference"], max_examples=8, out_dir=None)
    first = parity.check("swiglu", FAST, database=str(db), **kw)
    saved = list(db.rglob("meta-*.json"))
    assert first.exit_code == 1 and len(saved) == 1, "nothing saved in the database"
    assert f"parity:swiglu:{FAST}:matches_reference:" in next(db.rglob("key.txt")).read_text()
    again = parity.check("swiglu", FAST, database=str(db), **kw)
    st = again["matches_reference"]
    assert again.exit_code == 1 and st.cases_to_failure == 1, again.text()
    assert st.failure["meta"] == first["matches_reference"].failure["meta"]
    # the same folder, the same key: a kernel that passes it now removes it
    from parity.campaign.exampledb import ExampleStore, key_for

    store = ExampleStore(db)
    key = key_for("swiglu", FAST, "matches_reference", first.device)
    store.save(key.replace(FAST, GOOD), first["matches_reference"].failure["meta"])
    fixed = parity.check("swiglu", GOOD, database=str(db), **kw)
    assert fixed.ok and store.fetch(key.replace(FAST, GOOD)) == [], fixed.text()
    off = parity.check("swiglu", FAST, database="off", **kw)
    assert off["matches_reference"].cases_to_failure > 1  # not replayed: searched afresh


def test_xdist_workers_give_the_kernel_process_one_gpu_each(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "4,5")
    monkeypatch.setenv("PYTEST_XDIST_WORKER", "gw3")
    assert api._xdist_gpu_env("cuda") == {"CUDA_VISIBLE_DEVICES": "5"}
    assert api._xdist_gpu_env("cpu") is None
    monkeypatch.delenv("PYTEST_XDIST_WORKER")
    assert api._xdist_gpu_env("cuda") is None
    assert os.environ["CUDA_VISIBLE_DEVICES"] == "4,5"  # the calling process is not changed


def test_strategies_draws_cases_a_users_given_test_can_call(example):
    from hypothesis import given, settings
    from myswiglu import swiglu

    from parity.catalog import get_spec

    strat, build = parity.strategies("swiglu")
    spec, seen = get_spec("swiglu"), []

    @settings(max_examples=5, database=None, deadline=None)
    @given(strat)
    def body(meta):
        case = build(meta)
        out = swiglu(*case.args, **case.kwargs)
        assert spec.compare(case, (out,)), meta
        seen.append(tuple(out.shape))

    body()
    assert len(seen) == 5


CONFTEST = """
import parity
from myswiglu.kernels import swiglu_fast


@parity.register("swiglu", name="conftest_fast", backend="torch", devices=("cpu", "cuda"))
def conftest_fast(x, **kw):
    return swiglu_fast(x, **kw)
"""

TEST = """
import parity


def test_registered_in_conftest():
    parity.check("swiglu", "conftest_fast").raise_for_failure()
"""


def test_a_kernel_registered_in_a_users_conftest_reruns_as_printed(tmp_path):
    """The kernel lives in tests/conftest.py (not importable from the project's root as is):
    the rerun line names it by module:function with the path it needs, and works as printed;
    the plugin's --parity-skip-property reaches parity.check and the report says so."""
    proj = tmp_path / "proj"
    (proj / "tests").mkdir(parents=True)
    (proj / "tests" / "conftest.py").write_text(textwrap.dedent(CONFTEST))
    (proj / "tests" / "test_mine.py").write_text(textwrap.dedent(TEST))
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("PYTEST_", "PARITY_")) and k != "TRITON_INTERPRET"
    }
    env["PYTHONPATH"] = os.pathsep.join([str(EXAMPLE), str(ROOT)])
    env["PATH"] = os.pathsep.join([os.path.dirname(sys.executable), env.get("PATH", "")])
    r = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests",
         "--parity-property", "matches_reference", "--parity-property", "error_parity",
         "--parity-skip-property", "error_parity", "--parity-max-examples", "8"],
        cwd=proj, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    out = r.stdout + r.stderr
    assert r.returncode == 1, out[-4000:]
    assert "FAIL swiglu / conftest:conftest_fast / matches_reference" in out, out[-4000:]
    assert "skipped: error_parity" in out, out[-4000:]
    assert not re.search(r"^  (deterministic|error_parity) ", out, re.M), out[-4000:]
    rerun = re.search(r"rerun +(.+)", out)
    assert rerun and "--impl conftest:conftest_fast" in rerun.group(1), out[-4000:]
    assert rerun.group(1).startswith("PYTHONPATH=tests"), rerun.group(1)
    again = subprocess.run(
        ["bash", "-c", rerun.group(1)], cwd=proj, env=env, capture_output=True, text=True,
        timeout=300,
    )  # fmt: skip
    assert again.returncode == 1, again.stdout[-3000:] + again.stderr[-3000:]
    assert "FAIL swiglu / conftest:conftest_fast / matches_reference" in again.stdout


def test_the_plugins_options_are_check_defaults(example, tmp_path):
    """What `pytest --parity-property/--parity-skip-property/--parity-accept/--parity-profile`
    put in api.SESSION reaches parity.check; a bad profile is a usage error of the run."""
    api.SESSION.update(properties=["matches_reference", "deterministic"], skip=["deterministic"])
    report = parity.check("swiglu", GOOD, max_examples=4, out_dir=None, progress=False)
    assert [st.prop for st in report.properties] == ["matches_reference"], report.text()
    assert report.skipped == ["deterministic"] and report.ok
    api.SESSION.update(accept=["rounded_act"])  # --parity-accept rounded_act
    fast = parity.check("swiglu", FAST, max_examples=8, out_dir=None, progress=False)
    assert fast.ok and fast.accepted == ["rounded_act"], fast.text()
    api.SESSION.update(accept=["nosuch"])
    with pytest.raises(ValueError, match="unknown variant nosuch"):
        parity.check("swiglu", GOOD)
    api.SESSION.clear()
    api.SESSION.update(profile="weekly")
    with pytest.raises(ValueError, match="unknown profile 'weekly'"):
        parity.check("swiglu", GOOD)
    r = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--co",
         "--parity-profile", "weekly"],
        cwd=tmp_path, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert r.returncode == 4 and "--parity-profile: expected one of pr, nightly" in r.stderr, r


def test_a_module_function_is_never_imported_by_check(example, monkeypatch):
    """check("op", "module:function") names the kernel for its worker: the calling process
    does not import it; a name that does not import is a ValueError."""
    mod = "myswiglu.kernels"
    monkeypatch.delitem(sys.modules, mod, raising=False)
    report = parity.check("swiglu", GOOD, properties=["matches_reference"], max_examples=4)
    assert report.ok and mod not in sys.modules, report.text()
    with pytest.raises(ValueError, match="nosuch_module"):
        parity.check("swiglu", "nosuch_module:fn", max_examples=2, out_dir=None)
    with pytest.raises(ValueError, match="expected module:function"):
        parity.check("swiglu", "bad name:fn", max_examples=2, out_dir=None)
