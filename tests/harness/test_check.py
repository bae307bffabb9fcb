"""`parity check` (what `git bisect run` calls): a kernel that ends its process with status 0 or
raises SystemExit is bad (exit 1), never good (issue 9 section 1)."""

import sys
from pathlib import Path

import pytest

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE))

from parity.tools.cli import main  # noqa: E402

ARGV = ["check", "--op", "swiglu", "--device", "cpu", "--max-examples", "3"]
ARGV += ["--property", "matches_reference"]


@pytest.mark.parametrize(
    "name,isolate",
    [("exits_zero", True), ("raises_system_exit", True), ("raises_system_exit", False)],
)
def test_an_exiting_kernel_is_bad(name, isolate, capsys, monkeypatch):
    monkeypatch.chdir(HERE)
    extra = [] if isolate else ["--no-isolate"]
    assert main([*ARGV, "--impl", f"hostile_kernels:{name}", *extra]) == 1
    assert "verdict: BAD" in capsys.readouterr().out


def test_the_reference_is_good_isolated(capsys):
    """The witness: the same command on a correct kernel is good."""
    assert main([*ARGV, "--impl", "reference"]) == 0
    assert "verdict: GOOD" in capsys.readouterr().out
