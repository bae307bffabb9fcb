"""The known-failure ledger: loading, matching, and xfail/XPASS in `parity fuzz`."""

import json
import sys
from pathlib import Path

import pytest

from parity.campaign.ledger import Ledger, load_ledger

sys.path.insert(0, str(Path(__file__).parent / "kernels"))
from parity_tools_testlib import parity

BROKEN = "parity_kernels_swiglu:broken"


def _entry(**kw):
    e = {
        "op": "swiglu",
        "impl": BROKEN,
        "property": "matches_reference",
        "when": {"options.beta": 1.0},
        "reason": "acme/kernels#12: beta is ignored",
    }
    e.update(kw)
    return e


def _write(tmp_path, entries, name="ledger.json"):
    p = tmp_path / name
    p.write_text(json.dumps({"entries": entries}))
    return p


def test_load_json_and_toml_and_match(tmp_path):
    led = Ledger.load(_write(tmp_path, [_entry(), _entry(impl="*", property="*", when={})]))
    meta = {"T": 2, "options": {"beta": 1.0, "layout": "concat"}}
    assert led.match("swiglu", BROKEN, "matches_reference", meta).index == 0
    assert led.match("swiglu", BROKEN, "matches_reference", {"options": {"beta": 0.0}}).index == 1
    assert led.match("fp8_quant", BROKEN, "matches_reference", meta) is None
    toml = tmp_path / "ledger.toml"
    toml.write_text(
        '[[entry]]\nop = "swiglu"\nimpl = "triton"\nproperty = "*"\n'
        'reason = "see #7"\n[entry.when]\ndtype = "float16"\noptions = {layout = "interleaved"}\n'
    )
    led = Ledger.load(toml)
    assert led.match(
        "swiglu",
        "triton",
        "nan_policy",
        {"dtype": "float16", "options": {"layout": "interleaved", "beta": 0.0}},
    )
    assert not led.match(
        "swiglu", "triton", "nan_policy", {"dtype": "float16", "options": {"layout": "concat"}}
    )
    assert not led.match("swiglu", "triton", "nan_policy", {"dtype": "bfloat16"})


@pytest.mark.parametrize(
    "bad, match",
    [
        ({"reason": "flaky on H100"}, "must cite an issue"),
        ({"reason": "issue 12"}, "must cite an issue"),
        ({"op": "nope"}, "not an op of the contract"),
        ({"when": [1]}, "'when' must be an object"),
        ({"colour": "red"}, "unknown keys"),
        ({"impl": ""}, "'impl' is required"),
    ],
)
def test_bad_entries_are_refused_at_load(tmp_path, bad, match):
    with pytest.raises(ValueError, match=match):
        Ledger.load(_write(tmp_path, [_entry(**bad)]))


def test_issue_reference_forms_are_accepted(tmp_path):
    for reason in (
        "owner/repo#1",
        "#123 tail tile",
        "https://github.com/o/r/issues/9 x",
        "fixed upstream in vllm-project/vllm#20001",
    ):
        Ledger.load(_write(tmp_path, [_entry(reason=reason)]))


def test_default_ledger_is_read_from_the_current_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert not load_ledger()
    _write(tmp_path, [_entry()], name="parity-ledger.json")
    assert len(load_ledger().entries) == 1


def test_known_failure_is_xfail_and_the_campaign_goes_on(tmp_path, capsys):
    led = _write(tmp_path, [_entry(when={})])
    r = parity(
        capsys,
        "fuzz",
        "--op",
        "swiglu",
        "--impl",
        BROKEN,
        "--property",
        "matches_reference",
        "--max-examples",
        "15",
        "--no-isolate",
        "--json",
        "--ledger",
        str(led),
        "--out",
        str(tmp_path / "repros"),
    )
    doc = json.loads(r.out)
    (st,) = doc["properties"]
    assert r.code == 0, r.out
    assert st["xfailed"] > 0 and st["failure"] is None
    assert st["run"] == 15  # a known failure does not stop the campaign
    assert doc["ledger"][0]["xfailed"] == st["xfailed"]


def test_unknown_failure_outside_the_entry_still_fails(tmp_path, capsys):
    led = _write(tmp_path, [_entry(when={"dtype": "float64"})])  # never drawn
    r = parity(
        capsys,
        "fuzz",
        "--op",
        "swiglu",
        "--impl",
        BROKEN,
        "--property",
        "matches_reference",
        "--max-examples",
        "15",
        "--no-isolate",
        "--ledger",
        str(led),
        "--shrink-time",
        "1",
        "--out",
        str(tmp_path / "repros"),
    )
    assert r.code == 1 and "FAIL swiglu" in r.out and "XPASS" not in r.out


def test_entry_that_passes_is_an_xpass(tmp_path, capsys):
    led = _write(tmp_path, [_entry(impl="reference", property="deterministic", when={})])
    r = parity(
        capsys,
        "fuzz",
        "--op",
        "swiglu",
        "--impl",
        "reference",
        "--property",
        "deterministic",
        "--max-examples",
        "5",
        "--no-isolate",
        "--ledger",
        str(led),
    )
    assert r.code == 1
    assert "XPASS: ledger entry #0" in r.out


def test_bad_ledger_is_a_usage_error(tmp_path, capsys):
    led = _write(tmp_path, [_entry(reason="no issue")])
    r = parity(capsys, "fuzz", "--op", "swiglu", "--impl", "reference", "--ledger", str(led))
    assert r.code == 2
    assert "must cite an issue" in r.err


def test_unmatched_entries_are_listed(tmp_path):
    led = Ledger.load(_write(tmp_path, [_entry(), _entry(impl="*", property="*", when={})]))
    led.record(led.match("swiglu", BROKEN, "nan_policy", {}), True)
    (line,) = led.unmatched("swiglu", BROKEN)
    assert line.startswith("ledger entry #0") and "matched no case" in line
    assert led.unmatched("swiglu", "other") == []  # entry 1 matched; entry 0 is for BROKEN
    assert [r["unmatched"] for r in led.summary()] == [True, False]


@pytest.mark.parametrize(
    "bad, match",
    [
        ({"property": "nope"}, "not a property of swiglu"),
        ({"impl": "nope"}, "not an implementation"),
    ],
)
def test_unknown_names_are_refused(tmp_path, bad, match):
    with pytest.raises(ValueError, match=match):
        Ledger.load(_write(tmp_path, [_entry(**bad)]))
