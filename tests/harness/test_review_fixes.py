"""Defects a review of the harness found (2026-12-05), each planted: a result the harness cannot
read is the candidate's failure (bad, never "skip"), `case --meta @FIFO` is a usage error and no
hang, and a crash stays a crash when the time budget ends while it is being blamed."""

import os
import sys
from pathlib import Path

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE))

from parity.tools.cli import main  # noqa: E402

ARGV = ["check", "--op", "swiglu", "--device", "cpu", "--max-examples", "3"]
ARGV += ["--property", "matches_reference"]


def test_an_unreadable_result_is_bad_not_skip(capsys, monkeypatch):
    monkeypatch.chdir(HERE)
    assert main([*ARGV, "--impl", "hostile_kernels:unreadable_result"]) == 1
    out = capsys.readouterr().out
    assert "verdict: BAD" in out and "cannot be read" in out, out


def test_case_meta_from_a_fifo_is_a_usage_error(tmp_path, capsys):
    fifo = tmp_path / "meta"
    os.mkfifo(fifo)
    argv = ["case", "--op", "swiglu", "--impl", "reference", "--property", "matches_reference"]
    assert main([*argv, "--meta", f"@{fifo}"]) == 2
    assert "not a regular file" in capsys.readouterr().err


def test_a_crash_stays_a_crash_when_the_budget_ends_during_blame(monkeypatch):
    from parity.campaign import engine

    ev = engine.Isolated.__new__(engine.Isolated)
    ev.blame_crashes = True
    ev._run = lambda prop, meta=None, path=None: ("crash", engine_verdict())

    def no_time(*a, **k):
        raise engine.BudgetSpent

    ev._blame = no_time
    status, _ = ev._evaluate("matches_reference", meta={})
    assert status == "crash"


def engine_verdict():
    from parity.properties.tolerance import Verdict

    return Verdict(False, "crash: planted", float("inf"))
