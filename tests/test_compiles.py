"""The compile meter (`parity._compiles`): the GPU suites report Triton compiles beside examples
a second (issue 11, section 4). On the CPU nothing compiles, so the hooks are driven by hand
here as triton calls them (the cache hook before a compile, the post-compile hook after)."""

import pytest

triton = pytest.importorskip("triton")

from parity import _compiles  # noqa: E402
from parity.campaign.engine import Stats, merge_stats  # noqa: E402


@pytest.fixture
def fresh(monkeypatch):
    rt = triton.knobs.runtime
    monkeypatch.setattr(_compiles, "_installed", False)
    monkeypatch.setattr(_compiles, "_count", 0)
    monkeypatch.setattr(_compiles, "_seconds", 0.0)
    monkeypatch.setattr(_compiles, "_starts", [])
    monkeypatch.setattr(rt, "jit_cache_hook", None)
    monkeypatch.setattr(rt, "jit_post_compile_hook", None)
    return rt


def test_each_compile_is_counted_and_timed(fresh):
    assert _compiles.install()
    assert _compiles.install()  # once: a second call chains nothing more
    for _ in range(3):
        assert not fresh.jit_cache_hook(key="k", repr="r")  # falsy: the compile goes on
        fresh.jit_post_compile_hook(key="k", repr="r")
    n, s = _compiles.totals()
    assert n == 3 and s >= 0.0


def test_a_hook_already_set_still_runs_and_decides(fresh):
    seen = []
    fresh.jit_cache_hook = lambda **kw: seen.append(("before", kw["key"])) or True
    fresh.jit_post_compile_hook = lambda **kw: seen.append(("after", kw["key"]))
    _compiles.install()
    assert fresh.jit_cache_hook(key="k1") is True  # its "skip this compile" is kept
    fresh.jit_post_compile_hook(key="k1")
    assert seen == [("before", "k1"), ("after", "k1")]
    assert _compiles.totals()[0] == 1


def test_merged_stats_sum_the_compiles():
    a = Stats("op", "impl", "prop", "cuda", compiles=2, compile_seconds=1.5)
    b = Stats("op", "impl", "prop", "cuda", compiles=3, compile_seconds=0.5)
    m = merge_stats([a, b])
    assert (m.compiles, m.compile_seconds) == (5, 2.0)


def test_the_suite_table_shows_compiles_where_there_were_any(monkeypatch, capsys, tmp_path):
    """On a GPU the suite adds a compiles column (count, seconds) and JSON fields; the units
    are faked here (their compiles as a CUDA run would report them)."""
    import json
    import time

    from parity.catalog import get_spec
    from parity.tools import cli, suite_cmd

    def fake_units(units, device, args, n_impls):
        out = {"_t0": time.perf_counter(), "_jobs": 1}
        for u in units:
            st = Stats(*u, device, run=10, passed=10, seconds=2.0)
            st.compiles, st.compile_seconds = 7, 3.0
            out[u] = st.as_dict()
        return out

    monkeypatch.setattr(suite_cmd, "_run_units", fake_units)
    out = tmp_path / "s.json"
    rc = cli.main(
        ["suite", "--device", "cpu", "--op", "swiglu", "--impl", "reference", "--json", str(out)]
    )
    assert rc == 0
    text = capsys.readouterr().out
    assert "compiles" in text
    n = len(get_spec("swiglu").all_properties())  # one faked unit a property
    row = json.load(open(out))["rows"][0]
    assert row["compiles"] == 7 * n and abs(row["compile_seconds"] - 3.0 * n) < 1e-9
    assert f"{7 * n} ({3.0 * n:.0f} s)" in text
