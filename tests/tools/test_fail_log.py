"""PARITY_FAIL_LOG (tests/conftest.py): a failure is written down when it happens, so a GPU call
cut before pytest's summary still says why (the H100 reference nightly, 2026-12-06: 28 Fs, no
reason kept)."""

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_each_failure_is_logged_as_it_happens(tmp_path):
    (tmp_path / "conftest.py").write_text("from tests.conftest import pytest_runtest_logreport\n")
    (tmp_path / "test_probe.py").write_text(
        "def test_ok():\n    pass\n\n\ndef test_bad():\n    assert 1 == 2, 'the reason'\n"
    )
    log = tmp_path / "fails.txt"
    env = dict(os.environ, PARITY_FAIL_LOG=str(log), PYTHONPATH=str(ROOT))
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(tmp_path)],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 1, proc.stdout
    text = log.read_text()
    assert "FAILED" in text and "test_bad" in text and "the reason" in text
    assert "test_ok" not in text
