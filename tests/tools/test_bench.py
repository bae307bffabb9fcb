"""`parity bench` on the CPU: a table, and rows as JSON."""

import json

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


def test_bench_table(capsys):
    assert main(["bench", *TINY]) == 0
    out = capsys.readouterr().out
    assert "parity bench: swiglu on cpu" in out and "GB/s" in out and "reference" in out


def test_bench_json(capsys):
    assert main(["bench", *TINY, "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
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
    assert rows[0]["ratio"] == 1.0 and rows[2]["ratio"] == 1.0


def test_bench_meta_of_swiglu_is_representative():
    from parity.catalog import get_spec
    from parity.tools.bench_cmd import bench_meta

    meta, source = bench_meta(get_spec("swiglu"), 128, seed=0, device="cpu")
    assert source == "bench_meta" and meta["T"] == 128 and meta["N"] == 2048
    case = get_spec("swiglu").build(meta, "cpu")
    assert tuple(case.args[0].shape) == (128, 4096)


def test_bench_usage_and_failures(tmp_path, monkeypatch, capsys):
    assert main(["bench", "--op", "no_such_op", "--impl", "reference"]) == 2
    assert main(["bench", *TINY, "--meta", "[1]"]) == 2
    (tmp_path / "raising_kernel.py").write_text(
        "def swiglu(x, **kw):\n    raise RuntimeError('boom')\n"
        "def partial(x, **kw):\n    raise NotImplementedError('only T >= 8')\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    base = [
        "bench",
        "--op",
        "swiglu",
        "--impl",
        "reference",
        "--device",
        "cpu",
        "--tokens",
        "2",
        "--meta",
        '{"N": 8}',
        "--warmup-ms",
        "1",
        "--rep-ms",
        "2",
        "--json",
    ]
    capsys.readouterr()
    assert main([*base, "--impl", "raising_kernel:swiglu"]) == 1
    rows = json.loads(capsys.readouterr().out)
    assert rows[1]["status"] == "error" and "boom" in rows[1]["note"]
    assert main([*base, "--impl", "raising_kernel:partial"]) == 0
    assert json.loads(capsys.readouterr().out)[1]["status"] == "unsupported"


def test_every_bench_meta_builds_a_valid_case():
    """Each representative description is one the op's builder and reference accept."""
    from parity.catalog import specs
    from parity.properties.case import as_tuple
    from parity.tools.bench_cmd import BENCH_META, bench_meta

    have = specs()
    for op in BENCH_META:
        if op not in have:  # an op whose OpSpec is not registered (yet)
            continue
        meta, source = bench_meta(have[op], 2, seed=0, device="cpu")
        assert source == "bench_meta"
        if op == "fused_moe":  # the real expert weights are gigabytes: same shape, smaller
            meta["dims"] = {**meta["dims"], "H": 256, "N": 128}
        case = have[op].build(meta, "cpu")
        outs = as_tuple(case.call(have[op].reference))
        assert outs, op
