"""Tensors keep their layout across the worker boundary (parity/campaign/wire.py).

Found 2026-12-05: `parity fuzz` ran every implementation in a worker whose outputs came back
contiguous, so `silu_mul_fp8_quant(column_major_scales=True)`'s column-major scales read as
row-major: a layout FAIL for the reference itself, on the H100 and the CPU alike, while the
in-process suite passed. Strided inputs likewise reached an isolated kernel contiguous.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from parity.campaign.wire import BadReply, tensor_from_wire, tensor_to_wire


def _round_trip(t):
    blobs = []
    h = json.loads(json.dumps(tensor_to_wire(t, blobs)))
    return h, tensor_from_wire(h, blobs[0])


def _views():
    base = torch.arange(60, dtype=torch.float32).reshape(6, 10)
    col = torch.empty_strided((3, 4), (1, 3))
    col.copy_(torch.arange(12.0).reshape(3, 4))
    return {
        "column-major": col,
        "transposed": base.t(),
        "column slice (gaps)": base[:, 2:5],
        "every other row": base[::2],
        "expanded (stride 0)": torch.arange(4.0).expand(3, 4),
        "bfloat16 slice": base.bfloat16()[1:, ::3],
    }


@pytest.mark.parametrize("name", list(_views()))
def test_strided_views_keep_values_and_strides(name):
    t = _views()[name]
    h, back = _round_trip(t)
    assert back.stride() == t.stride() and back.shape == t.shape and back.dtype == t.dtype
    assert torch.equal(back, t), name
    assert h["span"] * t.element_size() == h["nbytes"]


def test_contiguous_and_tiny_tensors_travel_as_before():
    for t in (torch.arange(6.0).reshape(2, 3), torch.zeros(0, 3), torch.ones(1, 1).t()):
        h, back = _round_trip(t)
        assert "stride" not in h and back.is_contiguous() and torch.equal(back, t)


def test_a_huge_gap_travels_contiguous_and_says_so():
    big = torch.zeros(70 << 20, dtype=torch.uint8)
    big[69 << 20] = 7
    t = big.as_strided((2, 2), (69 << 20, 1))  # 4 bytes spread over 69 MiB
    h, back = _round_trip(t)
    assert h["stride_lost"] == [69 << 20, 1] and back.is_contiguous() and torch.equal(back, t)
    assert h["nbytes"] == 4
    wide = torch.zeros(1000, 1000)[::999, ::999]  # 4 MB of span: under the byte bound, kept
    assert _round_trip(wide)[1].stride() == (999000, 999)


def test_hostile_headers_never_build_more_than_was_sent():
    """A worker's reply is the candidate's: its header must not make the harness build a tensor
    far larger than the bytes sent, nor fail with anything but BadReply (review, 2026-12-05)."""
    one = bytes(4)
    hostile = [
        {"dtype": "float32", "shape": [10**6, 10**6], "stride": [0, 0], "span": 1},
        {"dtype": "float32", "shape": [2, 2], "stride": [True, False], "span": 1},
        {"dtype": "float32", "shape": [2**64, 2], "stride": [0, 0], "span": 1},
        {"dtype": "float32", "shape": [2**62, 4], "stride": [0, 0], "span": 1},
        {"dtype": "float32", "shape": [True, True]},
        {"dtype": "float32", "shape": [2**64, 0]},
    ]
    for h in hostile:
        with pytest.raises(BadReply):
            tensor_from_wire(h, one)


def test_bad_strided_headers_are_refused():
    blobs = []
    h = tensor_to_wire(_views()["column slice (gaps)"], blobs)
    for bad in ({"span": h["span"] + 1}, {"stride": [1]}, {"stride": [-1, 1]}, {"span": 10**9}):
        with pytest.raises(BadReply):
            tensor_from_wire({**h, **bad}, blobs[0])
    with pytest.raises(BadReply):
        tensor_from_wire(h, blobs[0][:-4])


def test_fuzz_in_a_worker_passes_the_reference_on_column_major_scales(tmp_path):
    """The end-to-end witness of the finding: the reference judged in a worker on cases with
    column-major scales (M and groups >= 2), as `parity fuzz` runs it."""
    cmd = [sys.executable, "-m", "parity", "fuzz", "--op", "silu_mul_fp8_quant", "--impl",
           "reference", "--device", "cpu", "--max-examples", "40", "--seed", "1", "--out",
           str(tmp_path)]  # fmt: skip
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "column-major" not in r.stdout + r.stderr
