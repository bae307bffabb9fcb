"""Repro files are data, never code (issue 9 section 4, and the replay bullet of section 2).

Each test plants a hostile or unlucky file, kernel or run and asserts the outcome: a file never
makes parity import or run anything, a hostile file is "bad repro file: why" (exit 2) without a
hang, a traceback or an unbounded read, two campaigns on one folder keep each other's files,
and a failure that does not come back on replay is reported, never a pass."""

from __future__ import annotations

import contextlib
import hashlib
import json
import multiprocessing
import os
import signal
import sys
import time
from pathlib import Path

import pytest

from parity.campaign import repro
from parity.campaign.safefile import UnsafeFile, read_bounded
from parity.properties.specs.swiglu import build
from parity.tools.cli import main

META = {
    "T": 2,
    "lead": [],
    "N": 4,
    "dtype": "float32",
    "regime": "normal",
    "seed": 5,
    "options": {
        "limit": None,
        "alpha": 1.0,
        "beta": 0.0,
        "layout": "concat",
        "clamp_mode": "pre",
    },
}

# kernels written into the test's folder (imported by name from there, in the worker)
KERNELS = '''
import pathlib
import time

from parity.reference import swiglu as _ref

pathlib.Path("imported.marker").touch()  # proof that this module was imported
CALLS = 0


def broken(x, **kw):
    return _ref(x, **kw) + 1.0


def third_call(x, **kw):
    """Right, except on its 3rd call in a process: a stateful kernel."""
    global CALLS
    CALLS += 1
    y = _ref(x, **kw)
    return y + 1.0 if CALLS == 3 else y


def once_long_ago(x, **kw):
    """The failure was saved from a run that no longer happens (call 1000)."""
    global CALLS
    CALLS += 1
    y = _ref(x, **kw)
    return y + 1.0 if CALLS == 1000 else y


def hangs(x, **kw):
    time.sleep(120)
'''


@contextlib.contextmanager
def _deadline(seconds: float):
    """Fail (instead of hanging the suite) if the block takes longer than `seconds`."""

    def boom(*_):
        raise TimeoutError(f"hung for more than {seconds} s")

    old = signal.signal(signal.SIGALRM, boom)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


@pytest.fixture
def folder(tmp_path, monkeypatch):
    """The test's folder, current, holding the kernels module `planted`."""
    (tmp_path / "planted.py").write_text(KERNELS)
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    sys.modules.pop("planted", None)
    yield tmp_path
    sys.modules.pop("planted", None)


def _save(where: Path, impl: str = "planted:broken") -> Path:
    return repro.save(build(META, "cpu"), where, impl=impl, prop="matches_reference")


def _edit(path: Path, fn) -> None:
    doc = json.loads(path.read_text())
    fn(doc)
    path.write_text(json.dumps(doc))


def _replay(capsys, *argv, limit: float = 60.0):
    capsys.readouterr()
    with _deadline(limit):
        code = main(["replay", *argv])
    got = capsys.readouterr()
    return code, got.out, got.err


# --- 1. a file's impl is information, never imported -----------------------------------------


def test_os_system_in_a_file_runs_nothing(folder, capsys):
    """Today's exploit: "impl": "os:system" and a string argument in place of a tensor made
    `parity replay` run a shell command. The marker command must never run."""
    from safetensors.torch import save as st_save

    path = _save(folder / "r")
    marker = folder / "shell.marker"
    blob = st_save({}, metadata={"format": "parity-repro"})  # no tensors: a string instead
    _tensor_file(path).write_bytes(blob)

    def exploit(d):
        d.update(impl="os:system", args=[f"touch {marker}"], kwargs={})
        d["tensors"].update(entries={}, sha256=hashlib.sha256(blob).hexdigest())

    _edit(path, exploit)
    assert repro.load(path).impl == "os:system"  # loading is fine: it is only information
    code, out, err = _replay(capsys, str(path))
    assert code == 2, out + err
    assert "never imports a module named in a file" in err and "--impl os:system" in err
    for isolate in ([], ["--no-isolate"]):  # the reference on that call: an error, no shell
        _replay(capsys, str(path), "--impl", "reference", *isolate)
    assert not marker.exists()


def test_module_named_in_a_file_is_not_imported(folder, capsys):
    path = _save(folder / "r")
    repro.load(path)
    code, out, err = _replay(capsys, str(path))
    assert code == 2 and "pass --impl planted:broken" in err
    assert not (folder / "imported.marker").exists()
    assert "planted" not in sys.modules
    # named on the command line, the same module runs (in the worker) and fails
    code, out, err = _replay(capsys, str(path), "--impl", "planted:broken")
    assert code == 1 and "reproduced in a fresh worker (first call)" in out, out + err


# --- 2. hostile files: exit 2, "bad repro file", no hang -------------------------------------


def _tensor_file(path: Path) -> Path:
    return path.parent / json.loads(path.read_text())["tensors"]["file"]


def _fifo_json(path):
    path.unlink()
    os.mkfifo(path)


def _fifo_tensors(path):
    t = _tensor_file(path)
    t.unlink()
    os.mkfifo(t)


def _dev_zero(path):
    t = _tensor_file(path)
    t.unlink()
    t.symlink_to("/dev/zero")


def _symlink_out(path):
    t = _tensor_file(path)
    outside = path.parent.parent / "elsewhere.safetensors"
    outside.write_bytes(t.read_bytes())  # the right bytes, but outside the folder
    t.unlink()
    t.symlink_to(outside)


def _huge_json(path):
    _edit(path, lambda d: d.update(message="x" * (2 << 20)))


def _sparse_json(path):
    os.truncate(path, 64 << 30)  # 64 GiB, sparse: refused by its size, never read


def _tensors_bigger_than_declared(path):
    os.truncate(_tensor_file(path), 8 << 30)


def _deep_nesting(path):
    doc = path.read_text()
    deep = "[" * 100_000 + "]" * 100_000
    path.write_text(doc.replace('"meta": {', f'"deep": {deep}, "meta": {{', 1))


def _sha_mismatch(path):
    t = _tensor_file(path)
    b = bytearray(t.read_bytes())
    b[-1] ^= 1
    t.write_bytes(bytes(b))


def _shape_lie(path):
    _edit(path, lambda d: d["tensors"]["entries"]["arg0"].update(shape=[2, 4]))


def _dtype_lie(path):
    _edit(path, lambda d: d["tensors"]["entries"]["arg0"].update(dtype="float64"))


def _declared_huge(path):
    _edit(path, lambda d: d["tensors"]["entries"]["arg0"].update(shape=[1 << 40, 1 << 20]))


def _header_lie(path):
    t = _tensor_file(path)
    b = (1 << 60).to_bytes(8, "little") + t.read_bytes()[8:]
    t.write_bytes(b)
    _edit(path, lambda d: d["tensors"].update(sha256=hashlib.sha256(b).hexdigest()))


def _not_json(path):
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + os.urandom(64))


def _nan_literal(path):
    path.write_text(path.read_text().replace('"seed": null', '"seed": NaN', 1))


def _duplicate_key(path):
    path.write_text(path.read_text().replace('"op": "swiglu"', '"op": "swiglu", "op": "x"', 1))


def _wrong_type(key, value):
    return lambda path: _edit(path, lambda d: d.update({key: value}))


def _bad_entry(path):
    _edit(path, lambda d: d["tensors"]["entries"].update(arg0={"dtype": "bfloat16", "shape": "4"}))


HOSTILE = {
    "fifo as the JSON": (_fifo_json, "not a regular file (a FIFO)"),
    "fifo as the tensors": (_fifo_tensors, "not a regular file (a FIFO)"),
    "/dev/zero via symlink": (_dev_zero, "leaves its folder"),
    "symlink out of the folder": (_symlink_out, "leaves its folder"),
    "huge JSON": (_huge_json, "more than the 1048576 allowed"),
    "sparse 64 GiB JSON": (_sparse_json, "more than the 1048576 allowed"),
    "tensor file larger than declared": (_tensors_bigger_than_declared, "more than the"),
    "deep nesting": (_deep_nesting, "nested deeper than"),
    "sha mismatch": (_sha_mismatch, "sha256 mismatch"),
    "shape lie": (_shape_lie, "the JSON says"),
    "dtype lie": (_dtype_lie, "the JSON says"),
    "declared shapes huge": (_declared_huge, "exceed"),
    "header length lie": (_header_lie, "header length"),
    "not JSON": (_not_json, "not valid JSON"),
    "NaN literal": (_nan_literal, "NaN is not JSON"),
    "duplicate key": (_duplicate_key, "duplicate key 'op'"),
    "op of wrong type": (_wrong_type("op", 3), "key 'op': expected str"),
    "args of wrong type": (_wrong_type("args", {"a": 1}), "key 'args': expected list"),
    "unknown op": (_wrong_type("op", "os"), "not an op of the contract"),
    "device": (_wrong_type("device", "cuda; rm -rf"), "is not cpu or cuda"),
    "shape of wrong type": (_bad_entry, "expected {dtype, shape}"),
    "impl of 1 MB": (_wrong_type("impl", "m:" + "f" * 999_000), "longer than 256"),
    "unknown property": (_wrong_type("property", "nope"), "is not a property of swiglu"),
    "property unfit for the case": (_wrong_type("property", "error_parity"), "does not fit"),
}


@pytest.mark.parametrize("name", list(HOSTILE))
def test_hostile_file_is_a_usage_error(name, folder, capsys):
    plant, why = HOSTILE[name]
    path = _save(folder / "r")
    plant(path)
    t0 = time.monotonic()
    for isolate in ([], ["--no-isolate"]):
        code, out, err = _replay(capsys, str(path), "--impl", "planted:broken", *isolate, limit=20)
        assert code == 2, (out, err)
        assert "bad repro file: " in err and why in err, err
        assert "Traceback" not in out + err
    assert time.monotonic() - t0 < 10
    assert not (folder / "imported.marker").exists()  # refused before the kernel is imported


def test_device_file_is_refused_by_kind(tmp_path):
    with pytest.raises(UnsafeFile, match="not a regular file \\(a character device\\)"):
        read_bounded("/dev/zero", limit=100, folder="/dev")


def test_meta_file_is_read_with_limits(folder, capsys):
    from parity.tools.common import read_meta

    os.mkfifo(folder / "meta.fifo")
    (folder / "deep.json").write_text("[" * 5000 + "]" * 5000)
    (folder / "ok.json").write_text(json.dumps(META))
    with _deadline(10):
        assert read_meta("case", "@meta.fifo") == 2
        assert read_meta("case", "@deep.json") == 2
        assert read_meta("case", '{"a": NaN}') == 2
    err = capsys.readouterr().err
    assert "a FIFO" in err and "nested deeper" in err and "NaN is not JSON" in err
    assert read_meta("case", "@ok.json") == META


# --- 3. two campaigns on one folder ----------------------------------------------------------


def _campaign(argv: list[str], log: Path) -> None:
    """One `parity fuzz` in a forked process, its stdout into `log`, its exit code as status."""
    with open(log, "w") as f, contextlib.redirect_stdout(f):
        code = main(argv)
    os._exit(code)


def test_two_campaigns_keep_each_others_files(folder):
    """Three `parity fuzz` at once into one --out: two broken kernels, one of them twice with
    the same seed (same cases, same digests: the names must still differ). Every file each
    reports exists afterwards and loads; a file of someone else in the folder survives."""
    out = folder / "shared"
    out.mkdir()
    foreign = _save(out, impl="planted:third_call")  # an earlier campaign's repro
    (out / "notes.txt").write_text("not parity's")
    base = ["fuzz", "--op", "swiglu", "--device", "cpu", "--property", "matches_reference"]
    base += ["--max-examples", "4", "--seed", "0", "--no-isolate", "--json", "--out", str(out)]
    base += ["--shrink-time", "1"]
    ctx = multiprocessing.get_context("fork")  # three processes at once, torch already imported
    procs = []
    for i, impl in enumerate(("planted:broken", "planted:third_call", "planted:broken")):
        log = folder / f"campaign{i}.out"
        procs.append((ctx.Process(target=_campaign, args=([*base, "--impl", impl], log)), log))
    for p, _ in procs:
        p.start()
    reported = []
    for p, log in procs:
        p.join(120)
        assert p.exitcode == 1, log.read_text()[-2000:]
        files = json.loads(log.read_text())["repro_files"]
        assert len(files) == 1, files
        reported += files
    assert len(set(reported)) == 3, reported  # same case, same kernel: still two files
    for f in [*reported, foreign]:
        r = repro.load(f)
        assert r.op == "swiglu" and r.prop == "matches_reference"
    assert (out / "notes.txt").read_text() == "not parity's"
    jsons = sorted(out.glob("*.json"))
    assert len(jsons) == 4, jsons
    assert len(list(out.glob("*.safetensors"))) == 4
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temporary files


def test_save_never_replaces_a_file(tmp_path, monkeypatch):
    """The names are unique; even a name collision (forced here) never replaces a file."""
    a = _save(tmp_path)
    monkeypatch.setattr(repro.secrets, "token_hex", lambda n: "0" * (2 * n))
    b = _save(tmp_path)
    with pytest.raises(repro.ReproError, match="no free file name"):
        _save(tmp_path)  # every name it may pick exists: an error, not an overwrite
    assert a != b and repro.load(a).meta == repro.load(b).meta == META
    with pytest.raises(FileExistsError):
        repro.atomic_create(a, b"{}")
    assert repro.load(a).op == "swiglu"


# --- 4. replay: a failure that does not come back ------------------------------------------


def test_stateful_failure_is_reported_as_history(folder, capsys):
    path = _save(folder / "r", impl="planted:third_call")
    code, out, err = _replay(capsys, str(path), "--impl", "planted:third_call")
    assert code == 1, out + err
    assert "did not reproduce in a fresh worker: reproduced only on call 3" in out
    assert "depends on history (stateful or nondeterministic kernel)" in out
    code, out, err = _replay(capsys, str(path), "--impl", "planted:third_call", "--warmup", "1")
    assert code == 1, out + err
    assert "did not reproduce: the failure depends on history (stateful or nondeterministic " in out


def test_failure_that_never_comes_back_is_not_a_pass(folder, capsys):
    path = _save(folder / "r", impl="planted:once_long_ago")
    code, out, _ = _replay(capsys, str(path), "--impl", "planted:once_long_ago", "--json")
    doc = json.loads(out)
    assert code == 1 and doc["exit_code"] == 1 and doc["reproduced"] == "no"
    assert doc["calls"] == 5 and "did not reproduce: the failure depends on history" in doc["note"]
    # the same file on another implementation that passes: a pass (e.g. the fixed kernel)
    code, out, _ = _replay(capsys, str(path), "--impl", "reference")
    assert code == 0 and "passes here; the saved failure was on planted:once_long_ago" in out


def test_replay_timeout_is_honoured(folder, capsys):
    path = _save(folder / "r", impl="planted:hangs")
    t0 = time.monotonic()
    code, out, err = _replay(capsys, str(path), "--impl", "planted:hangs", "--timeout", "1")
    assert code == 1 and "HANG" in out.upper(), out + err
    assert time.monotonic() - t0 < 30


def test_replay_timeout_covers_the_import(folder, capsys):
    """A module that hangs at import: the worker imports it, `--timeout` bounds it."""
    (folder / "slow_import.py").write_text("import time\ntime.sleep(120)\nbroken = None\n")
    path = _save(folder / "r", impl="slow_import:broken")
    t0 = time.monotonic()
    code, out, err = _replay(capsys, str(path), "--impl", "slow_import:broken", "--timeout", "2")
    assert code == 1 and "import hung" in out, out + err
    assert time.monotonic() - t0 < 30
    assert "slow_import" not in sys.modules  # imported in the worker only
