"""`parity bisect` names the commit that planted a numerical bug, skipping unimportable ones."""

import re
import shutil
import subprocess

import pytest

from parity.tools.cli import main

pytestmark = pytest.mark.skipif(shutil.which("git") is None, reason="needs git")

KERNEL = '''"""A tiny kernel module under bisection."""
import torch


def _halves(xf, layout):
    n = xf.shape[-1] // 2
    return (xf[..., :n], xf[..., n:]) if layout == "concat" else (xf[..., 0::2], xf[..., 1::2])


def swiglu(x, *, limit=None, alpha=1.0, beta=0.0, layout="concat", clamp_mode="pre"):
    if not isinstance(x, torch.Tensor) or x.dtype not in (torch.bfloat16, torch.float16,
                                                           torch.float32):
        raise TypeError("swiglu: x: expected bfloat16, float16 or float32")
    if x.dim() < 1 or x.shape[-1] % 2:
        raise ValueError("swiglu: x: expected an even last dimension")
    if layout not in ("concat", "interleaved") or clamp_mode not in ("pre", "post"):
        raise ValueError("swiglu: layout/clamp_mode: unknown")
    if limit is not None and not limit > 0:
        raise ValueError("swiglu: limit: expected > 0")
    gate, up = _halves(x.float(), layout)
    if limit is None:
        y = gate * torch.sigmoid(alpha * gate) * (up + beta)
    else:
        up = UP_CLAMP
        if clamp_mode == "pre":
            gate = gate.clamp(max=limit)
            y = gate * torch.sigmoid(alpha * gate) * (up + beta)
        else:
            y = (gate * torch.sigmoid(alpha * gate)).clamp(max=limit) * (up + beta)
    return y.to(x.dtype).contiguous()
'''
GOOD = KERNEL.replace("UP_CLAMP", "up.clamp(-limit, limit)")
BAD = KERNEL.replace("UP_CLAMP", "up  # the clamp is folded into the GEMM epilogue")


def git(repo, *args):
    return subprocess.run(
        ["git", "-C", str(repo), *args], check=True, capture_output=True, text=True
    ).stdout.strip()


def commit(repo, subject, source, extra=None):
    (repo / "mykernel.py").write_text(source)
    if extra:
        for name, text in extra.items():
            (repo / name).write_text(text)
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", subject)
    return git(repo, "rev-parse", "HEAD")


@pytest.fixture(scope="module")
def history(tmp_path_factory):
    """good, good, good, unimportable, good (fixed), BAD (planted), bad, bad."""
    repo = tmp_path_factory.mktemp("kernels")
    git(repo, "init", "-q")
    git(repo, "config", "user.email", "dev@example.com")
    git(repo, "config", "user.name", "dev")
    git(repo, "config", "commit.gpgsign", "false")
    shas = {}
    shas["base"] = commit(repo, "add swiglu kernel", GOOD)
    shas["readme"] = commit(repo, "add a readme", GOOD, {"README": "kernels\n"})
    shas["doc"] = commit(repo, "document the layouts", GOOD.replace('"""A tiny', '"""The tiny'))
    shas["broken"] = commit(repo, "wip: half-finished refactor", GOOD + "\ndef oops(:\n")
    shas["fixed"] = commit(repo, "finish the refactor", GOOD + "\n\nVERSION = 2\n")
    shas["bug"] = commit(repo, "fold the up clamp into the epilogue", BAD + "\n\nVERSION = 2\n")
    shas["after1"] = commit(repo, "bump version", BAD + "\n\nVERSION = 3\n")
    shas["after2"] = commit(repo, "more docs", BAD + "\n\nVERSION = 3\n", {"README": "k 2\n"})
    golden = tmp_path_factory.mktemp("golden")
    assert (
        main(["golden", "--op", "swiglu", "--out", str(golden), "--count", "8", "--device", "cpu"])
        == 0
    )
    return repo, shas, golden


def check_args(golden):
    return [
        "--",
        "--op",
        "swiglu",
        "--impl",
        "mykernel:swiglu",
        "--golden",
        str(golden),
        "--device",
        "cpu",
        "--property",
        "matches_reference",
        "--max-examples",
        "4",
    ]


def test_bisect_names_the_planted_commit(history, capsys):
    repo, shas, golden = history
    rc = main(
        [
            "bisect",
            "--good",
            shas["base"],
            "--bad",
            shas["after2"],
            "--repo",
            str(repo),
            *check_args(golden),
        ]
    )
    out = capsys.readouterr().out
    assert rc == 0, out
    m = re.search(r"^first bad commit: ([0-9a-f]{40}) (.*)$", out, re.M)
    assert m, out
    assert m.group(1) == shas["bug"]
    assert m.group(2) == "fold the up clamp into the epilogue"
    # the unimportable commit, where tested, was skipped (exit 125), never blamed
    steps = dict(
        (sha, v) for v, sha in re.findall(r"^  (good|bad|skip) +([0-9a-f]{12}) ", out, re.M)
    )
    assert steps.get(shas["broken"][:12], "skip") == "skip"
    assert "skip" in steps.values(), out  # the history is laid out so that it is tested
    # bisect was reset: back on the branch, no bisect in progress
    assert git(repo, "rev-parse", "HEAD") == shas["after2"]
    r = subprocess.run(["git", "-C", str(repo), "bisect", "log"], capture_output=True)
    assert r.returncode != 0


def test_bisect_verify_refuses_a_wrong_endpoint(history, capsys):
    repo, shas, golden = history
    # --good names a commit where the check fails: refused after one check, no bisect
    rc = main(
        [
            "bisect",
            "--good",
            shas["bug"],
            "--bad",
            shas["after2"],
            "--verify",
            "--repo",
            str(repo),
            *check_args(golden),
        ]
    )
    assert rc == 1
    assert "exits 1 at --good" in capsys.readouterr().err
    assert git(repo, "rev-parse", "HEAD") == shas["after2"]


def test_bisect_usage_errors(history, tmp_path):
    repo, shas, golden = history
    args = check_args(golden)
    assert (
        main(["bisect", "--good", "nope", "--bad", shas["after2"], "--repo", str(repo), *args]) == 2
    )
    assert (
        main(["bisect", "--good", shas["base"], "--bad", "HEAD", "--repo", str(tmp_path), *args])
        == 2
    )
    assert main(["bisect", "--good", shas["base"], "--bad", "HEAD", "--repo", str(repo)]) == 2
    assert (
        main(
            [
                "bisect",
                "--good",
                shas["base"],
                "--bad",
                "HEAD",
                "--repo",
                str(repo),
                "--",
                "--op",
                "swiglu",
            ]
        )
        == 2
    )  # check needs --impl
