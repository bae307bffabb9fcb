"""Repro files: round trip, atomic writes, and rejection of malformed or tampered files."""

import json
import os
import pickle

import pytest
import torch

from parity.campaign import repro
from parity.campaign.repro import ReproError
from parity.properties.case import Case
from parity.properties.specs.swiglu import build

META = {
    "T": 3,
    "lead": [],
    "N": 4,
    "dtype": "bfloat16",
    "options": {
        "limit": 7.0,
        "alpha": 1.702,
        "beta": 1.0,
        "layout": "interleaved",
        "clamp_mode": "pre",
    },
    "regime": "normal",
    "seed": 1234,
}


def _same(a, b):
    return (
        a.dtype == b.dtype
        and a.shape == b.shape
        and torch.equal(a.contiguous().view(torch.uint8), b.contiguous().view(torch.uint8))
    )


def _save(tmp_path, case=None, **kw):
    case = case or build(META, "cpu")
    kw.setdefault("impl", "mod:fn")
    kw.setdefault("prop", "matches_reference")
    return case, repro.save(case, tmp_path, message="y: 3 of 12 elements out of tolerance", **kw)


def test_round_trip_keeps_tensors_options_and_description(tmp_path):
    case, path = _save(tmp_path, seed=7)
    assert path.suffix == ".json" and path.with_suffix(".safetensors").is_file()
    r = repro.load(path)
    assert (r.op, r.impl, r.prop, r.kind, r.seed) == (
        "swiglu",
        "mod:fn",
        "matches_reference",
        "fail",
        7,
    )
    assert r.meta == META
    got = r.case()
    assert _same(got.args[0], case.args[0])
    assert got.kwargs == case.kwargs
    doc = json.loads(path.read_text())
    assert doc["format"] == "parity-repro" and doc["version"] == repro.VERSION
    assert set(doc["versions"]) >= {"python", "torch", "triton", "gpu"}
    assert doc["command"].startswith("parity case --op swiglu")
    # every path form resolves to the same repro
    for p in (path.with_suffix(".safetensors"), path.with_suffix("")):
        assert repro.load(p).meta == META


def test_non_json_values_fp8_and_strides_round_trip(tmp_path):
    x = torch.randn(4, 6).t()  # non-contiguous: strides (1, 6)
    q = torch.randn(2, 3).to(torch.float8_e4m3fn)
    case = Case(
        "fp8_quant",
        (x, q, 3, None),
        {
            "block_shape": (128, 64),
            "dtype": torch.bfloat16,
            "eps": float("inf"),
            "pair": [torch.arange(3, dtype=torch.int32), "s"],
            "empty": torch.zeros(0, 5),
        },
        {"seed": 1, "nan": True},
    )
    _, path = _save(tmp_path, case, prop="matches_reference")
    got = repro.load(path).case()
    assert _same(got.args[0], x) and got.args[0].stride() == x.stride()
    assert _same(got.args[1], q) and got.args[2:] == (3, None)
    assert got.kwargs["block_shape"] == (128, 64)
    assert got.kwargs["dtype"] is torch.bfloat16
    assert got.kwargs["eps"] == float("inf")
    assert torch.equal(got.kwargs["pair"][0], torch.arange(3, dtype=torch.int32))
    assert got.kwargs["pair"][1] == "s" and got.kwargs["empty"].shape == (0, 5)


def test_atomic_write_leaves_no_temporary_files(tmp_path, monkeypatch):
    _save(tmp_path)
    assert sorted(p.suffix for p in tmp_path.iterdir()) == [".json", ".safetensors"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]

    def boom(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(repro.os, "replace", boom)
    other = tmp_path / "other"
    with pytest.raises(OSError, match="disk full"):
        repro.atomic_write(other / "f.json", b"{}")
    assert list(other.iterdir()) == []


def _edit(path, fn):
    doc = json.loads(path.read_text())
    fn(doc)
    path.write_text(json.dumps(doc))


@pytest.mark.parametrize(
    "mutate, match",
    [
        (lambda d: d.pop("meta"), "missing key 'meta'"),
        (lambda d: d.update(op=3), "key 'op': expected str"),
        (lambda d: d.update(version=99), "format version 99"),
        (lambda d: d.update(format="pickle"), "format 'pickle'"),
        (lambda d: d["tensors"].update(file="../../etc/passwd"), "plain .safetensors file name"),
        (lambda d: d["tensors"].update(sha256="0" * 64), "sha256 mismatch"),
        (lambda d: d["tensors"]["entries"]["arg0"].update(shape=[9, 9]), "the JSON says"),
        (lambda d: d["args"].append({"__tensor__": "nope"}), "not in the tensor file"),
        (lambda d: d["kwargs"].update(limit={"__code__": "import os"}), "unknown tag"),
        (lambda d: d.update(kind="segv"), "kind 'segv'"),
    ],
)
def test_malformed_json_is_rejected(tmp_path, mutate, match):
    _, path = _save(tmp_path)
    _edit(path, mutate)
    with pytest.raises(ReproError, match=match):
        repro.load(path)


def test_tampered_or_missing_tensor_file_is_rejected(tmp_path):
    _, path = _save(tmp_path)
    st = path.with_suffix(".safetensors")
    blob = bytearray(st.read_bytes())
    blob[-1] ^= 0xFF
    st.write_bytes(bytes(blob))
    with pytest.raises(ReproError, match="sha256 mismatch"):
        repro.load(path)
    st.unlink()
    with pytest.raises(ReproError, match=r"tensor file: .*no such file"):
        repro.load(path)
    path.write_text("{not json")
    with pytest.raises(ReproError, match="not valid JSON"):
        repro.load(path)
    with pytest.raises(ReproError, match="no such repro"):
        repro.load(tmp_path / "absent.json")


class _Evil:
    def __reduce__(self):
        return (os.mkdir, (os.environ["PARITY_TEST_MARKER"],))


def test_loading_never_unpickles(tmp_path, monkeypatch):
    """A pickle in place of the tensor file, with a matching hash, is refused without running."""
    marker = tmp_path / "pwned"
    monkeypatch.setenv("PARITY_TEST_MARKER", str(marker))
    _, path = _save(tmp_path)
    st = path.with_suffix(".safetensors")
    evil = pickle.dumps({"arg0": _Evil()})
    st.write_bytes(evil)
    import hashlib

    _edit(path, lambda d: d["tensors"].update(sha256=hashlib.sha256(evil).hexdigest()))
    with pytest.raises(ReproError, match="not a valid safetensors file"):
        repro.load(path)
    assert not marker.exists()


def test_unsaveable_value_is_a_clear_error(tmp_path):
    case = Case("swiglu", (torch.zeros(2, 4),), {"fn": print}, {"seed": 0})
    with pytest.raises(ReproError, match="cannot save a value of type"):
        repro.save(case, tmp_path, impl="x", prop="matches_reference")


def test_names_are_unique_and_the_replay_line_names_the_impl(tmp_path):
    """The same case saved twice: two pairs of files (campaigns sharing a folder keep both);
    the file's replay line names the module on the command line (never read from the file)."""
    _, a = _save(tmp_path)
    _, b = _save(tmp_path)
    assert a != b and len(list(tmp_path.glob("*.safetensors"))) == 2
    assert json.loads(a.read_text())["replay"].endswith(" --impl mod:fn")
    with pytest.raises(FileExistsError):
        repro.atomic_create(a, b"{}")
    assert repro.load(a).meta == repro.load(b).meta == META
