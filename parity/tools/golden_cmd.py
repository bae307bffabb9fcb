"""`parity golden --op OP [--impl reference] --out DIR [--count N] [--device D] [--seed S]`.

Records N fixed cases of an op with the outputs of a trusted implementation (the reference by
default), for `parity check --golden DIR` to replay at every commit of a bisect. The cases are
drawn from the op's Hypothesis strategy with a fixed seed (the same seed, count and strategy
give the same cases), built on the device, and stored as repro files (`parity.campaign.repro`:
inputs as safetensors + JSON) so a replay never regenerates tensors: the golden stays valid
across devices, torch versions and changes of the strategy.

Layout of DIR:
    golden.json                      manifest (format "parity-golden", version 1): op, impl,
                                     seed, device, tolerance, versions, and per case the repro
                                     file, the outputs file and its sha256
    golden-<op>-<NNN>-<digest>.json  golden case NNN: its inputs, as a repro file
      and .safetensors               (`parity replay` reads it)
    golden-<op>-<NNN>-<digest>.out.safetensors   its recorded outputs, named out0, out1, ...

The recorded outputs must pass the op's tolerance model: a golden from a fast path that is out
of tolerance is refused; a case where the reference fails its own tolerance model (an OpSpec
bug) is left out with a warning and replaced by the next draw. Exit 0 written, 1 the
implementation raised or was out of tolerance, or no case could be recorded, 2 usage (unknown
op or implementation, bad count, unavailable here).
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import sys
from pathlib import Path

MANIFEST = "golden.json"
FORMAT = "parity-golden"
VERSION = 1


def add_parser(sub):
    p = sub.add_parser("golden", help="record fixed cases with reference outputs")
    p.add_argument("--op", required=True)
    p.add_argument("--impl", default="reference", help="whose outputs to record")
    p.add_argument("--out", required=True, metavar="DIR")
    p.add_argument("--count", type=int, default=16)
    p.add_argument(
        "--device",
        choices=["cpu", "cuda"],
        default=None,
        help="default: cuda when a GPU is visible, else cpu",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--size",
        choices=["small", "full"],
        default=None,
        help="strategy size (default: small on cpu, full on cuda)",
    )
    return p


# --- shared with check, report and bench --------------------------------------------------


def output_tensors(outs) -> dict:
    """Outputs as named CPU tensors (out0, out1, ...) for a safetensors file."""
    import torch

    named = {}
    for i, o in enumerate(outs):
        if not isinstance(o, torch.Tensor):
            raise TypeError(f"output {i} is a {type(o).__name__}, not a tensor")
        named[f"out{i}"] = o.detach().to("cpu", copy=True).contiguous()
    return named


def golden_stem(op: str, index: int, meta: dict) -> str:
    """File stem of golden case `index`: says what it is (not "fail", as a failure's repro)."""
    key = json.dumps([op, meta], sort_keys=True, default=repr)
    return f"golden-{op}-{index:03d}-{hashlib.sha256(key.encode()).hexdigest()[:12]}"


def save_golden_case(case, out: Path, op: str, index: int, **kw) -> Path:
    """A repro file of the case's inputs, named and described as golden case `index`.

    `repro.save` names a file after the failure it records; it is saved in a private folder
    and moved here under the golden name, its JSON pointing at the renamed tensors."""
    import shutil
    import tempfile

    from parity.campaign import repro

    stem = golden_stem(op, index, case.meta)
    tmp = Path(tempfile.mkdtemp(prefix=".golden-", dir=out))
    try:
        saved = repro.save(case, tmp, prop="matches_reference", **kw)
        doc = json.loads(saved.read_text())
        tname = f"{stem}.safetensors"
        jpath = out / f"{stem}.json"
        Path(tmp / doc["tensors"]["file"]).replace(out / tname)
        doc["tensors"]["file"] = tname
        doc["replay"] = f"parity replay {jpath}"
        repro.atomic_write(jpath, (json.dumps(doc, indent=1, allow_nan=False) + "\n").encode())
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return jpath


# --- the command ---------------------------------------------------------------------------


def run(args) -> int:
    from safetensors.torch import save as st_save

    from parity.campaign import repro, strategy_for
    from parity.catalog import get_impl, get_spec
    from parity.properties.case import as_tuple
    from parity.properties.checks import call_kernel
    from parity.tools.common import default_device, draw_metas

    if args.count < 1:
        print("parity golden: --count must be >= 1", file=sys.stderr)
        return 2
    try:
        spec = get_spec(args.op)
        impl = get_impl(args.op, args.impl)
    except (KeyError, ImportError, AttributeError, TypeError) as e:
        print(f"parity golden: {e}", file=sys.stderr)
        return 2
    device = default_device(args.device)
    ok, why = impl.availability(device)
    if not ok:
        print(f"parity golden: {impl.key} cannot run on {device}: {why}", file=sys.stderr)
        return 2
    size = args.size or ("small" if device == "cpu" else "full")
    # extra draws replace cases the reference itself fails (see below)
    metas = draw_metas(
        strategy_for(spec, "matches_reference", size=size, dtypes=impl.dtypes),
        2 * args.count + 8,
        seed=args.seed,
    )
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    entries = []
    skipped = 0
    for meta in metas:
        if len(entries) == args.count:
            break
        i = len(entries)
        case = spec.build(meta, device)
        try:
            c = case.clone()  # prepare (if declared), then the kernel, on a private copy
            outs = as_tuple(call_kernel(impl.fn, c.args, c.kwargs, getattr(impl, "prepare", None)))
        except Exception as e:  # a golden must come from a working impl
            print(
                f"parity golden: {impl.key} raised on {meta}: {type(e).__name__}: {e}",
                file=sys.stderr,
            )
            return 1
        v = spec.compare(case, outs)
        if not v and impl.reference:
            # the reference out of its own tolerance model is a bug of the OpSpec or the
            # reference: such a case could never judge an implementation, so it is left out
            skipped += 1
            print(
                f"parity golden: warning: the reference fails its own tolerance model on "
                f"{json.dumps(meta, sort_keys=True)}: {v.message}; case left out",
                file=sys.stderr,
            )
            continue
        if not v:  # check would refuse such a golden (exit 125) at every commit
            print(
                f"parity golden: {impl.key} is out of tolerance on {meta}: {v.message}; "
                f"not recording it",
                file=sys.stderr,
            )
            return 1
        jpath = save_golden_case(
            case,
            out,
            spec.name,
            i,
            impl=impl.name,
            message=f"golden case {i} of {args.count} ({impl.key}, seed {args.seed})",
            seed=args.seed,
            extra={"golden": {"index": i, "count": args.count}},
        )
        named = output_tensors(outs)
        blob = st_save(named, metadata={"format": FORMAT})
        opath = jpath.with_name(jpath.name[: -len(".json")] + ".out.safetensors")
        repro.atomic_write(opath, blob)
        entries.append(
            {
                "repro": jpath.name,
                "outputs": opath.name,
                "outputs_sha256": hashlib.sha256(blob).hexdigest(),
                "outputs_entries": [
                    {"name": n, "dtype": str(t.dtype).replace("torch.", ""), "shape": list(t.shape)}
                    for n, t in named.items()
                ],
                "meta": meta,
            }
        )
        print(f"  golden case {i:3d}: {case.describe()}  ({jpath.name})")
    manifest = {
        "format": FORMAT,
        "version": VERSION,
        "op": spec.name,
        "impl": impl.name,
        "seed": args.seed,
        "size": size,
        "device": device,
        "tolerance": spec.tolerance,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "versions": repro.versions(device),
        "cases": entries,
    }
    if len(entries) < args.count:
        print(
            f"parity golden: only {len(entries)} of {args.count} cases could be recorded "
            f"({skipped} left out)",
            file=sys.stderr,
        )
        if not entries:
            return 1
    text = json.dumps(manifest, indent=1, allow_nan=False) + "\n"
    repro.atomic_write(out / MANIFEST, text.encode())
    print(
        f"parity golden: {len(entries)} {spec.name} cases from {impl.key} on {device} "
        f"-> {out / MANIFEST}"
    )
    return 0


# --- reading a golden folder (used by check) ----------------------------------------------


class GoldenError(ValueError):
    """A golden folder that is missing, malformed or does not match its files."""


def load_golden(folder, device: str):
    """(manifest, [(case, stored_outputs, meta)]) from a golden folder; raises GoldenError."""
    from safetensors.torch import load as st_load

    from parity.campaign import repro
    from parity.properties.case import DTYPES

    folder = Path(folder)
    mpath = folder / MANIFEST
    try:
        manifest = json.loads(mpath.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise GoldenError(f"{mpath}: cannot read the golden manifest: {e}") from e
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise GoldenError(f"{mpath}: not a {FORMAT} manifest")
    if manifest.get("version") != VERSION:
        raise GoldenError(f"{mpath}: version {manifest.get('version')!r}, this reads {VERSION}")
    cases = manifest.get("cases")
    if not isinstance(cases, list) or not cases:
        raise GoldenError(f"{mpath}: no cases")
    loaded = []
    for i, e in enumerate(cases):
        try:
            r = repro.load(folder / e["repro"])
            opath = folder / e["outputs"]
            if Path(e["outputs"]).name != e["outputs"]:
                raise GoldenError(f"case {i}: outputs must be a plain file name")
            blob = opath.read_bytes()
            if hashlib.sha256(blob).hexdigest() != e["outputs_sha256"]:
                raise GoldenError(f"case {i}: {opath.name}: sha256 mismatch (modified?)")
            tensors = st_load(blob)
            outs = []
            for oe in e["outputs_entries"]:
                t = tensors[oe["name"]]
                if t.dtype != DTYPES[oe["dtype"]] or list(t.shape) != oe["shape"]:
                    raise GoldenError(f"case {i}: output {oe['name']} does not match the manifest")
                outs.append(t.to(device))
            if len(tensors) != len(outs):
                raise GoldenError(f"case {i}: {opath.name} holds unlisted tensors")
        except GoldenError:
            raise
        except (KeyError, TypeError, OSError, ValueError) as err:  # ReproError is a ValueError
            raise GoldenError(f"{mpath}: case {i}: {type(err).__name__}: {err}") from err
        if r.op != manifest.get("op"):
            raise GoldenError(f"case {i}: op {r.op!r} differs from the manifest's")
        loaded.append((r.case(device), tuple(outs), r.meta, r.path))
    return manifest, loaded
