"""`parity report --op OP [--impl IMPL ...] [--device D] [--examples N] [--out DIR]`.

Error distributions of implementations against the float64 oracle (the reference inside
`precision("float64", round_output=False)`), per op, output, implementation and dtype, over N
cases drawn deterministically from the op's strategy:

- relative error |got - want| / |want| (|want| floored at the smallest normal of the output
  dtype) and ulp error |got - want| / ulp_dtype(want), over the elements where both are finite;
- as PNG histograms (matplotlib, Agg backend), one per (op, output, dtype), implementations
  overlaid, and one self-contained HTML page (PNGs embedded as base64 data URIs, a table of
  summary statistics, the op's tolerance model, tolerance verdicts per implementation).

Integer and packed outputs have no error scale: their mismatch fraction is in the table.
Exit 0 the report was written, 1 nothing could be measured, 2 usage.
"""

from __future__ import annotations

import base64
import datetime as _dt
import html
import sys
from dataclasses import dataclass, field
from pathlib import Path

from parity.properties.case import ulp as ulp_of
from parity.tools.common import default_device, draw_metas

SAMPLE_CAP = 200_000  # elements kept per (op, output, dtype, impl) for the histograms
FLOOR = {"rel": 1e-12, "ulp": 1e-4}  # zero errors are drawn in the lowest bin


def add_parser(sub):
    p = sub.add_parser("report", help="error distributions vs the float64 oracle (PNG + HTML)")
    p.add_argument("--op", action="append", required=True, help="repeatable")
    p.add_argument(
        "--impl",
        action="append",
        default=[],
        help="repeatable (default: the reference and every registered impl); a module:function "
        "is imported and run in this process (report measures errors, it judges nothing)",
    )
    p.add_argument("--device", choices=["cpu", "cuda"], default=None)
    p.add_argument("--examples", type=int, default=20)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--size", choices=["small", "full"], default=None)
    p.add_argument("--out", default="parity-report", metavar="DIR")
    return p


@dataclass
class Group:
    """Errors of one (op, output, dtype, impl)."""

    cases: int = 0
    elements: int = 0
    nonfinite_mismatch: int = 0
    mismatches: int = 0  # integer/packed outputs: elements that differ
    rel: list = field(default_factory=list)
    ulp: list = field(default_factory=list)
    float_out: bool = True


@dataclass
class ImplTally:
    passed: int = 0
    failed: int = 0
    unsupported: int = 0
    raised: int = 0
    skipped_dtype: int = 0
    first_failure: str = ""


def _errors(got, want, group: Group, gen) -> None:
    import torch

    group.elements += want.numel()
    float_like = got.is_floating_point() or got.dtype == torch.float8_e4m3fn
    if not float_like or not (want.is_floating_point() or want.dtype == torch.float8_e4m3fn):
        group.float_out = False
        if got.shape == want.shape:
            group.mismatches += int((got.to(torch.int64) != want.to(torch.int64)).sum())
        else:
            group.mismatches += want.numel()
        return
    g = got.to(torch.float64).reshape(-1)
    w = want.to(torch.float64).reshape(-1)
    both = torch.isfinite(g) & torch.isfinite(w)
    same_special = (torch.isnan(g) & torch.isnan(w)) | ((g == w) & ~torch.isfinite(w))
    group.nonfinite_mismatch += int((~both & ~same_special).sum())
    g, w = g[both], w[both]
    if g.numel() > SAMPLE_CAP // 4:  # keep the histogram memory bounded, deterministically
        idx = torch.randperm(g.numel(), generator=gen)[: SAMPLE_CAP // 4]
        g, w = g[idx.to(g.device)], w[idx.to(w.device)]
    err = (g - w).abs()
    tiny = torch.finfo(got.dtype).tiny
    group.rel.append((err / w.abs().clamp_min(tiny)).cpu())
    group.ulp.append((err / ulp_of(w, got.dtype)).cpu())


def _stats(t) -> dict:
    import torch

    if t is None or t.numel() == 0:
        return {
            "max": float("nan"),
            "p99": float("nan"),
            "median": float("nan"),
            "mean": float("nan"),
        }
    t = t.to(torch.float64)
    q = torch.quantile(t, torch.tensor([0.5, 0.99], dtype=torch.float64))
    return {
        "max": float(t.max()),
        "p99": float(q[1]),
        "median": float(q[0]),
        "mean": float(t.mean()),
    }


def _cat(parts):
    import torch

    parts = [p for p in parts if p.numel()]
    if not parts:
        return None
    t = torch.cat(parts)
    if t.numel() > SAMPLE_CAP:
        t = t[torch.randperm(t.numel(), generator=torch.Generator().manual_seed(0))[:SAMPLE_CAP]]
    return t


def measure(spec, impl_list, device: str, n: int, seed: int, size: str):
    """({(output, dtype): {impl: Group}}, {impl: ImplTally}) over n drawn cases."""
    import torch

    from parity import reference as ref
    from parity.properties.case import as_tuple, dtype_name
    from parity.properties.checks import ImplRaised, UnsupportedCase, call_impl, canonical

    metas = draw_metas(spec.strategy(size=size, dtypes=None), n, seed=seed)
    groups: dict = {}
    tallies = {impl.name: ImplTally() for impl in impl_list}
    gen = torch.Generator().manual_seed(seed)
    for meta in metas:
        case = spec.build(meta, device)
        c = case.clone()
        with ref.precision("float64", round_output=False):
            oracle = as_tuple(spec.reference(*c.args, **c.kwargs))
        oracle = canonical(spec, case, oracle)
        for impl in impl_list:
            tally = tallies[impl.name]
            if (
                impl.dtypes is not None
                and "dtype" in meta
                and all(dtype_name(d) != meta["dtype"] for d in impl.dtypes)
            ):
                tally.skipped_dtype += 1
                continue
            try:
                outs = call_impl(impl.fn, case)
            except UnsupportedCase:
                tally.unsupported += 1
                continue
            except ImplRaised as e:
                tally.raised += 1
                tally.first_failure = tally.first_failure or f"raised {e}"
                continue
            v = spec.compare(case, outs)
            if v:
                tally.passed += 1
            else:
                tally.failed += 1
                tally.first_failure = tally.first_failure or v.message
            outs = canonical(spec, case, outs)
            for i, (o, w) in enumerate(zip(outs, oracle)):
                if not isinstance(o, torch.Tensor) or not isinstance(w, torch.Tensor):
                    continue
                label = meta.get("dtype") or dtype_name(o.dtype)
                g = groups.setdefault((f"out{i}", label), {}).setdefault(impl.name, Group())
                g.cases += 1
                if o.shape != w.shape:
                    g.float_out = g.float_out and o.is_floating_point()
                    g.mismatches += w.numel()
                    g.elements += w.numel()
                    continue
                _errors(o, w, g, gen)
    return groups, tallies


def has_matplotlib() -> bool:
    try:
        import matplotlib  # noqa: F401
    except ImportError:  # also a module blocked with sys.modules["matplotlib"] = None
        return False
    return True


def _png(path: Path, title: str, per_impl: dict) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    fig, axes = plt.subplots(1, 2, figsize=(11, 3.6))
    for ax, kind, xlabel in (
        (axes[0], "rel", "log10 relative error (leftmost bin: exact)"),
        (axes[1], "ulp", "log10 error in ulps of the output dtype (leftmost bin: exact)"),
    ):
        data = {}
        for name, (rel, ulp) in per_impl.items():
            t = rel if kind == "rel" else ulp
            if t is not None and t.numel():
                data[name] = np.log10(np.maximum(t.numpy(), FLOOR[kind]))
        if data:
            lo = min(float(d.min()) for d in data.values())
            hi = max(float(d.max()) for d in data.values())
            bins = np.linspace(lo, hi if hi > lo else lo + 1.0, 60)
            for name, d in data.items():
                ax.hist(
                    d,
                    bins=bins,
                    histtype="step",
                    linewidth=1.5,
                    label=name,
                    weights=np.full(d.shape, 1.0 / d.size),
                )
            if kind == "ulp":
                ax.axvline(0.0, color="gray", linestyle=":", linewidth=1)  # 1 ulp
            ax.legend(fontsize=8)
        ax.set_xlabel(xlabel)
        ax.set_ylabel("fraction of elements")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path.read_bytes()


def _fmt(x: float) -> str:
    if x != x:
        return "-"
    return f"{x:.3g}"


def run(args) -> int:
    import torch

    from parity.campaign.candidate import CandidateFailed, ImportUsage, import_in_process, lookup
    from parity.catalog import get_impl, get_spec, impls

    if args.examples < 1:
        print("parity report: --examples must be >= 1", file=sys.stderr)
        return 2
    if not has_matplotlib():  # before any work: the histograms need it
        print(
            "parity report: needs matplotlib, which is not installed: pip install 'parity[report]'",
            file=sys.stderr,
        )
        return 2
    device = default_device(args.device)
    size = args.size or ("small" if device == "cpu" else "full")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    sections, rows_all, not_run = [], [], []
    for op in args.op:
        try:
            spec = get_spec(op)
            if args.impl:
                # report runs the kernel here to plot its errors: a module:function is imported
                # and run in this process (the one command besides bench that does)
                chosen = [
                    import_in_process(lookup(op, n)) if ":" in n else get_impl(op, n)
                    for n in args.impl
                ]
            else:
                chosen = impls(op, include_reference=True)
        except (KeyError, ImportError, AttributeError, TypeError, ImportUsage) as e:
            print(f"parity report: {e}", file=sys.stderr)
            return 2
        except CandidateFailed as e:  # its import exited or crashed: the candidate's failure
            print(f"parity report: {e}", file=sys.stderr)
            return 1
        usable = []
        for impl in chosen:
            ok, why = impl.availability(device)
            if ok:
                usable.append(impl)
            else:
                not_run.append(f"{impl.key} on {device}: {why}")
        if not usable:
            continue
        print(
            f"parity report: {op}: {', '.join(i.name for i in usable)} on {device}, "
            f"{args.examples} cases"
        )
        groups, tallies = measure(spec, usable, device, args.examples, args.seed, size)
        images, rows = [], []
        for (oname, dtype), per_impl in sorted(groups.items()):
            cat = {name: (_cat(g.rel), _cat(g.ulp)) for name, g in per_impl.items()}
            for name, g in per_impl.items():
                rel, ulp = cat[name]
                rs, us = _stats(rel), _stats(ulp)
                rows.append(
                    {
                        "op": op,
                        "impl": name,
                        "output": oname,
                        "dtype": dtype,
                        "cases": g.cases,
                        "elements": g.elements,
                        "rel_max": rs["max"],
                        "rel_p99": rs["p99"],
                        "rel_median": rs["median"],
                        "ulp_max": us["max"],
                        "ulp_p99": us["p99"],
                        "ulp_mean": us["mean"],
                        "nonfinite_mismatch": g.nonfinite_mismatch,
                        "mismatch_frac": (g.mismatches / g.elements)
                        if not g.float_out and g.elements
                        else float("nan"),
                    }
                )
            if any(g.float_out for g in per_impl.values()) and any(
                r is not None for r, _ in cat.values()
            ):
                fname = f"{op}-{oname}-{dtype}.png"
                png = _png(out / fname, f"{op} {oname} ({dtype}) vs float64 oracle", cat)
                images.append((fname, png))
        rows_all += rows
        sections.append(_section(spec, tallies, rows, images))
    if not sections:
        print("parity report: no implementation could run: " + "; ".join(not_run), file=sys.stderr)
        return 1
    page = _page(sections, device, args, not_run, torch.__version__)
    (out / "index.html").write_text(page, encoding="utf-8")
    print(f"parity report: {out / 'index.html'} ({sum(len(s[1]) for s in sections)} images)")
    return 0


_COLS = [
    ("impl", "impl"),
    ("output", "output"),
    ("dtype", "dtype"),
    ("cases", "cases"),
    ("elements", "elements"),
    ("rel_max", "max rel"),
    ("rel_p99", "p99 rel"),
    ("rel_median", "median rel"),
    ("ulp_max", "max ulp"),
    ("ulp_p99", "p99 ulp"),
    ("ulp_mean", "mean ulp"),
    ("nonfinite_mismatch", "NaN/inf mismatches"),
    ("mismatch_frac", "mismatch (int)"),
]


def _section(spec, tallies, rows, images) -> tuple[str, list]:
    e = html.escape
    parts = [
        f"<h2 id='{e(spec.name)}'>{e(spec.name)}</h2>",
        f"<p class='tol'>Tolerance model: {e(spec.tolerance)}</p>",
        *_tolerance_numbers(spec, sorted({r["dtype"] for r in rows})),
        "<table><tr><th>impl</th><th>within tolerance</th><th>out of tolerance</th>"
        "<th>unsupported</th><th>raised</th><th>first failure</th></tr>",
    ]
    for name, t in tallies.items():
        parts.append(
            f"<tr><td>{e(name)}</td><td>{t.passed}</td><td>{t.failed}</td>"
            f"<td>{t.unsupported}</td><td>{t.raised}</td>"
            f"<td class='msg'>{e(t.first_failure[:300])}</td></tr>"
        )
    parts.append("</table><h3>errors against the float64 oracle</h3><table><tr>")
    parts += [f"<th>{e(h)}</th>" for _, h in _COLS]
    parts.append("</tr>")
    for r in rows:
        cells = []
        for k, _ in _COLS:
            v = r[k]
            cells.append(f"<td>{e(_fmt(v) if isinstance(v, float) else str(v))}</td>")
        parts.append("<tr>" + "".join(cells) + "</tr>")
    parts.append("</table>")
    for fname, png in images:
        b64 = base64.b64encode(png).decode("ascii")
        parts.append(
            f"<figure><img alt='{e(fname)}' src='data:image/png;base64,{b64}'>"
            f"<figcaption>{e(fname)}</figcaption></figure>"
        )
    return "\n".join(parts), images


def _tolerance_numbers(spec, dtypes) -> list[str]:
    """The tolerance model's numbers (`parity explain`) for the input dtypes measured."""
    from parity.tools.explain_cmd import DTYPES, MODELS, parse_sizes, rows_for

    model = MODELS.get(spec.name)
    if model is None:
        return []
    e = html.escape
    sizes = parse_sizes(spec.name, model, [])
    parts = []
    for dt in [d for d in dtypes if d in DTYPES] or ["bfloat16"]:
        rows = rows_for(spec, model, dt, sizes)
        if not rows:
            continue
        size_txt = ", ".join(f"{n} = {v}" for n, v in sizes.items() if v) or "no size term"
        parts.append(
            f"<details class='tol'><summary>tolerance numbers for {e(dt)} ({e(size_txt)}; "
            f"<code>parity explain {e(spec.name)} --dtype {e(dt)}</code>)</summary>"
            "<table><tr><th>quantity</th><th>value</th><th>why</th></tr>"
            + "".join(
                f"<tr><td class='msg'>{e(str(q))}</td><td>{e(str(v))}</td>"
                f"<td class='msg'>{e(str(n))}</td></tr>"
                for q, v, n in rows
            )
            + "</table></details>"
        )
    return parts


def _page(sections, device, args, not_run, torch_version) -> str:
    e = html.escape
    when = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    ops = ", ".join(args.op)
    head = (
        "<!doctype html><html><head><meta charset='utf-8'>"
        f"<title>parity report: {e(ops)}</title><style>"
        "body{font-family:sans-serif;margin:2em;max-width:1200px}"
        "table{border-collapse:collapse;margin:1em 0;font-size:13px}"
        "td,th{border:1px solid #bbb;padding:3px 7px;text-align:right}"
        "th{background:#eee}td.msg{text-align:left;max-width:480px}"
        "figure{margin:1em 0}img{max-width:100%}.tol{color:#444}"
        "</style></head><body>"
        f"<h1>parity report: {e(ops)}</h1>"
        f"<p>device {e(device)}, {args.examples} cases per op (seed {args.seed}), "
        f"torch {e(torch_version)}, {e(when)}. Errors are measured against the reference "
        "computed in float64 without output rounding.</p>"
    )
    body = "\n".join(s for s, _ in sections)
    tail = ""
    if not_run:
        tail = "<h2>not run</h2><ul>" + "".join(f"<li>{e(x)}</li>" for x in not_run) + "</ul>"
    return head + body + tail + "</body></html>\n"
