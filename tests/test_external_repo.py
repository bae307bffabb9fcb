"""examples/external_repo, a kernel author's own project, run as its author would (issue 10
section 2): parity on the path, `pytest` in that folder. The correct kernel passes; the broken
one fails with its shrunk case and a rerun line; the rerun line, run from that folder as
printed, exits 1 (the bug reproduced)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "external_repo"


def _env(project: Path) -> dict:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("PYTEST_", "PARITY_", "HYPOTHESIS")) and k != "TRITON_INTERPRET"
    }
    # parity as installed (or this checkout), and the project itself; no pip install
    env["PYTHONPATH"] = os.pathsep.join([str(project), str(ROOT)])
    env["PATH"] = os.pathsep.join([os.path.dirname(sys.executable), env.get("PATH", "")])
    env["PARITY_MAX_EXAMPLES"] = "8"  # the README's quick run: one round per property
    return env


def test_external_repo_passes_the_correct_kernel_and_reruns_the_broken_ones_case(tmp_path):
    project = tmp_path / "external_repo"
    shutil.copytree(
        EXAMPLE,
        project,
        ignore=shutil.ignore_patterns(".hypothesis", "parity-repros", "__pycache__"),
    )
    env = _env(project)
    r = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rf"],
        cwd=project,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    out = r.stdout + r.stderr
    assert r.returncode == 1, out[-4000:]
    assert re.search(r"\b1 failed, 2 passed\b", out), out[-4000:]
    assert "FAILED tests/test_kernels.py::test_swiglu_fast" in out, out[-4000:]
    # the failure: the kernel by its importable name, the shrunk case, the rerun line
    fail = "FAIL swiglu / myswiglu.kernels:swiglu_fast / matches_reference on c"  # cpu or cuda
    assert fail in out, out[-4000:]
    case = re.search(r"case +swiglu\((bfloat16|float16)\[[\d, ]+\]", out)
    assert case, out[-4000:]
    reruns = re.findall(r"rerun +(parity case .+)", out)
    assert reruns and "--impl myswiglu.kernels:swiglu_fast" in reruns[0], out[-4000:]
    assert list(project.glob("parity-repros/swiglu-*swiglu_fast-matches_reference-*.json"))
    # the rerun line works as printed, from the project's folder (it is a shell line)
    again = subprocess.run(
        ["bash", "-c", reruns[0]], cwd=project, env=env, capture_output=True, text=True, timeout=300
    )
    assert again.returncode == 1, again.stdout[-3000:] + again.stderr[-3000:]
    assert "FAIL swiglu / myswiglu.kernels:swiglu_fast / matches_reference" in again.stdout
