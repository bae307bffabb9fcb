"""`parity list` and `parity suite`."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from parity.catalog import get_spec
from parity.registry import OP_NAMES
from parity.tools.cli import main


def test_list_json_has_every_op_with_a_reference(capsys):
    assert main(["list", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert {"op", "impl", "backend", "available", "reason", "reference"} <= set(rows[0])
    refs = [r for r in rows if r["reference"]]
    assert sorted(r["op"] for r in refs) == sorted(OP_NAMES)
    assert all(r["available"] for r in refs)
    # an implementation that cannot run here says why instead of failing the import
    for r in rows:
        assert r["available"] or r["reason"]
    # a declared library convention is listed (judged under it everywhere)
    by = {(r["op"], r["impl"]): r for r in rows}
    assert by[("route", "flashinfer")]["accept"] == ["approx_tanh_sigmoid"]
    assert all(r["accept"] == [] for r in refs)


def test_suite_runs_and_writes_json(tmp_path, capsys):
    out = tmp_path / "suite.json"
    rc = main(
        [
            "suite",
            "--device",
            "cpu",
            "--op",
            "swiglu",
            "--impl",
            "reference",
            "--max-examples",
            "3",
            "--jobs",
            "2",
            "--json",
            str(out),
        ]
    )
    assert rc == 0
    d = json.loads(out.read_text())
    (row,) = d["rows"]
    assert row["op"] == "swiglu" and row["impl"] == "reference"
    assert row["examples"] > 0 and not row["failed"] and d["jobs"] == 2
    err = capsys.readouterr().err
    # not a terminal: one plain progress line per (implementation, property), with an ETA
    n = len(get_spec("swiglu").all_properties())
    lines = [ln for ln in err.splitlines() if ln.startswith("parity suite [")]
    assert len(lines) == n and f"[{n}/{n}]" in lines[-1] and "ETA 0:00" in lines[-1]
    assert "\r" not in err


def test_progress_on_a_terminal_rewrites_one_line_with_an_eta():
    import io

    from parity.tools.suite_cmd import Progress

    s = io.StringIO()
    p = Progress(4, stream=s, live=True)
    p.update("swiglu:reference matches_reference", "pass", 1.0)
    assert s.getvalue().startswith("\r\x1b[2K[1/4]") and "ETA " in s.getvalue()
    assert "\n" not in s.getvalue()  # the same line, rewritten
    for _ in range(3):
        p.update("x", "pass", 1.0)
    assert s.getvalue().endswith("\n") and "[4/4]" in s.getvalue()


def test_suite_usage_error_exits_2():
    assert main(["suite", "--device", "tpu"]) == 2
    assert main(["suite", "--jobs", "0"]) == 2


def test_suite_runs_a_module_function_and_rejects_what_selects_nothing(capsys, monkeypatch):
    """`--impl module:function` runs that candidate (a broken one fails); a filter that selects
    nothing is a usage error, never an empty run that exits 0."""
    from pathlib import Path

    monkeypatch.chdir(Path(__file__).parent / "kernels")
    argv = ["suite", "--device", "cpu", "--op", "swiglu", "--max-examples", "5"]
    # in worker processes (the candidate imported there from the current folder)
    assert main([*argv, "--jobs", "2", "--impl", "parity_kernels_swiglu:broken"]) == 1
    cap = capsys.readouterr()
    assert "FAIL: matches_reference" in cap.out
    # the failure text with the shrunk case and its rerun line
    assert "FAIL swiglu / parity_kernels_swiglu:broken / " in cap.err and "  rerun    " in cap.err
    assert main([*argv, "--jobs", "1", "--impl", "parity_kernels_swiglu:correct"]) == 0
    assert main([*argv, "--impl", "nosuch"]) == 2
    assert main(["suite", "--impl", "parity_kernels_swiglu:broken"]) == 2  # needs --op


@pytest.mark.parametrize("jobs", ["1", "2", "2-group"])
def test_suite_cut_by_sigterm_reports_what_finished_and_never_exits_0(tmp_path, jobs):
    """A suite stopped by its time limit (SIGTERM from `timeout`, as the GPU runner's jobs are)
    prints the table and writes the JSON of the units that finished, the rest NOT RUN (cut by
    time), and exits 143: on the H100 (2026-12-05) seven cut suites left no table at all, and
    the one failure they had found was lost with them. "2-group": the signal goes to the whole
    process group, as `timeout` sends it, so the pool's workers die of it too (H100,
    2026-12-06: fused_moe's cut nightly read as five ERRORs, "the worker process died")."""
    group = jobs.endswith("-group")
    jobs = jobs.removesuffix("-group")
    out = tmp_path / "s.json"
    env = dict(os.environ, TRITON_INTERPRET="1", PYTHONUNBUFFERED="1")
    cmd = [sys.executable, "-m", "parity", "suite", "--device", "cpu", "--op", "swiglu"]
    cmd += ["--backend", "triton", "--max-examples", "300", "--jobs", jobs, "--json", str(out)]
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
        start_new_session=group,
    )  # fmt: skip
    err = []
    deadline = time.monotonic() + 240
    for line in proc.stderr:  # wait for the first finished unit
        err.append(line)
        if "[1/8]" in line or time.monotonic() > deadline:
            break
    if jobs == "1":
        time.sleep(1.5)  # inside the second unit (3-4 s here), not between two units
    if group:
        os.killpg(proc.pid, signal.SIGTERM)
    else:
        proc.send_signal(signal.SIGTERM)
    stdout, rest = proc.communicate(timeout=120)
    assert any("[1/8]" in line for line in err), "".join(err)[-2000:]
    assert proc.returncode == 143, (stdout, rest)
    assert "CUT: terminated by signal 15" in stdout and "NOT RUN (cut by time)" in stdout
    (row,) = json.loads(out.read_text())["rows"]
    done = 8 - len(row["not_run"])
    assert 1 <= done < 8 and not row["failed"]
    assert row["cut"] and set(row["cut"]) <= set(row["not_run"])  # cut, not "drew nothing"
    assert not row["errors"], row  # the workers' deaths by the same signal are the cut
    assert f"({len(row['cut'])})" in stdout
    if jobs == "1":  # the cut unit's examples count for ex/s (shown apart), never for a verdict
        assert "cut_examples" in row, row
        assert not row["cut_examples"] or f"(+{row['cut_examples']} cut)" in stdout
    if group:  # nothing of the cut suite outlives it: its process group is empty
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                os.killpg(proc.pid, 0)
            except ProcessLookupError:
                break
            time.sleep(0.1)
        else:
            raise AssertionError("a process of the cut suite's group outlived it")


def test_a_cut_swallowed_inside_a_unit_is_still_a_cut_and_never_its_verdict(monkeypatch):
    """H100, 2026-12-05: SIGTERM arrived while TileLang compiled (its compiler calls back into
    Python through C++, which hands a Python exception back as an ordinary error): the unit read
    nan_policy FAIL, the suite ran on and was killed without a table. The signal is kept, and a
    unit that ends after it is cut, whatever it returned or swallowed."""
    from parity.campaign import worker
    from parity.tools import cli, suite_cmd

    monkeypatch.setattr(worker, "_STOP", [])

    def swallowing_unit(op, impl, prop, *rest):
        try:
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(0.2)  # the handler runs here (and may raise: a second signal would)
        except BaseException as e:  # as a C++ callback boundary does
            return {"op": op, "impl": impl, "prop": prop, "seconds": 0.0, "error": repr(e)}
        return {"op": op, "impl": impl, "prop": prop, "seconds": 0.0, "error": "went on"}

    monkeypatch.setattr(suite_cmd, "run_unit", swallowing_unit)
    args = type("A", (), {"jobs": 1, "profile": "pr", "max_examples": 1})()
    units = [("swiglu", "reference", "matches_reference"), ("swiglu", "reference", "nan_policy")]
    with cli._signals():
        out = suite_cmd._run_units(units, "cpu", args, 1)
    assert isinstance(out.get("_cut"), worker.Terminated) and out["_cut"].code == 143
    assert not any(u in out for u in units)  # neither unit has a verdict: both NOT RUN (cut)


def test_the_engine_turns_a_swallowed_cut_back_into_a_cut(monkeypatch):
    """A property run that ends after this process was told to stop raises Terminated, so no
    command reports its outcome as the kernel's."""
    from parity.campaign import run_property, worker
    from parity.catalog import get_impl, get_spec

    monkeypatch.setattr(worker, "_STOP", [signal.SIGTERM])
    impl = get_impl("swiglu", "reference")
    with pytest.raises(worker.Terminated) as cut:
        run_property(
            get_spec("swiglu"),
            "matches_reference",
            impl.fn,
            impl_name=impl.name,
            device="cpu",
            dtypes=impl.dtypes,
            profile="pr",
            max_examples=2,
        )
    assert cut.value.partial is not None and cut.value.partial["run"] >= 0  # counts, no verdict


def test_sigterm_stops_at_the_next_example_and_a_stuck_unit_after_the_grace(monkeypatch):
    """The first SIGTERM is not raised inside whatever runs (a library can swallow it or be left
    broken): the engine stops before its next example; code that reaches no such point gets
    Terminated GRACE_S later (SIGALRM), and a second SIGTERM raises at once."""
    from parity.campaign import worker
    from parity.tools import cli

    monkeypatch.setattr(worker, "_STOP", [])
    monkeypatch.setattr(worker, "GRACE_S", 0.3)
    with cli._signals():
        t0 = time.monotonic()
        with pytest.raises(worker.Terminated):
            os.kill(os.getpid(), signal.SIGTERM)  # deferred: nothing raised here
            assert worker.stop_requested()
            time.sleep(3)  # stuck (no safe point): the grace timer raises
        assert 0.2 < time.monotonic() - t0 < 2.5
    monkeypatch.setattr(worker, "_STOP", [])
    with cli._signals():
        with pytest.raises(worker.Terminated):
            os.kill(os.getpid(), signal.SIGTERM)
            os.kill(os.getpid(), signal.SIGTERM)  # a second one: at once
            time.sleep(3)
    monkeypatch.setattr(worker, "_STOP", [])
    with cli._signals():  # the engine: Terminated at its next example, with the counts so far
        from parity.campaign import run_property
        from parity.catalog import get_impl, get_spec

        impl = get_impl("swiglu", "reference")
        seen = []

        def fn(*a, **k):
            seen.append(1)
            if len(seen) == 3:
                os.kill(os.getpid(), signal.SIGTERM)
            return impl.fn(*a, **k)

        with pytest.raises(worker.Terminated) as cut:
            run_property(
                get_spec("swiglu"),
                "matches_reference",
                fn,
                impl_name="t",
                device="cpu",
                dtypes=impl.dtypes,
                profile="pr",
                max_examples=50,
            )
        assert len(seen) == 3 and cut.value.partial["run"] >= 2
