"""The one conversion of parity's values to plain data: JSON for verdicts, stats, case
descriptions and reports; a bounded binary framing for the worker's replies (JSON header plus
raw tensor bytes), which the harness parses without unpickling anything the candidate's process
wrote.
"""

from __future__ import annotations

import functools
import json
import math
import struct

MAX_REPLY = 1 << 31  # bytes; a reply larger than this is the candidate's doing


def jsonable(x):
    """Plain JSON: tuples to lists, non-finite floats to "nan"/"inf"/"-inf", others to repr."""
    if isinstance(x, dict):
        return {str(k): jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [jsonable(v) for v in x]
    if isinstance(x, float) and not math.isfinite(x):
        return "nan" if x != x else ("inf" if x > 0 else "-inf")
    if x is None or isinstance(x, (bool, int, float, str)):
        return x
    return repr(x)


def verdict_to_json(v) -> dict | None:
    if v is None:
        return None
    return {
        "ok": bool(v.ok),
        "message": str(v.message),
        "ratio": float(v.ratio) if v.ratio is not None else 0.0,
        "worst": jsonable(list(v.worst or [])),
    }


class BadReply(ValueError):
    """A worker's reply that does not parse: the candidate's process wrote it."""


@functools.cache
def _dtypes() -> dict:
    import torch

    return {
        str(d).replace("torch.", ""): d
        for d in vars(torch).values()
        if isinstance(d, torch.dtype) and not d.is_complex
    }


# A strided tensor travels as the span of storage it covers, its strides kept, where that span is
# at most _SPAN_MAX times its elements or _SPAN_BYTES long (a gapped view), or, for an
# overlapping view (stride 0), where its elements are at most _SPREAD_MAX times the span or
# _SPREAD_ELEMS; beyond, its values travel contiguous and the header says `stride_lost`. The
# receiver holds a reply to the same bounds: a worker's header must never make it build a tensor
# of far more elements than the bytes it sent.
_SPAN_MAX = 4
_SPAN_BYTES = 64 << 20
_SPREAD_MAX = 16
_SPREAD_ELEMS = 1 << 24


def _span_ok(numel: int, span: int, itemsize: int) -> bool:
    if span >= numel:  # gapped (or dense): the bytes sent bound the elements
        return span <= _SPAN_MAX * numel or span * itemsize <= _SPAN_BYTES
    return numel <= _SPREAD_MAX * span or numel <= _SPREAD_ELEMS  # overlapping


def tensor_to_wire(t, blobs: list) -> dict:
    """Header of one tensor; its bytes are appended to `blobs` (copied to the CPU). A tensor
    that is not contiguous keeps its strides: the bytes are the span of storage it covers, so
    the receiver rebuilds the same view. A layout is part of some contracts (column-major FP8
    scales): sent contiguous, every column-major output read as row-major, a false failure of
    every implementation under `parity fuzz` (seen on the H100 and the CPU, 2026-12-05), and a
    strided input reached an isolated kernel contiguous."""
    import torch

    d = t.detach()
    head = {"dtype": str(d.dtype).replace("torch.", ""), "shape": list(d.shape)}
    if not d.is_contiguous() and d.numel() > 1:
        span = 1 + sum((n - 1) * st for n, st in zip(d.shape, d.stride()))
        if _span_ok(d.numel(), span, d.element_size()):
            c = d.as_strided((span,), (1,)).to("cpu").contiguous()
            head.update(stride=list(d.stride()), span=span)
        else:
            c = d.to("cpu").contiguous()
            head.update(stride_lost=list(d.stride()))
    else:
        c = d.to("cpu").contiguous()
    raw = c.reshape(-1).view(torch.uint8).numpy().tobytes() if c.numel() else b""
    blobs.append(raw)
    head.update(device=str(t.device), nbytes=len(raw))
    return head


def _ints(v, n: int | None = None) -> bool:
    """A list of non-negative Python ints (bool is not one), of length n where given."""
    return (
        isinstance(v, list)
        and (n is None or len(v) == n)
        and all(type(x) is int and 0 <= x < 2**62 for x in v)
    )


def tensor_from_wire(h: dict, raw: bytes, device: str | None = None):
    import torch

    dtype = _dtypes().get(h.get("dtype"))
    shape = h.get("shape")
    if dtype is None or not _ints(shape):
        raise BadReply(f"bad tensor header {h!r:.200}")
    numel = math.prod(shape)
    stride, span = h.get("stride"), h.get("span")
    if stride is not None:  # a strided view: `span` elements of storage, then the view on them
        if (
            not _ints(stride, len(shape))
            or type(span) is not int
            or numel < 2
            or span != 1 + sum((n - 1) * x for n, x in zip(shape, stride))
            or not _span_ok(numel, span, dtype.itemsize)
        ):
            raise BadReply(f"bad strided tensor header {h!r:.200}")
        if span * dtype.itemsize != len(raw):
            raise BadReply(f"strided tensor span of {span} {dtype} with {len(raw)} bytes")
        flat = torch.frombuffer(bytearray(raw), dtype=torch.uint8).view(dtype)
        if device is not None and torch.device(device).type != "cpu":
            flat = flat.to(device)  # the storage moved first: `.to` would drop a gapped layout
        return flat.as_strided(tuple(shape), tuple(stride))
    if numel * dtype.itemsize != len(raw):
        raise BadReply(f"tensor of {shape} {dtype} with {len(raw)} bytes")
    if numel == 0:
        t = torch.empty(shape, dtype=dtype)
    else:
        t = torch.frombuffer(bytearray(raw), dtype=torch.uint8).view(dtype).reshape(shape)
    # the worker may see the harness's GPU under another index
    return t if device is None or torch.device(device).type == "cpu" else t.to(device)


def encode(header: dict, blobs: list) -> bytes:
    """One frame: 8 bytes (header length), the JSON header, then the blobs back to back."""
    head = json.dumps(jsonable(header)).encode()
    return struct.pack("<Q", len(head)) + head + b"".join(blobs)


def decode(frame: bytes) -> tuple[dict, list]:
    """(header, blobs) of `encode`; the header's "blobs" lists each blob's size."""
    if len(frame) < 8:
        raise BadReply("short reply")
    (n,) = struct.unpack("<Q", frame[:8])
    if n > len(frame) - 8:
        raise BadReply("reply header longer than the reply")
    try:
        header = json.loads(frame[8 : 8 + n])
    except (ValueError, RecursionError) as e:
        raise BadReply(f"reply header is not JSON: {e}") from e
    if not isinstance(header, dict):
        raise BadReply("reply header is not an object")
    sizes = header.get("blobs", [])
    if not isinstance(sizes, list) or not all(isinstance(s, int) and s >= 0 for s in sizes):
        raise BadReply("bad blob sizes")
    if 8 + n + sum(sizes) != len(frame):
        raise BadReply("blob sizes do not add up to the reply")
    blobs, at = [], 8 + n
    for s in sizes:
        blobs.append(frame[at : at + s])
        at += s
    return header, blobs


def outcomes_to_wire(outcomes, blobs: list) -> list:
    """`checks.Outcome`s as JSON, tensors as blob references."""
    import torch

    def item(x):
        if isinstance(x, torch.Tensor):
            if x.device.type not in ("cpu", "cuda"):
                return {"other": f"a tensor on {x.device.type}"}
            try:
                return {"tensor": tensor_to_wire(x, blobs), "blob": len(blobs) - 1}
            except Exception as e:  # a tensor the candidate made that cannot be read back
                return {"other": f"a tensor that cannot be read ({type(e).__name__})"}
        return {"other": str(x)[:200]}

    out = []
    for o in outcomes:
        d = {"kind": o.kind, "container": o.container, "error": o.error, "rejects": o.rejects}
        d["items"] = [item(x) for x in o.items]
        if o.inputs is not None:
            d["inputs"] = {k: item(v) for k, v in o.inputs.items()}
        out.append(d)
    return out


def outcomes_from_wire(rows, blobs: list, device: str | None = None) -> list:
    from parity.properties.checks import Outcome

    def item(d):
        if not isinstance(d, dict):
            raise BadReply("bad output item")
        if "tensor" in d:
            b = d.get("blob")
            if not isinstance(b, int) or not 0 <= b < len(blobs):
                raise BadReply("bad blob reference")
            where = str(d["tensor"].get("device", "cpu")).split(":")[0][:20]
            if device is not None and where != str(device).split(":")[0]:
                return f"a tensor on {where}"  # the candidate's wrong device
            return tensor_from_wire(d["tensor"], blobs[b], device)
        return str(d.get("other", "?"))[:200]

    if not isinstance(rows, list):
        raise BadReply("outcomes are not a list")
    out = []
    for d in rows:
        if not isinstance(d, dict) or d.get("kind") not in ("returned", "raised", "unsupported"):
            raise BadReply("bad outcome")
        o = Outcome(
            d["kind"],
            str(d.get("container", ""))[:100],
            tuple(item(x) for x in d.get("items", [])),
            str(d.get("error", "")),
            bool(d.get("rejects", False)),
        )
        if isinstance(d.get("inputs"), dict):
            o.inputs = {str(k): item(v) for k, v in d["inputs"].items()}
        out.append(o)
    return out
