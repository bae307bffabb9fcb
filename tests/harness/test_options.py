"""Numeric options are finite and in range; --skip-property and --fail-fast (issue 9 section 6,
issue 10 sections 3 and 5)."""

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from parity.tools.cli import main

BASE = ["--op", "swiglu", "--impl", "reference", "--max-examples", "2", "--no-isolate"]


@pytest.mark.parametrize(
    "argv",
    [
        ["fuzz", *BASE, "--timeout", "nan"],
        ["fuzz", *BASE, "--max-time", "nan"],
        ["fuzz", *BASE, "--shrink-time", "inf"],
        ["fuzz", *BASE, "--max-time", "-1"],
        ["fuzz", *BASE, "--skip-property", "nosuch"],
        ["case", *BASE[:4], "--property", "matches_reference", "--meta", "{}", "--timeout", "nan"],
        ["replay", "nosuch.json", "--timeout", "nan"],
    ],
)
def test_bad_numbers_and_names_are_usage_errors(argv, capsys):
    assert main(argv) == 2
    assert "error" in capsys.readouterr().err


def test_skip_property_is_reported_and_not_run(capsys):
    assert main(["fuzz", *BASE, "--skip-property", "nan_policy", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["skipped"] == ["nan_policy"]
    assert "nan_policy" not in {p["prop"] for p in doc["properties"]}


def test_fail_fast_stops_after_the_first_failing_property(capsys, monkeypatch, tmp_path):
    monkeypatch.chdir(Path(__file__).parent)
    argv = ["fuzz", "--op", "swiglu", "--impl", "hostile_kernels:as_list", "--no-isolate"]
    argv += ["--max-examples", "3", "--out", str(tmp_path), "--fail-fast", "--json"]
    assert main(argv) == 1
    props = json.loads(capsys.readouterr().out)["properties"]
    assert len(props) == 1 and props[0]["verdict"] == "FAIL", props


def test_fail_fast_stops_every_worker(capsys, monkeypatch, tmp_path):
    """--fail-fast with --workers 2 (it was ignored there): the first failing property stops
    both campaign processes; the properties no process finished are not reported."""
    monkeypatch.chdir(Path(__file__).parent)
    argv = ["fuzz", "--op", "swiglu", "--impl", "hostile_kernels:as_list", "--no-isolate"]
    argv += ["--max-examples", "6", "--out", str(tmp_path), "--workers", "2", "--json"]
    assert main([*argv, "--fail-fast"]) == 1
    props = json.loads(capsys.readouterr().out)["properties"]
    assert props and all(p["verdict"] == "FAIL" for p in props), props
    assert main(argv) == 1  # without it: every property is run and reported
    every = json.loads(capsys.readouterr().out)["properties"]
    assert len(props) < len(every), (props, every)
