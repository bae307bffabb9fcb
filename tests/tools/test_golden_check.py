"""`parity golden` records fixed cases; `parity check` gives git-bisect exit codes (0/1/125)."""

import json

import pytest
import torch

from parity.tools.cli import main

GOOD_KERNEL = """
import torch


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
    xf = x.float()
    n = xf.shape[-1] // 2
    gate, up = (xf[..., :n], xf[..., n:]) if layout == "concat" else (xf[..., 0::2], xf[..., 1::2])
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


def unsupported(x, **kw):
    raise NotImplementedError("no case supported")
"""


def kernel_source(*, bug: bool = False) -> str:
    """The tiny kernel module; `bug` drops the clamp of `up` (a planted numerical bug)."""
    return GOOD_KERNEL.replace("UP_CLAMP", "up" if bug else "up.clamp(-limit, limit)")


@pytest.fixture
def kernels(tmp_path, monkeypatch):
    d = tmp_path / "kmods"
    d.mkdir()
    (d / "good_kernel.py").write_text(kernel_source())
    (d / "bad_kernel.py").write_text(kernel_source(bug=True))
    (d / "broken_kernel.py").write_text("def swiglu(x:\n")
    monkeypatch.syspath_prepend(str(d))
    return d


@pytest.fixture(scope="module")
def golden(tmp_path_factory):
    out = tmp_path_factory.mktemp("golden")
    assert (
        main(
            [
                "golden",
                "--op",
                "swiglu",
                "--out",
                str(out),
                "--count",
                "6",
                "--device",
                "cpu",
                "--seed",
                "3",
            ]
        )
        == 0
    )
    return out


def check(*argv):
    return main(["check", "--op", "swiglu", "--device", "cpu", *argv])


def test_golden_writes_repro_files_and_manifest(golden):
    from parity.campaign import repro

    m = json.loads((golden / "golden.json").read_text())
    assert m["format"] == "parity-golden" and m["op"] == "swiglu" and m["impl"] == "reference"
    assert len(m["cases"]) == 6
    for e in m["cases"]:
        r = repro.load(golden / e["repro"])  # a valid repro (inputs), plus recorded outputs
        assert r.op == "swiglu" and r.meta == e["meta"]
        assert (golden / e["outputs"]).is_file()
    assert len({json.dumps(e["meta"], sort_keys=True) for e in m["cases"]}) == 6


def test_golden_is_deterministic(golden, tmp_path):
    again, other = tmp_path / "again", tmp_path / "other"
    assert (
        main(
            [
                "golden",
                "--op",
                "swiglu",
                "--out",
                str(again),
                "--count",
                "6",
                "--device",
                "cpu",
                "--seed",
                "3",
            ]
        )
        == 0
    )
    assert (
        main(
            [
                "golden",
                "--op",
                "swiglu",
                "--out",
                str(other),
                "--count",
                "6",
                "--device",
                "cpu",
                "--seed",
                "4",
            ]
        )
        == 0
    )

    def metas(d):
        return [e["meta"] for e in json.loads((d / "golden.json").read_text())["cases"]]

    assert metas(again) == metas(golden)
    assert metas(other) != metas(golden)


def test_check_good_exits_0(golden, kernels, capsys):
    assert check("--impl", "reference", "--golden", str(golden), "--max-examples", "3") == 0
    assert (
        check("--impl", "good_kernel:swiglu", "--golden", str(golden), "--max-examples", "3") == 0
    )
    assert "verdict: GOOD" in capsys.readouterr().out


def test_check_bad_exits_1(golden, kernels, capsys):
    # golden cases alone catch it, and so do the properties alone
    assert check("--impl", "bad_kernel:swiglu", "--golden", str(golden), "--no-properties") == 1
    assert "first failure: golden case" in capsys.readouterr().out
    assert (
        check(
            "--impl", "bad_kernel:swiglu", "--property", "matches_reference", "--max-examples", "20"
        )
        == 1
    )
    out = capsys.readouterr().out
    assert "verdict: BAD" in out and "reproduce: parity case" in out


def test_check_cannot_test_exits_125(golden, kernels, tmp_path, capsys):
    assert check("--impl", "broken_kernel:swiglu", "--golden", str(golden)) == 125
    assert check("--impl", "no_such_module:swiglu", "--golden", str(golden)) == 125
    assert check("--impl", "good_kernel:nope", "--golden", str(golden)) == 125
    assert (
        check("--impl", "good_kernel:unsupported", "--golden", str(golden), "--max-examples", "2")
        == 125
    )
    assert check("--impl", "reference", "--golden", str(tmp_path / "missing")) == 125
    assert main(["check", "--op", "swiglu"]) == 125  # usage errors too: never 2
    assert main(["check", "--op", "swiglu", "--impl", "reference", "--bogus"]) == 125
    assert main(["check", "--op", "no_such_op", "--impl", "reference"]) == 125
    if not torch.cuda.is_available():
        assert main(["check", "--op", "swiglu", "--impl", "reference", "--device", "cuda"]) == 125
    assert "verdict: SKIP (exit 125)" in capsys.readouterr().out


def test_check_corrupt_golden_exits_125(golden, tmp_path):
    import shutil

    bad = tmp_path / "bad"
    shutil.copytree(golden, bad)
    m = json.loads((bad / "golden.json").read_text())
    out = bad / m["cases"][1]["outputs"]
    out.write_bytes(out.read_bytes()[:-4] + b"\0\0\0\0")  # outputs tampered: sha256 mismatch
    assert check("--impl", "reference", "--golden", str(bad), "--no-properties") == 125
    (bad / "golden.json").write_text("{not json")
    assert check("--impl", "reference", "--golden", str(bad), "--no-properties") == 125


def test_check_ledger_known_failure_is_not_bad(golden, kernels, tmp_path, capsys):
    ledger = tmp_path / "ledger.json"
    ledger.write_text(
        json.dumps(
            {
                "entries": [
                    {
                        "op": "swiglu",
                        "impl": "bad_kernel:swiglu",
                        "property": "*",
                        "reason": "example/kernels#7: up is not clamped",
                    }
                ]
            }
        )
    )
    assert (
        check(
            "--impl",
            "bad_kernel:swiglu",
            "--golden",
            str(golden),
            "--no-properties",
            "--ledger",
            str(ledger),
        )
        == 0
    )
    assert "xfail" in capsys.readouterr().out
    ledger.write_text('{"entries": [{"op": "swiglu"}]}')  # a bad ledger: cannot judge
    assert (
        check(
            "--impl",
            "bad_kernel:swiglu",
            "--golden",
            str(golden),
            "--no-properties",
            "--ledger",
            str(ledger),
        )
        == 125
    )


def test_golden_usage_errors(tmp_path):
    assert main(["golden", "--op", "no_such_op", "--out", str(tmp_path)]) == 2
    assert main(["golden", "--op", "swiglu", "--out", str(tmp_path), "--count", "0"]) == 2


def test_golden_refuses_out_of_tolerance_outputs(kernels, tmp_path, capsys):
    rc = main(
        [
            "golden",
            "--op",
            "swiglu",
            "--impl",
            "bad_kernel:swiglu",
            "--count",
            "6",
            "--device",
            "cpu",
            "--seed",
            "3",
            "--out",
            str(tmp_path / "g"),
        ]
    )
    assert rc == 1
    assert "out of tolerance" in capsys.readouterr().err
    assert not (tmp_path / "g" / "golden.json").exists()
