"""The judge runs in the harness: a candidate's process returns outputs only, their structure
is checked against the contract before any property, and a kernel that rewrites parity's checks
or writes to the reply pipe cannot turn a failure into a pass (issue 9, sections 2 and 5)."""

import json
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE))
import hostile_kernels as K  # noqa: E402

from parity.campaign import InProcess, Isolated  # noqa: E402
from parity.catalog import get_spec  # noqa: E402
from parity.registry import Impl  # noqa: E402
from parity.tools.cli import main  # noqa: E402

SPEC = get_spec("swiglu")
META = {
    "N": 8,
    "T": 3,
    "dtype": "float32",
    "lead": [],
    "options": {"alpha": 1.0, "beta": 0.0, "clamp_mode": "pre", "layout": "concat", "limit": None},
    "regime": "normal",
    "seed": 7,
}
# every property but error_parity (bad input: raising is what is checked there)
PROPS = [p for p in SPEC.all_properties() if p != "error_parity"]

STRUCTURES = {
    "as_list": "returned a list of 1, the contract wants a tensor",
    "empty_tuple": "returned a tuple of 0, the contract wants a tensor",
    "returns_none": "returned NoneType, the contract wants a tensor",
    "as_numpy": "returned ndarray, the contract wants a tensor",
    "two_outputs": "returned a tuple of 2, the contract wants a tensor",
    "as_subclass": "output 0 is a tensor subclass Sub, the contract wants a dense torch.Tensor",
    "as_sparse": "output 0 is a sparse_coo tensor, the contract wants a dense torch.Tensor",
}


def _evaluator(name: str, isolated: bool):
    if isolated:
        return Isolated(SPEC, f"hostile_kernels:{name}", "cpu", timeout=60)
    fn = getattr(K, name)
    return InProcess(SPEC, Impl("swiglu", name, "external", fn), "cpu")


@pytest.mark.parametrize("name", sorted(STRUCTURES))
def test_a_wrong_structure_fails_every_property(name):
    ev = _evaluator(name, isolated=False)
    for prop in PROPS:
        status, v = ev.evaluate(prop, META)
        if status == "n/a":
            continue
        assert status == "fail", (prop, status, v)
        assert STRUCTURES[name] in v.message, (prop, v.message)


@pytest.mark.parametrize("name", ["as_list", "as_subclass", "returns_none"])
def test_a_wrong_structure_fails_in_the_worker_too(name):
    ev = _evaluator(name, isolated=True)
    try:
        status, v = ev.evaluate("matches_reference", META)
    finally:
        ev.close()
    assert status == "fail" and STRUCTURES[name] in v.message, (status, v)


def test_the_correct_kernel_passes_isolated_and_in_process():
    """The witness of the tests above: the same harness passes the reference."""
    for isolated in (False, True):
        ev = Isolated(SPEC, "reference", "cpu") if isolated else _evaluator("_ref", False)
        try:
            for prop in PROPS:
                status, v = ev.evaluate(prop, META)
                assert status in ("pass", "n/a"), (isolated, prop, status, v)
        finally:
            ev.close()


@pytest.mark.parametrize("name", ["patches_the_judge", "forges_a_reply"])
def test_a_kernel_cannot_forge_the_verdict(name, capsys, monkeypatch):
    monkeypatch.chdir(HERE)
    code = main(
        [
            "case",
            "--op",
            "swiglu",
            "--impl",
            f"hostile_kernels:{name}",
            "--property",
            "matches_reference",
            "--meta",
            json.dumps(META),
            "--json",
        ]
    )
    doc = json.loads(capsys.readouterr().out)
    assert code == 1 and doc["status"] == "fail", doc


def test_pytest_parity_impl_runs_a_module_function_and_rejects_unknown_names(tmp_path):
    """`pytest --parity-impl module:function` runs that candidate; an unknown name is an
    error, never a run that collects nothing and passes."""
    import os
    import subprocess

    test = Path(__file__).parents[1] / "test_properties.py"
    env = {**os.environ, "PYTHONPATH": str(HERE)}
    base = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(test)]
    base += ["--parity-op", "swiglu", "--parity-device", "cpu", "--parity-max-examples", "5"]
    run = lambda *a: subprocess.run(  # noqa: E731
        [*base, *a], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300
    )
    bad = run("--parity-impl", "hostile_kernels:as_list", "-k", "matches_reference")
    assert bad.returncode == 1 and "the contract wants a tensor" in bad.stdout, bad.stdout[-2000:]
    assert run("--parity-impl", "nosuch").returncode not in (0, 5)


def test_public_api_check_and_strategies():
    """parity.check on a broken and a correct importable kernel; parity.strategies builds
    cases a user's own @given test can call a kernel on."""
    from hypothesis import given, settings

    import parity

    bad = parity.check("swiglu", K.patches_the_judge, max_examples=3, out_dir=None, database=None)
    assert bad.exit_code == 1 and bad["matches_reference"].failure is not None
    with pytest.raises(AssertionError, match="matches_reference"):
        bad.raise_for_failure()
    good = parity.check(
        "swiglu", "reference", max_examples=3, skip=["nan_policy"], out_dir=None, database=None
    )
    assert good.exit_code == 0 and "nan_policy" not in {s.prop for s in good.properties}
    good.raise_for_failure()
    with pytest.raises(ValueError):
        parity.check("swiglu", "reference", properties=["nosuch"])
    strat, build = parity.strategies("swiglu")
    seen = []

    @settings(max_examples=3, database=None)
    @given(strat)
    def body(meta):
        case = build(meta)
        seen.append(K._ref(*case.args, **case.kwargs).shape)

    body()
    assert seen
