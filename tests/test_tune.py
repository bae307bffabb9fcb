"""`parity tune`: shape derivation from config.json, and a tiny CPU tuning run (Triton
interpreter) that writes a vLLM-named file and rejects a deliberately wrong candidate."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from parity.optimized.triton import tune

MODELS = Path(tune.__file__).resolve().parent / "configs/models"


def _load(name):
    return json.loads((MODELS / name).read_text())


def test_model_shapes():
    v3 = tune.model_shape(_load("DeepSeek-V3.config.json"), tp=8)
    assert (v3["E"], v3["k"], v3["H"], v3["N"], v3["quant"]) == (256, 8, 7168, 256, "fp8_block")
    assert v3["block_shape"] == [128, 128] and v3["swiglu"] == {}
    v4 = tune.model_shape(_load("DeepSeek-V4-Flash.config.json"), ep=8)
    assert (v4["E"], v4["k"], v4["H"], v4["N"], v4["quant"]) == (32, 6, 4096, 2048, "mxfp4")
    assert v4["swiglu"] == {"swiglu_limit": 10.0}
    oss = tune.model_shape(_load("gpt-oss-120b.config.json"), tp=2)
    assert (oss["E"], oss["k"], oss["H"], oss["N"], oss["quant"]) == (128, 4, 2880, 1440, "mxfp4")
    assert oss["swiglu"]["layout"] == "interleaved" and oss["swiglu"]["swiglu_alpha"] == 1.702
    forced = tune.model_shape(_load("DeepSeek-V4-Flash.config.json"), quant="fp8_block")
    assert forced["quant"] == "fp8_block"
    with pytest.raises(tune.UsageError, match="not divisible by --ep"):
        tune.model_shape(_load("gpt-oss-120b.config.json"), ep=3)
    with pytest.raises(tune.UsageError, match="divisible by 32"):
        tune.model_shape(_load("gpt-oss-120b.config.json"), tp=8)  # N = 360


def test_bad_config_is_a_usage_error(tmp_path, capsys):
    from parity.tools.cli import main

    path = tmp_path / "config.json"
    path.write_text(json.dumps({"architectures": ["DeepseekV3ForCausalLM"], "hidden_size": 64}))
    assert main(["tune", "--config", str(path), "--device", "cpu"]) == 2
    assert "no experts" in capsys.readouterr().err


def test_cpu_tuning_writes_file_and_rejects_wrong_candidate(tmp_path, monkeypatch, capsys):
    pytest.importorskip("triton")
    if torch.cuda.is_available():
        pytest.skip("the CPU tuning run needs the Triton interpreter (no GPU visible)")
    from parity.optimized.triton._moe_configs import CONFIG_KEYS
    from parity.tools.cli import main

    fake = {
        "architectures": ["DeepseekV3ForCausalLM"],
        "hidden_size": 64,
        "n_routed_experts": 4,
        "num_experts_per_tok": 2,
        "moe_intermediate_size": 64,
    }
    path = tmp_path / "config.json"
    path.write_text(json.dumps(fake))
    out = tmp_path / "out"
    monkeypatch.setenv(tune.FAULT_ENV, "skip_last_k")
    rc = main(
        [
            "tune",
            "--config",
            str(path),
            "--device",
            "cpu",
            "--batch-sizes",
            "1,4",
            "--out",
            str(out),
        ]
    )
    log = capsys.readouterr().out
    assert rc == 0, log
    files = list(out.iterdir())
    assert [f.name for f in files] == ["E=4,N=64,device_name=cpu.json"]
    table = json.loads(files[0].read_text())
    assert table.pop("triton_version")
    assert sorted(table) == ["1", "4"]
    for cfg in table.values():
        assert tuple(cfg) == CONFIG_KEYS  # no SKIP_LAST_K: the faulty candidate never wins
    # the faulty candidate was checked and rejected at every batch size
    for m in (1, 4):
        assert any(
            line.startswith(f"M={m}: rejected") and "+SKIP_LAST_K" in line
            for line in log.splitlines()
        ), log


_FAKE_SHAPE = {
    "arch": "fake",
    "E": 3,
    "k": 1,
    "H": 64,
    "N": 32,
    "quant": "none",
    "block_shape": [128, 128],
    "swiglu": {},
}


def test_fault_candidate_is_rejected_even_if_fastest(monkeypatch):
    """The check runs before the timing: a wrong config cannot win on speed."""
    pytest.importorskip("triton")
    if torch.cuda.is_available():
        pytest.skip("runs in the Triton interpreter")
    monkeypatch.setenv(tune.FAULT_ENV, "skip_last_k")
    monkeypatch.setattr(tune, "_time_cpu", lambda fn: 1.0)  # every candidate "as fast"
    best, records = tune.tune(
        _FAKE_SHAPE, [2], device="cpu", dtype=torch.bfloat16, grid="tiny", log=lambda *_: None
    )
    faulty = [r for r in records if r["config"].get("SKIP_LAST_K")]
    assert faulty and all(r["status"] == "rejected" for r in faulty)
    assert "SKIP_LAST_K" not in best[2]
    assert all(r["status"] == "ok" for r in records if not r["config"].get("SKIP_LAST_K"))


def test_check_only_times_nothing_and_still_rejects(monkeypatch):
    pytest.importorskip("triton")
    if torch.cuda.is_available():
        pytest.skip("runs in the Triton interpreter")

    def no_timing(fn):
        raise AssertionError("check-only must not time")

    monkeypatch.setenv(tune.FAULT_ENV, "skip_last_k")
    monkeypatch.setattr(tune, "_time_cpu", no_timing)
    best, records = tune.tune(
        _FAKE_SHAPE,
        [2],
        device="cpu",
        dtype=torch.bfloat16,
        grid="tiny",
        log=lambda *_: None,
        check_only=True,
    )
    assert best == {}
    assert all(r["us"] is None for r in records)
    faulty = [r for r in records if r["config"].get("SKIP_LAST_K")]
    assert faulty and all(r["status"] == "rejected" for r in faulty)
    assert sum(r["status"] == "ok" for r in records) == len(records) - len(faulty)


def test_each_finished_batch_size_is_reported_for_saving(monkeypatch):
    """A run cut short keeps what it verified: on_batch sees the table after every M."""
    pytest.importorskip("triton")
    if torch.cuda.is_available():
        pytest.skip("runs in the Triton interpreter")
    monkeypatch.setattr(tune, "_time_cpu", lambda fn: 1.0)
    seen = []
    tune.tune(
        _FAKE_SHAPE,
        [1, 2],
        device="cpu",
        dtype=torch.bfloat16,
        grid="tiny",
        log=lambda *_: None,
        on_batch=lambda best: seen.append(sorted(best)),
    )
    assert seen == [[1], [1, 2]]


def test_merge_keeps_other_batch_sizes(tmp_path):
    shape = dict(_FAKE_SHAPE)
    cfg = {"BLOCK_SIZE_M": 16, "BLOCK_SIZE_N": 32, "BLOCK_SIZE_K": 32}
    cfg.update(GROUP_SIZE_M=1, num_warps=4, num_stages=1)
    path = tune.save({1: cfg, 4: cfg}, shape, str(tmp_path), "cpu")
    tune.save({4: dict(cfg, BLOCK_SIZE_M=64), 8: cfg}, shape, str(tmp_path), "cpu", merge=True)
    table = json.loads(path.read_text())
    assert sorted(k for k in table if k != "triton_version") == ["1", "4", "8"]
    assert table["4"]["BLOCK_SIZE_M"] == 64 and table["1"]["BLOCK_SIZE_M"] == 16
    tune.save({8: cfg}, shape, str(tmp_path), "cpu")  # without merge: replaced
    assert sorted(json.loads(path.read_text())) == ["8", "triton_version"]


def test_mxfp4_threshold_a_batch_size_does_not_reach_is_the_in_gemm_path():
    pytest.importorskip("triton")
    shape = dict(_FAKE_SHAPE, quant="mxfp4", E=32, k=6)
    cands = tune.candidate_grid("tiny", "mxfp4", (128, 128), torch.bfloat16)
    assert {c["MX_DEQUANT_MIN_ROWS"] for c in cands} == {0, 1}
    low = tune._effective(cands, shape, 1, torch.bfloat16)  # 6 rows < 32 experts
    assert {c["MX_DEQUANT_MIN_ROWS"] for c in low} == {0} and len(low) == len(cands) // 2
    high = tune._effective(cands, shape, 16, torch.bfloat16)
    assert high == cands
