"""`parity bench` on the CPU: a table, rows as JSON, the copy ceiling, variants, graph mode (not
run on the CPU), the peers (baselines that must compute the op), and every spec's bench case."""

import json

import pytest

from parity.tools.cli import main

TINY = [
    "--op",
    "swiglu",
    "--impl",
    "reference",
    "--impl",
    "reference",
    "--device",
    "cpu",
    "--tokens",
    "1,4",
    "--meta",
    '{"N": 16}',
    "--warmup-ms",
    "1",
    "--rep-ms",
    "5",
]


def _json(capsys, argv, rc=0):
    capsys.readouterr()
    assert main(["bench", *argv, "--json"]) == rc
    return json.loads(capsys.readouterr().out)


def test_bench_table(capsys):
    assert main(["bench", *TINY]) == 0
    out = capsys.readouterr().out
    assert "parity bench: swiglu on cpu" in out and "GB/s" in out and "reference" in out
    assert "copy (ceiling)" in out and "% copy" in out


def test_bench_json(capsys):
    rows = _json(capsys, TINY)
    ceiling, rows = rows[0], rows[1:]
    assert ceiling["impl"] == "copy (ceiling)" and ceiling["T"] is None
    assert ceiling["gbps"] > 0 and ceiling["bytes"] == 2 * (64 << 20) and ceiling["pct_copy"] == 100
    assert [(r["T"], r["impl"]) for r in rows] == [
        (1, "reference"),
        (1, "reference"),
        (4, "reference"),
        (4, "reference"),
    ]
    for r in rows:
        assert r["status"] == "ok" and r["median_us"] > 0 and r["iters"] >= 5
        assert r["gbps"] > 0  # swiglu is memory-bound: bytes = x read + y written
        # T x 2N bf16 in, T x N bf16 out
        assert r["bytes"] == r["T"] * (2 * 16 + 16) * 2
        assert r["pct_copy"] == pytest.approx(100 * r["gbps"] / ceiling["gbps"])
        assert r["graph_us"] is None and r["graph_status"] == ""  # no --graph
    assert rows[0]["ratio"] == 1.0 and rows[2]["ratio"] == 1.0


def test_bench_graph_mode_is_not_run_on_cpu(capsys):
    rows = _json(capsys, [*TINY, "--graph"])
    assert all(r["graph_status"] == "not run on cpu" and r["graph_us"] is None for r in rows)
    assert all(r["median_us"] > 0 for r in rows)  # eager still timed
    assert main(["bench", *TINY, "--graph"]) == 0
    out = capsys.readouterr().out
    assert "graph (us)" in out and "not run on cpu" in out


def test_bench_variants_and_deep_merge(capsys):
    from parity.tools.bench_cmd import merge

    assert merge({"a": {"b": 1, "c": 2}, "d": 3}, {"a": {"b": 5}}) == {
        "a": {"b": 5, "c": 2},
        "d": 3,
    }
    argv = [a for a in TINY if a != '{"N": 16}' and a != "--meta"]
    rows = _json(capsys, [*argv, "--tokens", "2", "--meta", '{"N": 16}', "--meta", '{"N": 8}'])[1:]
    assert [(json.loads(r["variant"])["N"], r["bytes"]) for r in rows] == [
        (16, 2 * 48 * 2),
        (16, 2 * 48 * 2),
        (8, 2 * 24 * 2),
        (8, 2 * 24 * 2),
    ]


def test_bench_meta_comes_from_the_spec():
    from parity.catalog import get_spec
    from parity.tools.bench_cmd import bench_meta

    meta, source = bench_meta(get_spec("swiglu"), 128, seed=0, device="cpu")
    assert source == "spec.bench" and meta["T"] == 128 and meta["N"] == 2048
    case = get_spec("swiglu").build(meta, "cpu")
    assert tuple(case.args[0].shape) == (128, 4096)


# one T, a small N, short timings: a bench run that only has to work
_SMALL = ["--tokens", "2", "--meta", '{"N": 8}', "--warmup-ms", "1", "--rep-ms", "2"]


def test_bench_usage_and_failures(tmp_path, monkeypatch, capsys):
    assert main(["bench", "--op", "no_such_op", "--impl", "reference"]) == 2
    assert main(["bench", *TINY, "--meta", "[1]"]) == 2
    assert main(["bench", *TINY, "--impl", "no_such_impl"]) == 2
    (tmp_path / "raising_kernel.py").write_text(
        "def swiglu(x, **kw):\n    raise RuntimeError('boom')\n"
        "def partial(x, **kw):\n    raise NotImplementedError('only T >= 8')\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    base = ["--op", "swiglu", "--impl", "reference", "--device", "cpu", *_SMALL]
    rows = _json(capsys, [*base, "--impl", "raising_kernel:swiglu"], rc=1)
    assert rows[2]["status"] == "error" and "boom" in rows[2]["note"]
    rows = _json(capsys, [*base, "--impl", "raising_kernel:partial"])
    assert rows[2]["status"] == "unsupported"


_CHATTY = (
    "import os\n"
    "from parity.reference import swiglu as _ref\n"
    "print('imported')\n"
    "def swiglu(x, **kw):\n"
    "    print('python print')\n"
    "    os.write(1, b'fd 1 write\\n')\n"
    "    return _ref(x, **kw)\n"
)
_SWIGLU_META = (
    '{"N": 8, "T": 2, "dtype": "bfloat16", "lead": [], "regime": "normal", "seed": 0, '
    '"options": {"alpha": 1.0, "beta": 0.0, "clamp_mode": "pre", "layout": "concat", '
    '"limit": null}}'
)
_RUN = ["--op", "swiglu", "--impl", "chatty_kernel:swiglu", "--device", "cpu"]


@pytest.mark.parametrize(
    "argv",
    [
        ["bench", *_RUN, *_SMALL],
        ["fuzz", *_RUN, "--max-examples", "3", "--no-isolate"],
        ["case", *_RUN, "--no-isolate", "--property", "matches_reference", "--meta", _SWIGLU_META],
    ],
    ids=["bench", "fuzz", "case"],
)
def test_json_stdout_is_the_json_alone(tmp_path, argv):
    """What a kernel or a library writes to stdout while a `--json` command runs it in-process
    goes to stderr, at the descriptor too (TileLang's compile log made the H100 bench's JSON
    files unreadable on 2026-12-06): stdout parses as the command's JSON."""
    import subprocess
    import sys

    (tmp_path / "chatty_kernel.py").write_text(_CHATTY)
    r = subprocess.run(
        [sys.executable, "-m", "parity", *argv, "--json"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc  # the command's own JSON, whole
    assert "imported" in r.stderr and "python print" in r.stderr and "fd 1 write" in r.stderr


def test_bench_all_lists_reference_registered_and_peers(capsys):
    argv = [a for a in TINY if a != "reference" and a != "--impl"]
    rows = _json(capsys, [*argv, "--tokens", "1", "--impl", "reference", "--impl", "all"], rc=1)
    names = [r["impl"] for r in rows[1:]]
    assert names[0] == "reference" and names.count("reference") == 1
    assert "flashinfer_silu_and_mul" in names and "triton" in names
    peer = next(r for r in rows if r["impl"] == "flashinfer_silu_and_mul")
    assert peer["status"] in ("unavailable", "unsupported")  # no flashinfer here; DSV4 clamp


def test_fused_moe_rows_report_tflops_and_the_weight_read_floor(capsys):
    small = '{"dims": {"H": 256, "N": 128}, "route": {"E": 4, "k": 2}}'
    argv = ["--op", "fused_moe", "--impl", "reference", "--impl", "torch_dequant_mm"]
    argv += ["--device", "cpu", "--tokens", "3", "--warmup-ms", "0", "--rep-ms", "1"]
    argv += ["--meta", small]
    rows = _json(capsys, argv)[1:]
    assert [r["impl"] for r in rows] == ["reference", "torch_dequant_mm"]
    for r in rows:
        assert r["status"] == "ok" and r["tflops"] > 0 and r["gbps"] is None
        assert r["floor_us"] > 0 and r["x_floor"] == pytest.approx(r["median_us"] / r["floor_us"])


@pytest.mark.parametrize("quant", ["none", "fp8_block", "mxfp4"])
def test_torch_dequant_mm_peer_computes_fused_moe(quant):
    """The baseline does the op's work: it passes the op's own tolerance model."""
    from parity.catalog import get_spec
    from parity.properties.checks import evaluate
    from parity.tools.bench_cmd import _fused_moe_weight_bytes, _torch_dequant_mm, bench_meta, merge

    spec = get_spec("fused_moe")
    meta, _ = bench_meta(spec, 5, seed=0, device="cpu")
    over = {"dims": {"quant": quant, "H": 256, "N": 128}, "route": {"E": 4, "k": 2}}
    case = spec.build(merge(meta, over), "cpu")
    status, verdict = evaluate(spec, "matches_reference", _torch_dequant_mm, case)
    assert status == "pass", verdict
    ids = case.args[4]
    touched = int(ids[ids >= 0].unique().numel())
    assert 0 < _fused_moe_weight_bytes(case) <= 4 * (case.args[1][0].numel() * 8)
    assert _fused_moe_weight_bytes(case) % touched == 0


def test_every_spec_bench_builds_a_valid_case():
    """Each representative description is one the op's builder and reference accept."""
    from parity.catalog import specs
    from parity.properties.case import as_tuple
    from parity.tools.bench_cmd import bench_meta

    for op, spec in specs().items():
        if spec.bench is None:
            continue
        meta, source = bench_meta(spec, 2, seed=0, device="cpu")
        assert source == "spec.bench"
        if op == "fused_moe":  # the real expert weights are gigabytes: same shape, smaller
            meta["dims"] = {**meta["dims"], "H": 256, "N": 128}
        case = spec.build(meta, "cpu")
        outs = as_tuple(case.call(spec.reference))
        assert outs, op


@pytest.mark.skipif(not __import__("torch").cuda.is_available(), reason="NOT RUN: needs a CUDA GPU")
def test_bench_graph_replay_on_the_gpu(tmp_path, monkeypatch, capsys):
    """On a GPU, --graph times CUDA-graph replay beside eager (a kernel that synchronises with
    the host says it cannot be captured), and the ceiling is 2 x 1 GiB."""
    (tmp_path / "capturable.py").write_text(
        "def swiglu(x, **kw):\n    return x[..., : x.shape[-1] // 2] * 2\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    argv = [a if a != "cpu" else "cuda" for a in TINY] + ["--impl", "capturable:swiglu"]
    rows = _json(capsys, [*argv, "--graph"])
    assert rows[0]["bytes"] == 2 << 30 and rows[0]["gbps"] > 0
    for r in rows[1:]:
        assert r["median_us"] > 0
        assert r["graph_status"] == "ok" or r["graph_status"].startswith("not capturable"), r
        if r["impl"] == "capturable:swiglu":
            assert r["graph_status"] == "ok" and r["graph_us"] > 0, r
