"""Repro files: one failing case, saved so that it can be replayed without regenerating it.

A repro is a pair of files in one folder (default `parity-repros/`, git-ignored):

- `<stem>.safetensors`: every tensor of the call (positional args and tensor kwargs), named as
  `Case.tensors()` names them (`arg0`, `kw.bias`, ...); tensors nested in lists, tuples or dicts
  get a dotted path (`kw.layers.0`). Written from the CPU, contiguous.
- `<stem>.json`: everything else (see `FORMAT`, version `VERSION`):

      {"format": "parity-repro", "version": 1,
       "op", "impl", "property", "device", "kind" ("fail" | "crash" | "hang"),
       "message", "ratio", "worst", "seed", "meta" (the case description, JSON),
       "args": [value, ...], "kwargs": {name: value},   # tensors as {"__tensor__": name}
       "tensors": {"file": "<stem>.safetensors", "sha256": hex,
                   "entries": {name: {"dtype", "shape", "stride"}}},
       "versions": {"python", "torch", "triton", "hypothesis", "safetensors", "parity",
                    "gpu"}, "created": ISO time, "command": "parity case ..."}

  Non-JSON option values are tagged: `{"__tuple__": [...]}`, `{"__dtype__": "bfloat16"}`,
  `{"__float__": "nan" | "inf" | "-inf"}`.

Names are unique (a digest of the case and a random part) and both files are created
atomically without ever replacing a file (`atomic_create`: temporary file, fsync, hard link,
which fails if the name exists), tensors first, so a JSON file that exists always names a
complete tensor file, and two campaigns writing one folder never overwrite or delete each
other's files.

Loading treats the files as hostile data: it never executes code (JSON and safetensors only: no
pickle, no `torch.load`) and never imports anything the file names (its `impl` is information:
`parity replay` runs a `module:function` only when the user names it with `--impl`). Limits are
checked before reading (`parity.campaign.safefile`): regular files in the JSON's folder only,
the JSON at most 1 MiB and 32 levels deep, the tensor file no larger than the tensors the JSON
declares plus a header bound, at most `MAX_TENSOR_BYTES` declared. A malformed, tampered or
hostile pair raises `ReproError` ("bad repro file: <path>: <why>"); the CLI maps it to exit 2.

Public API (used by the campaign engine and by `parity replay/golden/check/bisect/localize`):

    save(case, out_dir, *, impl, prop, kind="fail", message="", verdict=None, seed=None,
         extra=None) -> Path        # the JSON path; `case` is a parity.properties.case.Case
    load(path) -> Repro             # path: the .json, the .safetensors, or the stem
    Repro.case(device=None) -> Case # tensors from the file, moved to `device`
    Repro fields: path, op, impl, prop, device, kind, message, meta, seed, ratio, worst,
                  versions, data (the whole JSON object)
    atomic_create(path, data: bytes) # atomic, never replaces (FileExistsError): repro files
    atomic_write(path, data: bytes) # atomic replace (golden tables rewrite their own files)
    versions(device=None) -> dict   # python/torch/triton/... versions and GPU name
    ReproError                      # ValueError subclass; message names the file and problem
    DEFAULT_DIR = "parity-repros"
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import hashlib
import importlib.metadata
import json
import math
import os
import platform
import re
import secrets
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from parity.campaign.wire import jsonable

FORMAT = "parity-repro"
VERSION = 1
DEFAULT_DIR = "parity-repros"
KINDS = ("fail", "crash", "hang")

_REQUIRED = {
    "format": str,
    "version": int,
    "op": str,
    "impl": str,
    "property": str,
    "device": str,
    "meta": dict,
    "args": list,
    "kwargs": dict,
    "tensors": dict,
}


class ReproError(ValueError):
    """A repro file that cannot be written or read (malformed, tampered, incomplete)."""


# --- atomic writes -------------------------------------------------------------------------


def _synced_temp(path: Path, data: bytes) -> Path:
    """A new temporary file beside `path` (O_EXCL) holding `data`, fsynced; removed again if
    writing it fails."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return tmp


def atomic_write(path: str | os.PathLike, data: bytes) -> Path:
    """Write `data` to `path` atomically: a temporary file in the same folder, fsync,
    `os.replace`, then fsync of the folder. No temporary file is left behind on error."""
    path = Path(path)
    tmp = _synced_temp(path, data)
    try:
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)
    return path


def _fsync_dir(folder: Path) -> None:
    with contextlib.suppress(OSError):  # the rename itself durable (not on every platform)
        dfd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)


def atomic_create(path: str | os.PathLike, data: bytes) -> Path:
    """Create `path` with `data` atomically, never replacing a file that exists (several
    campaigns may write into one folder): the data goes to a temporary file (O_EXCL) that is
    then hard-linked to `path`, which fails with FileExistsError if `path` exists. Readers see
    no file or the whole file; no temporary file is left behind."""
    path = Path(path)
    tmp = _synced_temp(path, data)
    try:
        os.link(tmp, path)  # atomic, and refuses to replace: unlike os.replace
    finally:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
    _fsync_dir(path.parent)
    return path


# --- versions ------------------------------------------------------------------------------


def _dist_version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def versions(device: str | None = None) -> dict:
    """Versions of the toolchain, and the GPU's name when the case ran on one."""
    gpu = None
    if (device or "").startswith("cuda") or torch.cuda.is_initialized():
        with contextlib.suppress(Exception):
            gpu = torch.cuda.get_device_name()
    import parity

    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "triton": _dist_version("triton"),
        "hypothesis": _dist_version("hypothesis"),
        "safetensors": _dist_version("safetensors"),
        "parity": parity.__version__,
        "cuda": torch.version.cuda,
        "gpu": gpu,
    }


# --- value encoding ------------------------------------------------------------------------


def _dtype_names() -> dict[str, torch.dtype]:
    from parity.properties.case import DTYPES

    return DTYPES


def _encode(v: Any, name: str, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(v, torch.Tensor):
        tensors[name] = v
        return {"__tensor__": name}
    if v is None or isinstance(v, (bool, int, str)):
        return v
    if isinstance(v, float):
        if math.isfinite(v):
            return v
        return {"__float__": "nan" if v != v else ("inf" if v > 0 else "-inf")}
    if isinstance(v, torch.dtype):
        return {"__dtype__": str(v).replace("torch.", "")}
    if isinstance(v, tuple):
        return {"__tuple__": [_encode(x, f"{name}.{i}", tensors) for i, x in enumerate(v)]}
    if isinstance(v, list):
        return [_encode(x, f"{name}.{i}", tensors) for i, x in enumerate(v)]
    if isinstance(v, dict):
        if not all(isinstance(k, str) and not k.startswith("__") for k in v):
            raise ReproError(f"{name}: dict keys must be plain strings, got {list(v)}")
        return {k: _encode(x, f"{name}.{k}", tensors) for k, x in v.items()}
    raise ReproError(f"{name}: cannot save a value of type {type(v).__name__} ({v!r})")


def _decode(v: Any, where: str, tensors: dict[str, torch.Tensor]) -> Any:
    if v is None or isinstance(v, (bool, int, float, str)):
        return v
    if isinstance(v, list):
        return [_decode(x, f"{where}[{i}]", tensors) for i, x in enumerate(v)]
    if not isinstance(v, dict):
        raise ReproError(f"{where}: unexpected JSON value {v!r}")
    if len(v) == 1:
        ((tag, x),) = v.items()
        if tag == "__tensor__":
            if not isinstance(x, str) or x not in tensors:
                raise ReproError(f"{where}: tensor {x!r} is not in the tensor file")
            return tensors[x]
        if tag == "__tuple__":
            if not isinstance(x, list):
                raise ReproError(f"{where}: __tuple__ must hold a list")
            return tuple(_decode(y, f"{where}[{i}]", tensors) for i, y in enumerate(x))
        if tag == "__dtype__":
            if x not in _dtype_names():
                raise ReproError(f"{where}: unknown dtype {x!r}")
            return _dtype_names()[x]
        if tag == "__float__":
            if x not in ("nan", "inf", "-inf"):
                raise ReproError(f"{where}: __float__ must be nan, inf or -inf, got {x!r}")
            return float(x)
    if any(isinstance(k, str) and k.startswith("__") for k in v):
        raise ReproError(f"{where}: unknown tag in {sorted(v)}")
    return {k: _decode(x, f"{where}.{k}", tensors) for k, x in v.items()}


def repro_command(op: str, impl: str, prop: str, device: str, meta: dict) -> str:
    """The one-line `parity case` command that rebuilds and re-evaluates a case."""
    return (
        f"parity case --op {op} --impl {shlex.quote(impl)} --property {prop} "
        f"--device {device} --meta {shlex.quote(json.dumps(meta, sort_keys=True))}"
    )


# --- save ----------------------------------------------------------------------------------


def _slug(s: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", s).strip("_.")[:60] or "impl"


def stem_for(op: str, impl: str, prop: str, meta: dict, kind: str = "fail") -> str:
    """File stem of a repro: a readable prefix, a digest of (op, impl, property, meta) and a
    random part, so that two campaigns saving the same case into one folder never collide."""
    key = json.dumps([op, impl, prop, meta], sort_keys=True, default=repr)
    digest = hashlib.sha256(key.encode()).hexdigest()[:12]
    return f"{op}-{_slug(impl)}-{prop}-{kind}-{digest}-{secrets.token_hex(4)}"


def save(
    case,
    out_dir: str | os.PathLike = DEFAULT_DIR,
    *,
    impl: str,
    prop: str,
    kind: str = "fail",
    message: str = "",
    verdict=None,
    seed: int | None = None,
    extra: dict | None = None,
) -> Path:
    """Save `case` (a built `Case`) with the property it failed; returns the JSON path."""
    from safetensors.torch import save as st_save

    if kind not in KINDS:
        raise ReproError(f"save: kind: expected one of {KINDS}, got {kind!r}")
    tensors: dict[str, torch.Tensor] = {}
    names = {id(t): n for n, t in case.tensors().items()}
    args = [_encode(a, names.get(id(a), f"arg{i}"), tensors) for i, a in enumerate(case.args)]
    kwargs = {k: _encode(v, names.get(id(v), f"kw.{k}"), tensors) for k, v in case.kwargs.items()}
    entries = {}
    cpu = {}
    for n, t in tensors.items():
        entries[n] = {
            "dtype": str(t.dtype).replace("torch.", ""),
            "shape": list(t.shape),
            "stride": list(t.stride()),
        }
        cpu[n] = t.detach().to("cpu", copy=True).contiguous()
    blob = st_save(cpu, metadata={"format": FORMAT})
    out_dir = Path(out_dir)
    meta = json.loads(json.dumps(case.meta, default=repr))
    if verdict is not None:
        message = message or verdict.message
    for _attempt in range(8):  # a fresh random stem when a name is taken (never overwrite)
        stem = stem_for(case.op, impl, prop, case.meta, kind)
        tpath = out_dir / f"{stem}.safetensors"
        jpath = out_dir / f"{stem}.json"
        if tpath.exists() or jpath.exists() or tpath.is_symlink() or jpath.is_symlink():
            continue
        try:
            atomic_create(tpath, blob)
        except FileExistsError:
            continue
        call = (args, kwargs, entries)
        doc = _document(case, impl, prop, kind, message, verdict, seed, meta, call, blob)
        doc["tensors"]["file"] = tpath.name
        doc["replay"] = f"parity replay {jpath}" + (
            f" --impl {shlex.quote(impl)}" if ":" in impl else ""
        )
        if extra:
            doc["extra"] = jsonable(extra)
        text = json.dumps(doc, indent=1, sort_keys=False, allow_nan=False) + "\n"
        try:
            atomic_create(jpath, text.encode())
        except FileExistsError:
            with contextlib.suppress(OSError):  # the tensor file is ours: we just created it
                os.unlink(tpath)
            continue
        return jpath
    raise ReproError(f"save: no free file name in {out_dir} after 8 attempts")


def _document(case, impl, prop, kind, message, verdict, seed, meta, call, blob) -> dict:
    args, kwargs, entries = call
    return {
        "format": FORMAT,
        "version": VERSION,
        "op": case.op,
        "impl": impl,
        "property": prop,
        "device": str(case.device),
        "kind": kind,
        "message": message,
        "ratio": jsonable(getattr(verdict, "ratio", None)),
        "worst": jsonable(getattr(verdict, "worst", [])),
        "seed": seed,
        "meta": meta,
        "args": args,
        "kwargs": kwargs,
        "tensors": {"file": None, "sha256": hashlib.sha256(blob).hexdigest(), "entries": entries},
        "versions": versions(str(case.device)),
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "command": repro_command(case.op, impl, prop, str(case.device), meta),
    }


# --- load ----------------------------------------------------------------------------------


@dataclass
class Repro:
    path: Path
    op: str
    impl: str
    prop: str
    device: str
    kind: str
    message: str
    meta: dict
    seed: int | None
    ratio: Any
    worst: list
    versions: dict
    data: dict = field(repr=False)
    _tensors: dict = field(repr=False, default_factory=dict)

    def case(self, device: str | None = None):
        """The saved call as a `Case`, its tensors (from the file) moved to `device`
        (default: the device it was found on)."""
        from parity.properties.case import Case

        dev = device or self.device
        ts = {}
        for n, t in self._tensors.items():
            e = self.data["tensors"]["entries"][n]
            t = _restride(t, e.get("stride"))
            ts[n] = t.to(dev)
        args = tuple(_decode(a, f"args[{i}]", ts) for i, a in enumerate(self.data["args"]))
        kwargs = {k: _decode(v, f"kwargs.{k}", ts) for k, v in self.data["kwargs"].items()}
        return Case(self.op, args, kwargs, json.loads(json.dumps(self.meta)), str(dev))

    def command(self) -> str:
        return self.data.get("command", "")


def _restride(t: torch.Tensor, stride) -> torch.Tensor:
    """Give `t` the saved strides when they describe a dense non-overlapping layout."""
    if not isinstance(stride, list) or len(stride) != t.dim() or list(t.stride()) == stride:
        return t
    if t.numel() <= 1 or any(not isinstance(s, int) or s < 0 for s in stride):
        return t
    order = sorted(range(t.dim()), key=lambda d: stride[d])
    expect = 1
    for d in order:  # dense: the strides, sorted, are the running products of the sizes
        if t.shape[d] > 1 and stride[d] != expect:
            return t
        expect *= t.shape[d]
    out = torch.empty_strided(tuple(t.shape), tuple(stride), dtype=t.dtype)
    out.copy_(t)
    return out


def _resolve(path: str | os.PathLike) -> Path:
    p = Path(path)
    if p.is_dir() and not p.is_symlink():
        found = sorted(p.glob("*.json"))
        if len(found) != 1:
            raise _bad(p, f"a folder must hold exactly one repro .json, found {len(found)}")
        return found[0]
    if p.suffix == ".safetensors":
        p = p.with_suffix(".json")
    elif p.suffix != ".json" and not os.path.lexists(p):
        p = p.with_name(p.name + ".json")
    if not os.path.lexists(p):
        raise _bad(p, "no such repro file")
    return p


def _bad(p, why: str) -> ReproError:
    return ReproError(f"bad repro file: {p}: {why}")


# Limits checked before a byte is read (a repro is a user-supplied file: see safefile).
MAX_TENSOR_BYTES = 16 << 30  # what one repro may make parity read into memory
MAX_TENSORS = 1024  # a case has a handful of tensors
MAX_DIMS = 16
MAX_NAME = 256
# the safetensors header: 8 bytes of length, then JSON with one small object per tensor
# (name <= MAX_NAME, dtype, <= MAX_DIMS sizes, two offsets) and the metadata
_HEADER_FIXED = 4096
_HEADER_PER_TENSOR = MAX_NAME + 64 + 24 * MAX_DIMS + 64
_DEVICE_RE = re.compile(r"cpu|cuda(:\d{1,3})?")
_OPTIONAL = {"kind": str, "message": str, "versions": dict, "command": str, "created": str}


def _itemsize(dtype: torch.dtype) -> int:
    return torch.empty((), dtype=dtype).element_size()


def _check_doc(p: Path, doc: Any) -> None:
    """Types and limits of the JSON part; raises ReproError."""
    from parity.registry import OP_NAMES

    if not isinstance(doc, dict):
        raise _bad(p, f"expected a JSON object, got {type(doc).__name__}")
    for key, typ in _REQUIRED.items():
        if key not in doc:
            raise _bad(p, f"missing key {key!r}")
        if not isinstance(doc[key], typ) or (typ is int and isinstance(doc[key], bool)):
            raise _bad(p, f"key {key!r}: expected {typ.__name__}, got {type(doc[key]).__name__}")
    for key, typ in _OPTIONAL.items():
        if doc.get(key) is not None and not isinstance(doc[key], typ):
            raise _bad(p, f"key {key!r}: expected {typ.__name__}, got {type(doc[key]).__name__}")
    if doc["format"] != FORMAT:
        raise _bad(p, f"format {doc['format']!r} is not {FORMAT!r}")
    if doc["version"] != VERSION:
        raise _bad(p, f"format version {doc['version']} (this parity reads {VERSION})")
    if doc["op"] not in OP_NAMES:
        raise _bad(p, f"op {doc['op']!r} is not an op of the contract")
    if len(doc["impl"]) > MAX_NAME or len(doc["property"]) > MAX_NAME:
        raise _bad(p, f"impl or property longer than {MAX_NAME} characters")
    if not _DEVICE_RE.fullmatch(doc["device"]):
        raise _bad(p, f"device {doc['device']!r} is not cpu or cuda[:N]")
    if doc.get("kind", "fail") not in KINDS:
        raise _bad(p, f"kind {doc['kind']!r} is not one of {KINDS}")
    seed = doc.get("seed")
    if seed is not None and (not isinstance(seed, int) or isinstance(seed, bool)):
        raise _bad(p, "key 'seed': expected an integer or null")
    tinfo = doc["tensors"]
    fname, digest, entries = tinfo.get("file"), tinfo.get("sha256"), tinfo.get("entries")
    plain = isinstance(fname, str) and Path(fname).name == fname
    if not plain or fname in ("", ".", "..") or not fname.endswith(".safetensors"):
        raise _bad(p, f"tensors.file must be a plain .safetensors file name, got {fname!r}")
    if not isinstance(digest, str) or not re.fullmatch(r"[0-9a-f]{64}", digest):
        raise _bad(p, "tensors.sha256 must be 64 lowercase hex digits")
    if not isinstance(entries, dict):
        raise _bad(p, "tensors.entries must be an object")
    if len(entries) > MAX_TENSORS:
        raise _bad(p, f"{len(entries)} tensors, more than the {MAX_TENSORS} allowed")
    dtypes = _dtype_names()
    for n, e in entries.items():
        ok = (
            len(n) <= MAX_NAME
            and isinstance(e, dict)
            and e.get("dtype") in dtypes
            and isinstance(e.get("shape"), list)
            and len(e["shape"]) <= MAX_DIMS
            and all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in e["shape"])
        )
        if not ok:
            raise _bad(p, f"tensors.entries[{n[:80]!r}]: expected {{dtype, shape}}, got {e!r:.200}")


def _declared_bytes(p: Path, entries: dict) -> int:
    dtypes = _dtype_names()
    total = 0
    for e in entries.values():
        total += math.prod(e["shape"]) * _itemsize(dtypes[e["dtype"]])
        if total > MAX_TENSOR_BYTES:
            raise _bad(p, f"the tensors it declares exceed {MAX_TENSOR_BYTES} bytes")
    return total


def load(path: str | os.PathLike) -> Repro:
    """Read and verify a repro (JSON + safetensors); never executes code from the files, never
    imports what they name. Every limit is checked before reading: see `safefile`."""
    from safetensors.torch import load as st_load

    from parity.campaign.safefile import MAX_JSON, UnsafeFile, loads_json, read_bounded

    p = _resolve(path)
    try:
        doc = loads_json(read_bounded(p, limit=MAX_JSON), where=str(p))
    except UnsafeFile as e:
        raise ReproError(f"bad repro file: {e}") from e
    _check_doc(p, doc)
    tinfo = doc["tensors"]
    entries = tinfo["entries"]
    want = _declared_bytes(p, entries)
    tpath = p.parent / tinfo["file"]
    limit = want + _HEADER_FIXED + _HEADER_PER_TENSOR * len(entries)
    try:  # the tensor file: in the JSON's folder, no larger than the tensors it declares
        blob = read_bounded(tpath, limit=limit, folder=p.parent)
    except UnsafeFile as e:
        raise ReproError(f"bad repro file: {p}: tensor file: {e}") from e
    got = hashlib.sha256(blob).hexdigest()
    if got != tinfo["sha256"]:
        raise _bad(
            p,
            f"sha256 mismatch for {tpath.name}: file has {got[:16]}..., the JSON says "
            f"{tinfo['sha256'][:16]}... (modified or truncated)",
        )
    hlen = int.from_bytes(blob[:8], "little") if len(blob) >= 8 else -1
    if hlen < 0 or 8 + hlen > len(blob) or hlen > limit - want:
        raise _bad(p, f"{tpath.name} is not a valid safetensors file: header length {hlen}")
    try:
        tensors = st_load(blob)
    except Exception as e:  # any parse failure is a bad file
        raise _bad(p, f"{tpath.name} is not a valid safetensors file: {e}") from e
    if set(tensors) != set(entries):
        raise _bad(p, f"tensor names {sorted(tensors)} differ from the JSON's {sorted(entries)}")
    dtypes = _dtype_names()
    for n, t in tensors.items():
        e = entries[n]
        if dtypes[e["dtype"]] != t.dtype or list(t.shape) != e["shape"]:
            raise _bad(
                p,
                f"tensor {n!r} is {t.dtype}{list(t.shape)}, the JSON says {e['dtype']}{e['shape']}",
            )
    repro = Repro(
        path=p,
        op=doc["op"],
        impl=doc["impl"],
        prop=doc["property"],
        device=doc["device"],
        kind=doc.get("kind") or "fail",
        message=doc.get("message") or "",
        meta=doc["meta"],
        seed=doc.get("seed"),
        ratio=doc.get("ratio"),
        worst=doc.get("worst") or [],
        versions=doc.get("versions") or {},
        data=doc,
        _tensors=tensors,
    )
    try:  # decode args/kwargs now: a dangling tensor reference fails at load
        repro.case("cpu")
    except ReproError as e:
        raise _bad(p, str(e)) from e
    except (TypeError, ValueError, RuntimeError, KeyError, IndexError) as e:
        raise _bad(p, f"the call cannot be rebuilt: {type(e).__name__}: {e}") from e
    return repro


__all__ = [
    "DEFAULT_DIR",
    "FORMAT",
    "VERSION",
    "Repro",
    "ReproError",
    "atomic_create",
    "atomic_write",
    "load",
    "save",
    "stem_for",
    "versions",
]
