"""Isolation on every path (issue 9 sections 1, 2, 3, 6): the harness never imports the
candidate's module; an import or a kernel that exits, crashes or hangs is a failing candidate;
a crash is blamed on the case that caused it; limits hold; no process outlives parity."""

import json
import os
import signal
import subprocess
import sys
import time
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
OPTS = {"alpha": 1.0, "beta": 0.0, "clamp_mode": "pre", "layout": "concat", "limit": None}


def meta(T: int, seed: int = 7) -> dict:
    return {"N": 8, "T": T, "dtype": "float32", "lead": [], "options": OPTS}


def _meta(T, seed=7):
    return {**meta(T), "regime": "normal", "seed": seed}


FUZZ = ["fuzz", "--op", "swiglu", "--device", "cpu", "--property", "matches_reference"]
CHECK = ["check", "--op", "swiglu", "--device", "cpu", "--max-examples", "3"]
CHECK += ["--property", "matches_reference"]


# --- section 1: the import happens in the worker --------------------------------------------

IMPORTS = {
    "hostile_import_exit": "import crashed",
    "hostile_import_osexit": "import crashed",
    "hostile_import_segv": "import crashed",
    "hostile_import_hang": "import hung",
}


@pytest.mark.parametrize("module", sorted(IMPORTS))
def test_a_module_breaking_its_import_is_a_failing_candidate(module, capsys, monkeypatch, tmp_path):
    monkeypatch.chdir(HERE)
    t0 = time.monotonic()
    code = main([*FUZZ, "--impl", f"{module}:fn", "--timeout", "2", "--out", str(tmp_path)])
    out = capsys.readouterr().out
    assert code == 1 and IMPORTS[module] in out, out
    assert module not in sys.modules  # the harness never imported it
    assert main([*CHECK, "--impl", f"{module}:fn", "--timeout", "2"]) == 1
    assert "verdict: BAD" in capsys.readouterr().out
    assert time.monotonic() - t0 < 40


def test_a_name_that_does_not_resolve_is_still_a_usage_error(capsys, monkeypatch):
    """The witness: a missing module or attribute is a usage error, not a failing kernel."""
    monkeypatch.chdir(HERE)
    assert main([*FUZZ, "--impl", "no_such_module_xyz:fn"]) == 2
    assert main([*FUZZ, "--impl", "hostile_kernels:no_such_fn"]) == 2
    assert main([*FUZZ, "--impl", "not a name:fn"]) == 2
    assert main([*CHECK, "--impl", "no_such_module_xyz:fn"]) == 125


@pytest.mark.parametrize(
    "name,isolate",
    [
        ("raises_keyboard_interrupt", True),
        ("raises_keyboard_interrupt", False),
        ("segfaults", True),
        ("hangs", True),
    ],
)
def test_check_says_bad_for_an_interrupting_crashing_or_hanging_kernel(
    name, isolate, capsys, monkeypatch
):
    monkeypatch.chdir(HERE)
    extra = ["--timeout", "2"] + ([] if isolate else ["--no-isolate"])
    assert main([*CHECK, "--impl", f"hostile_kernels:{name}", *extra]) == 1
    assert "verdict: BAD" in capsys.readouterr().out


@pytest.mark.parametrize("name", ["raises_system_exit", "raises_keyboard_interrupt"])
def test_no_isolate_reports_a_kernel_exit_as_a_failing_case(name, capsys, monkeypatch, tmp_path):
    monkeypatch.chdir(HERE)
    argv = [*FUZZ, "--impl", f"hostile_kernels:{name}", "--no-isolate", "--max-examples", "3"]
    assert main([*argv, "--out", str(tmp_path)]) == 1
    out = capsys.readouterr().out
    assert "FAIL swiglu" in out and type_name(name) in out, out


def type_name(name: str) -> str:
    return {"raises_system_exit": "SystemExit", "raises_keyboard_interrupt": "KeyboardInterrupt"}[
        name
    ]


# --- section 2: the candidate's failures are the candidate's --------------------------------


@pytest.mark.parametrize("isolated", [True, False])
@pytest.mark.parametrize("name", ["unprintable_exception", "on_meta_device", "as_numpy"])
def test_candidate_failures_are_not_parity_errors(name, isolated):
    if isolated:
        ev = Isolated(SPEC, f"hostile_kernels:{name}", "cpu", timeout=60)
    else:
        ev = InProcess(SPEC, Impl("swiglu", name, "external", getattr(K, name)), "cpu")
    try:
        status, v = ev.evaluate("matches_reference", _meta(3))
    finally:
        ev.close()
    assert status == "fail" and "parity error" not in v.message, (status, v)


# --- section 3: crashes blamed on the right case ---------------------------------------------


def test_a_crash_caused_by_an_earlier_case_is_blamed_on_it():
    ev = Isolated(SPEC, "hostile_kernels:poisoned_by_t3", "cpu", timeout=60)
    try:
        assert ev.evaluate("matches_reference", _meta(3))[0] == "pass"  # poisons the worker
        assert ev.evaluate("matches_reference", _meta(5))[0] == "crash"
        assert ev.blame == {"alone": False, "after": ("matches_reference", _meta(3), None)}
        status, v = ev.evaluate("matches_reference", _meta(5))  # fresh worker: passes alone
        assert status == "pass", v
    finally:
        ev.close()


def test_a_crash_report_names_both_cases_and_keeps_the_kernels_frames(capsys, tmp_path):
    from parity.campaign import drive
    from parity.campaign.text import failure_text

    ev = Isolated(SPEC, "hostile_kernels:poisoned_by_t3", "cpu", timeout=60)
    try:
        # a seed whose 40 draws hold a T = 3 case before others (seed 3 did until the swiglu
        # strategy drew plain options more often, 2026-12-05)
        st = drive(SPEC, "matches_reference", ev, impl_name="x", max_examples=40, seed=1)
    finally:
        ev.close()
    assert st.failure is not None and st.failure["kind"] == "crash", st
    assert not st.failure["shrunk"]
    text = failure_text(st)
    assert "crashes after case A, not alone" in text and "rerun A" in text, text
    assert '"T": 3' in text  # case A is the T == 3 case
    # a crash alone: the deepest frames shown are the kernel's own
    ev = Isolated(SPEC, "hostile_kernels:segfaults", "cpu", timeout=60)
    try:
        status, v = ev.evaluate("matches_reference", _meta(3))
    finally:
        ev.close()
    frames = [ln for ln in v.message.splitlines() if "File" in ln]
    assert status == "crash" and ev.blame == {"alone": True}
    assert "hostile_kernels.py" in frames[-1] and "segfaults" in frames[-1], v.message
    assert not [f for f in frames if "parity" + os.sep in f], v.message


def test_a_crash_alone_is_shrunk():
    from parity.campaign import drive

    ev = Isolated(SPEC, "hostile_kernels:segfaults_from_t2", "cpu", timeout=60)
    try:
        st = drive(SPEC, "matches_reference", ev, impl_name="x", max_examples=30, seed=3)
    finally:
        ev.close()
    assert st.failure["kind"] == "crash" and ev.blame in (None, {"alone": True}), st.failure
    assert st.failure["meta"]["T"] == 2 and not st.failure["meta"]["lead"], st.failure["meta"]


# --- section 6: limits that hold ---------------------------------------------------------------


def test_max_time_holds_against_a_hanging_kernel(capsys, monkeypatch, tmp_path):
    monkeypatch.chdir(HERE)
    argv = [*FUZZ, "--impl", "hostile_kernels:hangs", "--max-time", "3", "--timeout", "120"]
    t0 = time.monotonic()
    code = main([*argv, "--out", str(tmp_path), "--json"])
    took = time.monotonic() - t0
    doc = json.loads(capsys.readouterr().out)
    assert took < 3 + 12, took  # the budget, plus the worker's start and a margin
    assert code == 3 and doc["properties"][0]["stopped"] == "time budget spent", doc


def test_workers_are_bounded_and_split_the_budget(capsys, tmp_path):
    argv = ["fuzz", "--op", "swiglu", "--impl", "reference", "--device", "cpu", "--json"]
    argv += ["--property", "deterministic", "--max-examples", "6", "--out", str(tmp_path)]
    assert main([*argv, "--workers", "512", "--seed", "1"]) == 0
    cap = capsys.readouterr()
    assert "bounded to" in cap.err
    p = json.loads(cap.out)["properties"][0]
    assert (
        6 <= p["run"] + p["unsupported"] + p["not_applicable"] <= 6 + len(os.sched_getaffinity(0))
    )


def test_workers_judge_in_the_harness(capsys, monkeypatch, tmp_path):
    """--workers: the candidate runs in an isolated worker of each campaign process and is
    judged there; rewriting parity's judge in its own process changes nothing."""
    monkeypatch.chdir(HERE)
    argv = ["fuzz", "--op", "swiglu", "--impl", "hostile_kernels:patches_the_judge", "--json"]
    argv += ["--property", "matches_reference", "--max-examples", "4", "--workers", "2"]
    assert main([*argv, "--device", "cpu", "--out", str(tmp_path)]) == 1
    p = json.loads(capsys.readouterr().out)["properties"][0]
    assert p["verdict"] == "FAIL", p


def _pids() -> list[int]:
    try:
        return [int(x) for x in Path(K.PIDS).read_text().split()]
    except OSError:
        return []


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state not in ("Z", "X")


@pytest.mark.parametrize("name", ["spawns_and_passes", "spawns_and_aborts", "spawns_and_hangs"])
def test_no_child_of_a_kernel_outlives_parity(name, capsys, monkeypatch, tmp_path):
    """After a normal end, a crash and a hang, the kernel's sleeping children are gone."""
    monkeypatch.chdir(HERE)
    Path(K.PIDS).unlink(missing_ok=True)
    argv = [*FUZZ, "--impl", f"hostile_kernels:{name}", "--max-examples", "2"]
    main([*argv, "--timeout", "1", "--out", str(tmp_path), "--shrink-time", "1"])
    capsys.readouterr()
    pids = _pids()
    assert pids
    time.sleep(0.2)
    assert not [p for p in pids if _alive(p)], pids


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_no_process_outlives_parity_killed_by_a_signal(sig, tmp_path):
    Path(K.PIDS).unlink(missing_ok=True)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(HERE), *sys.path])}
    cmd = [sys.executable, "-m", "parity", *FUZZ, "--impl", "hostile_kernels:spawns_and_hangs"]
    proc = subprocess.Popen(
        [*cmd, "--timeout", "300", "--out", str(tmp_path)],
        cwd=HERE,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        t0 = time.monotonic()
        while not _pids() and time.monotonic() - t0 < 60:
            time.sleep(0.1)
        assert _pids(), "the kernel never ran"
        proc.send_signal(sig)
        proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
    time.sleep(0.3)
    left = [p for p in _pids() if _alive(p)]
    assert not left, left
    assert proc.returncode != 0


@pytest.mark.parametrize("isolate", [True, False])
def test_kernel_output_is_cut_and_json_stays_json(isolate, capfd, monkeypatch, tmp_path):
    """50 MB printed and a 50 MB exception message: the --json output parses, and neither the
    report nor the repro files carry the 50 MB."""
    monkeypatch.chdir(HERE)
    argv = [*FUZZ, "--impl", "hostile_kernels:huge_message", "--max-examples", "2", "--json"]
    argv += ["--out", str(tmp_path), "--shrink-time", "2"]
    code = main(argv + ([] if isolate else ["--no-isolate"]))
    out = capfd.readouterr().out
    assert code == 1 and len(out) < 100_000, len(out)
    doc = json.loads(out)
    assert doc["properties"][0]["failure"]["message"].startswith("raised ValueError")
    files = list(tmp_path.rglob("*"))
    assert files and all(f.stat().st_size < 1_000_000 for f in files if f.is_file())


# --- section 7: writes_all_outputs tells a written value from the poison ------------------


@pytest.mark.parametrize(
    "op,name",
    [("swiglu", "writes_nan_everywhere"), ("mxfp4_quant", "mxfp4_writes_ff_and_255")],
)
def test_a_written_nan_ff_byte_or_scale_255_is_written(op, name):
    """Every element written, with values that look like the old poison (a computed NaN, a
    packed byte 0xFF, a scale code 255): wrong values (matches_reference fails) but never
    "never written"."""
    from parity.tools.common import draw_metas

    spec = get_spec(op)
    ev = InProcess(spec, Impl(op, name, "external", getattr(K, name)), "cpu")
    metas = [m for m in draw_metas(spec.strategy(size="small"), 6, seed=1) if _numel(spec, m)]
    assert metas
    for m in metas[:3]:
        status, v = ev.evaluate("writes_all_outputs", m)
        assert status == "pass", (m, v)
        assert ev.evaluate("matches_reference", m)[0] == "fail", m


def _numel(spec, m) -> int:
    return spec.build(m, "cpu").args[0].numel()


def test_an_unwritten_row_is_still_caught():
    """The witness: a kernel that leaves the last row of torch.empty unwritten fails."""

    def skips_last_row(x, **kw):
        ref = K._ref(x, **kw)
        y = torch.empty_like(ref)
        y[:-1] = ref[:-1]
        return y

    import torch

    ev = InProcess(SPEC, Impl("swiglu", "skip", "external", skips_last_row), "cpu")
    status, v = ev.evaluate("writes_all_outputs", _meta(3))
    assert status == "fail" and "never written" in v.message, v


# --- localize and bisect run the candidate isolated too -----------------------------------

LOCALIZE = ["localize", "--tokens", "4", "--hidden", "64", "--layers", "0:1", "--device", "cpu"]


@pytest.mark.parametrize(
    "source,what",
    [
        ("import os\nos._exit(0)\nTABLE = {}\n", "crash"),
        ("import ctypes\nTABLE = {'rms_norm': lambda *a, **k: ctypes.string_at(0)}\n", "crash"),
        ("import time\ntime.sleep(3600)\n", "hang"),
    ],
)
def test_localize_survives_a_breaking_table(source, what, tmp_path, monkeypatch, capsys):
    (tmp_path / "breaking_ops.py").write_text(source)
    monkeypatch.syspath_prepend(str(tmp_path))
    code = main([*LOCALIZE, "--ops", "breaking_ops:TABLE", "--timeout", "5"])
    out = capsys.readouterr().out
    assert code == 1 and "broke its process" in out and what in out, out
    assert "breaking_ops" not in sys.modules


def test_bisect_blames_the_commit_whose_kernel_exits_zero(tmp_path, capsys):
    """`git bisect run parity check`: a commit whose kernel ends the process with status 0 is
    bad, not good, so bisect names it."""
    import shutil

    if shutil.which("git") is None:
        pytest.skip("needs git")

    def git(*a):
        return subprocess.run(
            ["git", "-C", str(tmp_path), *a], check=True, capture_output=True, text=True
        ).stdout.strip()

    git("init", "-q")
    git("config", "user.email", "t@t")
    git("config", "user.name", "t")
    shas = []
    good = "from parity.reference import swiglu as fn\n"
    exits = "import os\n\ndef fn(x, **kw):\n    os._exit(0)\n"
    for i, src in enumerate([good, exits, exits + "# later\n"]):
        (tmp_path / "kern.py").write_text(src)
        git("add", "-A")
        git("commit", "-q", "-m", f"step {i}")
        shas.append(git("rev-parse", "HEAD"))
    argv = ["bisect", "--good", shas[0], "--bad", shas[2], "--repo", str(tmp_path), "--"]
    argv += [*CHECK[1:], "--impl", "kern:fn"]
    assert main(argv) == 0
    assert f"first bad commit: {shas[1]}" in capsys.readouterr().out


# --- issue 10 section 5: properties interleaved, --fail-fast -------------------------------


def test_a_fault_only_a_late_property_sees_is_found_early(capsys, monkeypatch, tmp_path):
    """nan_policy is the fifth property of swiglu: interleaved, its fault is found within the
    first round (8 cases of each property), not after the four before it spent their budget."""
    monkeypatch.chdir(HERE)
    argv = ["fuzz", "--op", "swiglu", "--impl", "hostile_kernels:only_nan_handling_wrong"]
    argv += ["--device", "cpu", "--max-examples", "200", "--fail-fast", "--json", "--no-isolate"]
    assert main([*argv, "--out", str(tmp_path), "--shrink-time", "2"]) == 1
    props = json.loads(capsys.readouterr().out)["properties"]
    failed = [p for p in props if p["failure"]]
    assert [p["prop"] for p in failed] == ["nan_policy"], props
    assert failed[0]["campaign_cases_to_failure"] <= 8 * len(SPEC.all_properties()), failed
