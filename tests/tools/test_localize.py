"""`parity localize` names the faulty (layer, op), not the layer where the error piled up."""

import json

from parity.reference.stack import FUSED_REFERENCE_OPS, REFERENCE_OPS
from parity.tools.cli import main
from parity.tools.localize_cmd import localize

SMALL = dict(start_layer=0, end_layer=4, tokens=8, hidden=128, device="cpu", seed=1)


def every_nth(fn, *, period: int, at: int, bug):
    """`fn`, except that call number i with i % period == at goes through `bug`: with one call
    per layer (and localize's re-runs in layer order) that is layer `at` only."""
    count = [0]

    def wrapper(*args, **kwargs):
        i = count[0]
        count[0] += 1
        if i % period == at:
            return bug(fn, *args, **kwargs)
        return fn(*args, **kwargs)

    return wrapper


def post_adds_to_stream_0(fn, x, residual, post_mix, comb, **kw):
    out = fn(x, residual, post_mix, comb, **kw)
    out = out.clone()
    out[:, 0] += 0.25  # a small, wrong offset in one stream of one layer
    return out


def moe_swaps_weights(fn, x, w13, w2, topk_weights, topk_ids, **kw):
    # the two experts' router weights swapped: a plausible epilogue indexing bug
    return fn(x, w13, w2, topk_weights.flip(-1).contiguous(), topk_ids, **kw)


def buggy_post_table():
    post = every_nth(REFERENCE_OPS["mhc_post"], period=4, at=2, bug=post_adds_to_stream_0)
    return {"mhc_post": post}


def buggy_moe_table():
    ref = REFERENCE_OPS["fused_moe"]
    return {"fused_moe": lambda *a, **k: moe_swaps_weights(ref, *a, **k)}


def test_names_mhc_post_at_layer_2():
    res = localize(buggy_post_table(), **SMALL)
    assert res.first_bad is not None
    assert (res.first_bad.layer, res.first_bad.op) == (2, "mhc_post")
    posts = {c.layer: c.status for c in res.calls if c.op == "mhc_post"}
    assert posts == {0: "pass", 1: "pass", 2: "fail", 3: "pass"}
    # the residual streams agree through layer 1 and drift apart from layer 2 on
    drift = {g["layer"]: g["max_abs"] for g in res.growth}
    assert drift[0] == 0 and drift[1] == 0 and drift[2] > 0.1 and drift[3] > 0


def test_names_fused_moe_at_layer_0_and_clears_the_ops_after_it():
    res = localize(buggy_moe_table(), **SMALL)
    assert (res.first_bad.layer, res.first_bad.op) == (0, "fused_moe")
    moe = [c for c in res.calls if c.op == "fused_moe"]
    assert [c.status for c in moe] == ["fail"] * 4
    # every fused_moe fails on its own inputs; nothing else was replaced, so nothing else is
    # judged, although the free-running outputs drift everywhere after layer 0
    assert all(c.status == "reference" for c in res.calls if c.op != "fused_moe")
    assert all(g["max_abs"] > 0 for g in res.growth)


def test_first_of_two_bugs_with_the_fused_post_pre_path():
    table = {**FUSED_REFERENCE_OPS, **buggy_moe_table(), **buggy_post_table()}
    table["mhc_fused_post_pre"] = lambda *a, **k: FUSED_REFERENCE_OPS["mhc_fused_post_pre"](
        *a, **k
    )  # a candidate fused kernel that is correct
    res = localize(table, **SMALL)
    assert (res.first_bad.layer, res.first_bad.op) == (0, "fused_moe")
    fused = [c for c in res.calls if c.op == "mhc_fused_post_pre"]
    assert [c.layer for c in fused] == [1, 2, 3] and all(c.status == "pass" for c in fused)


def test_cli_module_table_json_and_exit_codes(tmp_path, monkeypatch, capsys):
    (tmp_path / "cand_ops.py").write_text(
        "from parity.reference.stack import REFERENCE_OPS\n"
        "count = [0]\n"
        "def mhc_post(x, residual, post_mix, comb):\n"
        "    i = count[0]\n"
        "    count[0] += 1\n"
        "    out = REFERENCE_OPS['mhc_post'](x, residual, post_mix, comb)\n"
        "    return out * 1.05 if i % 4 == 2 else out\n"
        "TABLE = {'mhc_post': mhc_post}\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    argv = ["localize", "--tokens", "8", "--hidden", "128", "--seed", "1", "--device", "cpu"]
    assert main([*argv, "--ops", "cand_ops:TABLE", "--json"]) == 1
    doc = json.loads(capsys.readouterr().out)
    assert doc["first_bad"]["layer"] == 2 and doc["first_bad"]["op"] == "mhc_post"
    assert [g["layer"] for g in doc["growth"]] == [0, 1, 2, 3, None]
    assert main([*argv, "--ops", "reference"]) == 0
    out = capsys.readouterr().out
    assert "no op out of tolerance" in out and "error growth" in out
    assert main([*argv, "--ops", "no_such_module:TABLE"]) == 2
    assert main([*argv, "--ops", "reference", "--layers", "2"]) == 2


def test_empty_layer_range_runs_only_the_head():
    res = localize(buggy_moe_table(), **{**SMALL, "start_layer": 2, "end_layer": 2})
    assert res.first_bad is None and [c.op for c in res.calls] == ["mhc_head"]
    assert [g["layer"] for g in res.growth] == [None]
