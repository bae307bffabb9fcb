"""What the commands share: the default device, resolving an op and an implementation, usage
errors (exit 2), the options of every campaign command, and printing."""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
import sys

from parity._gpu import default_device

__all__ = ["default_device"]  # re-exported for the commands


def usage_error(cmd: str, msg: str) -> int:
    print(f"parity {cmd}: error: {msg}", file=sys.stderr)
    return 2


def add_sys_path_cwd() -> None:
    """`module:function` implementations import from the current folder, as with python -m."""
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())


def resolve(cmd: str, op: str, impl_name: str, device: str | None, *, isolate: bool = True):
    """(spec, impl, device) or an exit code: 2 usage error, 3 unavailable here. The harness
    never imports a `module:function`: by default it is only named (`candidate.lookup`; the
    worker imports it), `isolate=False` imports it here (`candidate.import_in_process`). See
    `parity.campaign.candidate.resolve`."""
    from parity.campaign.candidate import resolve as _resolve

    return _resolve(cmd, op, impl_name, device, isolate=isolate)


def bad_numbers(cmd: str, checks) -> int | None:
    """Exit 2 for an option that is NaN, infinite or out of range: (name, value, lo) with lo 1
    meaning ">= 1" (counts) and 0 meaning "> 0" (seconds); None values are unset."""
    for name, val, lo in checks:
        if val is None:
            continue
        if val != val or val in (math.inf, -math.inf) or val < lo or (lo == 0 and val <= 0):
            want = ">= 1" if lo else "> 0"
            return usage_error(cmd, f"{name} must be finite and {want}, got {val}")
    return None


def read_meta(cmd: str, text: str) -> dict | int:
    """A `--meta` value: JSON, or `@FILE` read with the limits of `parity.campaign.safefile`
    (a regular file in its folder, at most 1 MiB, nesting bounded: a FIFO, a device or a huge
    file is a usage error, never a hang). The description as a dict, or exit code 2."""
    from parity.campaign.safefile import MAX_JSON, UnsafeFile, loads_json, read_bounded

    try:
        if text.startswith("@"):
            meta = loads_json(read_bounded(text[1:], limit=MAX_JSON), where=text[1:])
        else:
            meta = loads_json(text.encode("utf-8", "surrogateescape"), where="--meta")
    except (UnsafeFile, UnicodeError) as e:
        return usage_error(cmd, f"--meta: bad file or JSON: {e}")
    if not isinstance(meta, dict):
        return usage_error(cmd, f"--meta: expected a JSON object, got {type(meta).__name__}")
    return meta


def add_common(p) -> None:
    """--op, --impl, --device, --timeout, --no-isolate (fuzz and case)."""
    p.add_argument("--op", required=True)
    p.add_argument("--impl", required=True, help='registered name, "reference" or module:fn')
    p.add_argument("--device", choices=["cpu", "cuda"], default=None)
    p.add_argument("--timeout", type=float, default=60.0, help="seconds per case (hang)")
    p.add_argument("--no-isolate", action="store_true", help="run the kernel in-process")


def add_accept(p) -> None:
    """--accept NAME (repeatable): a named variant of the op the kernel follows on purpose."""
    p.add_argument(
        "--accept",
        action="append",
        default=[],
        metavar="NAME",
        help="judge under this named variant of the op (repeatable; `parity list` names them)",
    )


def accepted(cmd: str, spec, names) -> tuple | int:
    """The --accept names as the op's variants (declaration order), or exit 2 listing them."""
    from parity.properties.variants import names as variant_names
    from parity.properties.variants import validate

    try:
        chosen = validate(spec, list(names or ()))
    except ValueError as e:
        return usage_error(cmd, f"--accept: {e}")
    return tuple(n for n in variant_names(spec) if n in chosen)


_JSON_BUF: io.StringIO | None = None


@contextlib.contextmanager
def json_stdout():
    """A `--json` command's stdout is its JSON alone: whatever else is written to stdout
    meanwhile (a kernel's prints, a library's log: TileLang logs its compiles there, which made
    the H100 bench's JSON files unreadable on 2026-12-06) goes to stderr, at the descriptor too.
    The JSON, written to `json_out()`, is printed to stdout once the command ends."""
    global _JSON_BUF
    from parity.campaign.engine import stdout_to_stderr

    _JSON_BUF = buf = io.StringIO()
    try:
        with stdout_to_stderr():
            yield
    finally:
        _JSON_BUF = None
        sys.stdout.write(buf.getvalue())
        sys.stdout.flush()


def json_out():
    """Where a command writes its JSON: kept for stdout under `json_stdout`, else stdout."""
    return _JSON_BUF if _JSON_BUF is not None else sys.stdout


def print_json(doc) -> None:
    from parity.campaign.wire import jsonable

    print(json.dumps(jsonable(doc), indent=1), file=json_out())


def unknown_properties(cmd: str, spec, props) -> int | None:
    unknown = [p for p in props if p not in spec.all_properties()]
    if not unknown:
        return None
    return usage_error(
        cmd,
        f"unknown propert{'y' if len(unknown) == 1 else 'ies'} {', '.join(unknown)} for "
        f"{spec.name}; properties: {', '.join(spec.all_properties())}",
    )


def draw_metas(strategy, count: int, *, seed: int = 0) -> list[dict]:
    """`count` distinct case descriptions drawn from `strategy`, the same for the same seed and
    count (Hypothesis adapts its generation to the number of examples).

    A seeded `@given` run (generate phase only, no database) collects what Hypothesis draws:
    unlike `strategy.example()`, this is deterministic and starts from the simple edge cases
    (T = 0, smallest sizes) before spreading out."""
    import hypothesis
    from hypothesis import HealthCheck, Phase, given, settings

    metas: list[dict] = []
    seen: set[str] = set()

    @settings(
        max_examples=max(4 * count, count + 20),
        database=None,
        derandomize=False,
        deadline=None,
        phases=[Phase.generate],
        suppress_health_check=list(HealthCheck),
        print_blob=False,
    )
    @hypothesis.seed(seed)
    @given(strategy)
    def collect(meta):
        if len(metas) >= count:
            return
        key = json.dumps(meta, sort_keys=True, default=repr)
        if key not in seen:
            seen.add(key)
            metas.append(json.loads(json.dumps(meta, default=repr)))

    collect()
    return metas
