"""The known-failure ledger cannot hide anything (issue 9 section 2, ledger bullet; section 4
for its files): names are validated, an entry that matches nothing is reported, a ledger found
in the current folder is announced, an expected crash still counts as a crash, and a hostile
ledger file is a usage error without a hang."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sys

import pytest

from parity.campaign.ledger import Ledger
from parity.tools.cli import main

KERNELS = """
import os
import signal

from parity.reference import swiglu as _ref


def broken(x, **kw):
    return _ref(x, **kw) + 1.0


def dies(x, **kw):
    os.kill(os.getpid(), signal.SIGKILL)
"""

FUZZ = ["fuzz", "--op", "swiglu", "--device", "cpu", "--property", "matches_reference"]
FUZZ += ["--max-examples", "3", "--shrink-time", "1"]


def _entry(**kw):
    e = {
        "op": "swiglu",
        "impl": "planted:broken",
        "property": "matches_reference",
        "reason": "acme/kernels#12: beta is ignored",
    }
    e.update(kw)
    return e


@pytest.fixture
def folder(tmp_path, monkeypatch):
    (tmp_path / "planted.py").write_text(KERNELS)
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    sys.modules.pop("planted", None)
    yield tmp_path
    sys.modules.pop("planted", None)


def _ledger(folder, entries, name="ledger.json"):
    p = folder / name
    p.write_text(json.dumps({"entries": entries}))
    return p


def _fuzz(capsys, *argv):
    capsys.readouterr()
    with _deadline(60):
        code = main([*FUZZ, *argv])
    got = capsys.readouterr()
    return code, got.out, got.err


@contextlib.contextmanager
def _deadline(seconds: float):
    def boom(*_):
        raise TimeoutError(f"hung for more than {seconds} s")

    old = signal.signal(signal.SIGALRM, boom)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


@pytest.mark.parametrize(
    "bad, why",
    [
        ({"property": "matches_referense"}, "property 'matches_referense' is not a property of"),
        ({"impl": "tritn"}, "impl 'tritn' is not an implementation of swiglu"),
        ({"impl": "planted broken"}, "is not an implementation of swiglu"),
    ],
)
def test_misspelt_names_are_usage_errors(folder, capsys, bad, why):
    led = _ledger(folder, [_entry(**bad)])
    code, out, err = _fuzz(capsys, "--impl", "reference", "--no-isolate", "--ledger", str(led))
    assert code == 2 and why in err, out + err


def test_valid_names_load(folder):
    """The witness of the rule above: "*", reference, registered and module:function load."""
    from parity.catalog import impls

    names = ["*", "reference", "planted:broken", *(i.name for i in impls("swiglu"))]
    led = Ledger.load(_ledger(folder, [_entry(impl=n, property="*") for n in names]))
    assert [e.impl for e in led.entries] == names
    assert "planted" not in sys.modules  # a module:function entry is never imported


def test_entry_that_matches_nothing_is_reported(folder, capsys):
    led = _ledger(folder, [_entry(when={"dtype": "float64"}), _entry(when={})])
    code, out, err = _fuzz(
        capsys, "--impl", "planted:broken", "--no-isolate", "--ledger", str(led), "--json"
    )
    doc = json.loads(out)
    assert code == 0, err
    rows = {r["index"]: r for r in doc["ledger"]}
    assert rows[0]["unmatched"] is True and rows[0]["matched"] == 0
    assert rows[1]["unmatched"] is False and rows[1]["xfailed"] >= 1
    lines = Ledger.load(led).unmatched("swiglu", "planted:broken")
    assert len(lines) == 2  # nothing counted yet on a fresh load: both lines
    assert "matched no case in this run" in lines[0]


def test_entry_that_matches_nothing_is_printed_at_the_end(folder, capsys):
    led = _ledger(folder, [_entry(when={"dtype": "float64"}), _entry(when={})])
    code, out, err = _fuzz(capsys, "--impl", "planted:broken", "--no-isolate", "--ledger", str(led))
    assert code == 0
    assert "ledger entry #0" in out + err and "matched no case" in out + err
    assert "ledger entry #1" not in out + err


def test_implicit_ledger_is_announced(folder, capsys):
    _ledger(folder, [_entry(when={})], name="parity-ledger.json")
    code, out, err = _fuzz(capsys, "--impl", "planted:broken", "--no-isolate")
    assert "xfail" in out
    assert code == 0  # the ledger turned the failures into xfail ...
    assert "using the known-failure ledger ./parity-ledger.json" in err  # ... and says so


def test_expected_crash_still_counts_as_a_crash(folder, capsys):
    led = _ledger(folder, [_entry(impl="planted:dies", when={})])
    code, out, err = _fuzz(capsys, "--impl", "planted:dies", "--ledger", str(led), "--json")
    (st,) = json.loads(out)["properties"]
    assert code == 0 and st["xfailed"] >= 1, out + err
    assert st["crashes"] == st["xfailed"]


# --- hostile ledger files --------------------------------------------------------------------


def _fifo(folder):
    os.mkfifo(folder / "ledger.json")


def _huge(folder):
    _ledger(folder, [_entry(reason="#1 " + "x" * (2 << 20))])


def _deep(folder):
    (folder / "ledger.json").write_text('{"entries": ' + "[" * 50_000 + "]" * 50_000 + "}")


def _deep_toml(folder):
    (folder / "ledger.toml").write_text("x = " + "[" * 50_000 + "]" * 50_000 + "\n")


def _deep_toml_parsed(folder):
    (folder / "ledger.toml").write_text("x = " + "[" * 40 + "]" * 40 + "\n")


def _symlink_out(folder):
    elsewhere = folder.parent / f"{folder.name}-elsewhere.json"
    elsewhere.write_text(json.dumps({"entries": [_entry()]}))
    (folder / "ledger.json").symlink_to(elsewhere)


def _dev_zero(folder):
    (folder / "ledger.json").symlink_to("/dev/zero")


def _not_json(folder):
    (folder / "ledger.json").write_bytes(os.urandom(100))


HOSTILE = {
    "fifo": (_fifo, "ledger.json", "not a regular file (a FIFO)"),
    "huge": (_huge, "ledger.json", "more than the 1048576 allowed"),
    "deep JSON": (_deep, "ledger.json", "nested deeper than"),
    "deep TOML": (_deep_toml, "ledger.toml", "not valid TOML"),
    "deep TOML, parsed": (_deep_toml_parsed, "ledger.toml", "nested deeper than 32"),
    "symlink out": (_symlink_out, "ledger.json", "leaves its folder"),
    "/dev/zero": (_dev_zero, "ledger.json", "leaves its folder"),
    "not JSON": (_not_json, "ledger.json", "not valid JSON"),
}


@pytest.mark.parametrize("name", list(HOSTILE))
def test_hostile_ledger_file_is_a_usage_error(folder, capsys, name):
    plant, fname, why = HOSTILE[name]
    plant(folder)
    code, out, err = _fuzz(capsys, "--impl", "reference", "--no-isolate", "--ledger", fname)
    assert code == 2 and "bad ledger file: " in err and why in err, out + err
    assert "Traceback" not in out + err
