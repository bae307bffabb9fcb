"""Installing parity must not change anyone else's test run (issue 10 section 2).

An unrelated tiny suite (its own Hypothesis `nightly` profile, a test that records the thread
count, CUDA_VISIBLE_DEVICES, TRITON_INTERPRET, the Hypothesis profiles and which parity modules
got imported) runs with the parity plugin disabled (`-p no:parity`) and auto-loaded, in one
process and under `-n 2`; every record must be the same.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

CONFTEST = """
from hypothesis import settings

# the user's own profiles: parity must neither overwrite nor add to them
settings.register_profile("nightly", max_examples=7, deadline=None)
settings.register_profile("pr", max_examples=5)
settings.load_profile("nightly")
"""

TEST = """
import json, os, sys

import pytest
import torch
from hypothesis import given, settings, strategies as st

PLUGIN_ITSELF = ("parity._errors", "parity.testing", "parity.testing.pytest_plugin")


def _profiles():
    out = {}
    for name in ("default", "ci", "dev", "pr", "nightly", "bisect", "parity-pr",
                 "parity-nightly", "parity-bisect"):
        try:
            out[name] = repr(settings.get_profile(name))
        except Exception:
            out[name] = None
    return out


def _record(tag):
    rec = {
        "tag": tag,
        "threads": torch.get_num_threads(),
        "interop": torch.get_num_interop_threads(),
        "CUDA_VISIBLE_DEVICES": os.environ.get("CUDA_VISIBLE_DEVICES"),
        "TRITON_INTERPRET": os.environ.get("TRITON_INTERPRET"),
        "profiles": _profiles(),
        "current": repr(settings.default),
        # beyond the plugin module itself (and the package's one light import)
        "parity_modules": sorted(m for m in sys.modules if m.startswith("parity.")
                                 and m not in PLUGIN_ITSELF),
        "triton": "triton" in sys.modules,
    }
    with open(os.environ["INERT_OUT"], "a") as f:
        f.write(json.dumps(rec, sort_keys=True) + "\\n")


@given(st.integers())
def test_a(n):
    assert isinstance(n, int)


def test_record_a():
    _record("a")


def test_record_b():
    _record("b")


@pytest.mark.gpu  # the user's own marker (registered in their pytest.ini)
def test_users_gpu_test():
    pytest.skip("no GPU here")
"""


def _run(tmp_path, name: str, *args: str) -> tuple[list[dict], str]:
    out = tmp_path / f"{name}.jsonl"
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("TRITON_INTERPRET", "PYTEST_XDIST_WORKER", "PYTEST_XDIST_WORKER_COUNT")
        and not k.startswith(("PARITY_", "PYTEST_ADDOPTS", "HYPOTHESIS"))
    }
    env["INERT_OUT"] = str(out)
    r = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *args],
        cwd=tmp_path / "suite",
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    recs = sorted((json.loads(line) for line in out.read_text().splitlines()), key=str)
    return recs, r.stdout


@pytest.mark.parametrize("xdist", [(), ("-n", "2")], ids=["serial", "xdist"])
def test_plugin_changes_nothing_in_an_unrelated_suite(tmp_path, xdist):
    pytest.importorskip("xdist")
    suite = tmp_path / "suite"
    suite.mkdir()
    (suite / "conftest.py").write_text(textwrap.dedent(CONFTEST))
    (suite / "test_unrelated.py").write_text(textwrap.dedent(TEST))
    (suite / "pytest.ini").write_text("[pytest]\nmarkers =\n    gpu: the user's own\n")
    off, off_out = _run(tmp_path, "off", "-p", "no:parity", *xdist, "-rs")
    on, on_out = _run(tmp_path, "on", *xdist, "-rs")
    assert len(on) == len(off) == 2
    assert on == off
    # the user's skipped gpu test is theirs: no parity summary section in their output
    assert "no GPU here" in off_out and "no GPU here" in on_out
    assert "parity" not in on_out.lower(), on_out[-2000:]
    # the records say what they should: the user's nightly is theirs, parity registered nothing
    for rec in on:
        assert "max_examples=7" in rec["profiles"]["nightly"], rec
        assert rec["profiles"]["parity-pr"] is None and rec["profiles"]["bisect"] is None, rec
        assert rec["parity_modules"] == [] and rec["TRITON_INTERPRET"] is None, rec
    if xdist and (os.cpu_count() or 1) > 1:
        # the witness of the thread check: a worker keeps torch's own default
        assert all(rec["threads"] > 1 for rec in on), on
