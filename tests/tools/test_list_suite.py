"""`parity list` and `parity suite`."""

import json

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
            "--json",
            str(out),
        ]
    )
    assert rc == 0
    d = json.loads(out.read_text())
    (row,) = d["rows"]
    assert row["op"] == "swiglu" and row["impl"] == "reference"
    assert row["examples"] > 0 and not row["failed"]


def test_suite_usage_error_exits_2():
    assert main(["suite", "--device", "tpu"]) == 2


def test_suite_runs_a_module_function_and_rejects_what_selects_nothing(capsys, monkeypatch):
    """`--impl module:function` runs that candidate (a broken one fails); a filter that selects
    nothing is a usage error, never an empty run that exits 0."""
    from pathlib import Path

    monkeypatch.chdir(Path(__file__).parent / "kernels")
    argv = ["suite", "--device", "cpu", "--op", "swiglu", "--max-examples", "5"]
    assert main([*argv, "--impl", "parity_kernels_swiglu:broken"]) == 1
    assert "FAIL" in capsys.readouterr().out
    assert main([*argv, "--impl", "parity_kernels_swiglu:correct"]) == 0
    assert main([*argv, "--impl", "nosuch"]) == 2
    assert main(["suite", "--impl", "parity_kernels_swiglu:broken"]) == 2  # needs --op
