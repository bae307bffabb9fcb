"""The known-failure ledger: failures that are tracked in an issue, reported as "xfail".

A ledger file (JSON or TOML; `--ledger FILE`, default `parity-ledger.json` in the current
folder when it exists) lists entries:

    JSON: {"entries": [ {...}, ... ]}   (or a bare list of entries)
    TOML: [[entry]] tables              (or [[entries]] / [[known_failure]])

    op        = "swiglu"                 # required
    impl      = "triton"                 # required; "*" for every implementation
    property  = "matches_reference"      # or "*" (default "*")
    when      = {dtype = "bfloat16", "options.layout" = "interleaved"}
                                         # meta fields that must all match (default {}: any
                                         # case). A dotted key is a path into the meta; a
                                         # dict value matches a nested dict as a subset.
    reason    = "flashinfer-ai/flashinfer#1234: fp16 tail tile not written"
                                         # required; MUST cite an issue: owner/repo#N, #N or
                                         # an https://.../issues/N or /pull/N URL

A bad entry (missing keys, wrong types, a reason without an issue reference, a property that
the op does not have, an implementation that is not "*", "reference", registered for the op or
of the form module:function) raises `ValueError` at load, naming the file and the entry. The
file is read with the limits of `parity.campaign.safefile` (a regular file, at most 1 MiB,
nesting bounded): a hostile one is "bad ledger file: why", never a hang or a traceback.

Semantics (for `parity fuzz` and `parity check`): a known failure still runs. A failing case
(fail, crash or hang) that an entry matches is counted as "xfail" and does not make the run fail;
for Hypothesis it is a pass, so the campaign goes on. An entry that matched at least one case
and none of whose matched cases failed is an unexpected pass ("XPASS: ledger entry ... passed"):
the run fails (exit 1) so the entry gets removed once the issue is fixed.

Public API:

    Ledger.load(path) -> Ledger         # ValueError on a bad file or entry
    load_ledger(path=None) -> Ledger     # path, else ./parity-ledger.json if present (with a
                                         # notice on stderr: never silently), else empty
    ledger.match(op, impl, prop, meta) -> Entry | None
    ledger.record(entry, failed: bool)  # count one matched case's outcome
    ledger.xpasses(op=None, impl=None) -> list[str]   # "XPASS: ledger entry ... passed" lines
    ledger.unmatched(op=None, impl=None) -> list[str] # entries that matched no case (a note)
    ledger.summary() -> list[dict]      # per entry: matched, xfailed, passed
    Entry fields: op, impl, property, when, reason, index; Entry.describe()
    ISSUE_RE                             # the issue-reference pattern
"""

from __future__ import annotations

import json
import os
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

DEFAULT_FILE = "parity-ledger.json"
ISSUE_RE = re.compile(
    r"(?:(?<![\w/])[\w.-]+/[\w.-]+#\d+)|(?:(?<![\w])#\d+)|(?:https?://\S+/(?:issues|pull)/\d+)"
)
_KEYS = {"op", "impl", "property", "when", "reason"}
_MISSING = object()


@dataclass
class Entry:
    op: str
    impl: str
    property: str
    when: dict
    reason: str
    index: int = 0
    source: str = ""
    matched: int = 0
    xfailed: int = 0
    passed: int = 0

    def matches(self, op: str, impl: str, prop: str, meta: dict) -> bool:
        if self.op != op or self.impl not in ("*", impl) or self.property not in ("*", prop):
            return False
        return all(_field_matches(meta, k, v) for k, v in self.when.items())

    def describe(self) -> str:
        when = json.dumps(self.when, sort_keys=True) if self.when else "any case"
        return (
            f"#{self.index} ({self.op} / {self.impl} / {self.property} when {when}; {self.reason})"
        )


def _field_matches(meta: Any, key: str, want: Any) -> bool:
    got: Any = meta
    for part in key.split("."):
        if isinstance(got, dict) and part in got:
            got = got[part]
        elif isinstance(got, list) and part.isdigit() and int(part) < len(got):
            got = got[int(part)]
        else:
            return False
    return _value_matches(got, want)


def _value_matches(got: Any, want: Any) -> bool:
    if isinstance(want, dict):
        return isinstance(got, dict) and all(
            k in got and _value_matches(got[k], v) for k, v in want.items()
        )
    if isinstance(want, (int, float)) and not isinstance(want, bool):
        return isinstance(got, (int, float)) and not isinstance(got, bool) and got == want
    return got == want


def _check_entry(raw: Any, i: int, src: str) -> Entry:
    where = f"{src}: entry {i}"
    if not isinstance(raw, dict):
        raise ValueError(f"{where}: expected a table/object, got {type(raw).__name__}")
    unknown = set(raw) - _KEYS
    if unknown:
        raise ValueError(f"{where}: unknown keys {sorted(unknown)} (allowed: {sorted(_KEYS)})")
    for k in ("op", "impl", "reason"):
        if not isinstance(raw.get(k), str) or not raw[k].strip():
            raise ValueError(f"{where}: {k!r} is required and must be a non-empty string")
    prop = raw.get("property", "*")
    if not isinstance(prop, str) or not prop:
        raise ValueError(f"{where}: 'property' must be a property name or '*'")
    when = raw.get("when", {})
    if not isinstance(when, dict) or not all(isinstance(k, str) for k in when):
        raise ValueError(f"{where}: 'when' must be an object of meta fields")
    try:
        json.dumps(when, allow_nan=False)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{where}: 'when' must be JSON-able: {e}") from e
    if not ISSUE_RE.search(raw["reason"]):
        raise ValueError(
            f"{where}: reason {raw['reason']!r} must cite an issue (owner/repo#123, #123 or an "
            f"issue/PR URL)"
        )
    from parity.registry import OP_NAMES

    if raw["op"] not in OP_NAMES:
        raise ValueError(f"{where}: op {raw['op']!r} is not an op of the contract")
    _check_names(where, raw["op"], raw["impl"], prop)
    return Entry(raw["op"], raw["impl"], prop, dict(when), raw["reason"], i, src)


_EXTERNAL_RE = re.compile(r"[A-Za-z_][\w.]*:[A-Za-z_][\w.]*")


def _check_names(where: str, op: str, impl: str, prop: str) -> None:
    """A misspelt property or implementation would silently match nothing: refuse it. An
    implementation is "*", "reference", a name registered for the op, or `module:function`
    (checked by its form only: the ledger never imports anything)."""
    from parity.catalog import get_spec, impls

    props = get_spec(op).all_properties()
    if prop != "*" and prop not in props:
        raise ValueError(
            f"{where}: property {prop!r} is not a property of {op}; properties: "
            f"{', '.join(props)} or '*'"
        )
    if impl in ("*", "reference") or _EXTERNAL_RE.fullmatch(impl):
        return
    known = [i.name for i in impls(op)]
    if impl not in known:
        raise ValueError(
            f"{where}: impl {impl!r} is not an implementation of {op} (registered: "
            f"{', '.join(known) or 'none'}; or '*', 'reference', module:function)"
        )


@dataclass
class Ledger:
    entries: list[Entry] = field(default_factory=list)
    path: str | None = None

    @classmethod
    def load(cls, path: str | Path) -> Ledger:
        from parity.campaign.safefile import (
            MAX_JSON,
            UnsafeFile,
            check_depth,
            loads_json,
            read_bounded,
        )

        p = Path(path)
        try:  # a regular file in its folder, at most 1 MiB, nesting bounded: see safefile
            data = read_bounded(p, limit=MAX_JSON)
            if p.suffix.lower() == ".toml":
                import tomllib

                try:
                    doc = tomllib.loads(data.decode("utf-8"))
                except (tomllib.TOMLDecodeError, UnicodeDecodeError, RecursionError) as e:
                    raise UnsafeFile(f"{p}: not valid TOML: {e}") from e
                check_depth(doc, where=str(p))
            else:
                doc = loads_json(data, where=str(p))
        except UnsafeFile as e:
            raise ValueError(f"bad ledger file: {e}") from e
        if p.suffix.lower() == ".toml":
            raws = None
            for key in ("entry", "entries", "known_failure"):
                if key in doc:
                    raws = doc[key]
                    break
            if raws is None:
                raws = []
        else:
            raws = doc.get("entries", None) if isinstance(doc, dict) else doc
            if isinstance(doc, dict) and raws is None:
                raise ValueError(f"{p}: expected an object with 'entries' or a list")
        if not isinstance(raws, list):
            raise ValueError(f"{p}: the entries must be a list")
        return cls([_check_entry(r, i, str(p)) for i, r in enumerate(raws)], str(p))

    def __bool__(self) -> bool:
        return bool(self.entries)

    def match(self, op: str, impl: str, prop: str, meta: dict) -> Entry | None:
        for e in self.entries:
            if e.matches(op, impl, prop, meta):
                return e
        return None

    def record(self, entry: Entry, failed: bool) -> None:
        entry.matched += 1
        if failed:
            entry.xfailed += 1
        else:
            entry.passed += 1

    def merge_counts(self, rows: list[dict]) -> None:
        """Add the counts of `summary()` rows from another process (same ledger file)."""
        for row in rows:
            i = row.get("index")
            if isinstance(i, int) and 0 <= i < len(self.entries):
                e = self.entries[i]
                e.matched += row.get("matched", 0)
                e.xfailed += row.get("xfailed", 0)
                e.passed += row.get("passed", 0)

    def xpasses(self, op: str | None = None, impl: str | None = None) -> list[str]:
        out = []
        for e in self.entries:
            if op is not None and e.op != op:
                continue
            if impl is not None and e.impl not in ("*", impl):
                continue
            if e.matched and not e.xfailed and e.passed:
                out.append(
                    f"XPASS: ledger entry {e.describe()} passed: {e.passed} matching case(s) "
                    f"passed, none failed; remove it if the issue is fixed"
                )
        return out

    def unmatched(self, op: str | None = None, impl: str | None = None) -> list[str]:
        """One line per entry for this op / implementation that matched no case: a `when`
        that describes no case the strategies draw, or a property that was not run. Reported
        at the end of a run (not a failure: the run may simply not have drawn such a case)."""
        out = []
        for e in self.entries:
            if op is not None and e.op != op:
                continue
            if impl is not None and e.impl not in ("*", impl):
                continue
            if not e.matched:
                out.append(
                    f"ledger entry {e.describe()} matched no case in this run (a 'when' that "
                    f"describes no drawn case, a property not run, or a fixed bug?)"
                )
        return out

    def summary(self) -> list[dict]:
        return [
            {
                "index": e.index,
                "op": e.op,
                "impl": e.impl,
                "property": e.property,
                "when": e.when,
                "reason": e.reason,
                "matched": e.matched,
                "xfailed": e.xfailed,
                "passed": e.passed,
                "unmatched": not e.matched,
            }
            for e in self.entries
        ]


def load_ledger(path: str | Path | None = None) -> Ledger:
    """`path`, else `parity-ledger.json` in the current folder if it exists, else empty."""
    if path:
        return Ledger.load(path)
    default = Path(DEFAULT_FILE)
    if os.path.lexists(default):
        led = Ledger.load(default)
        n = len(led.entries)
        print(
            f"parity: using the known-failure ledger ./{DEFAULT_FILE} found in the current folder "
            f"({n} entr{'y' if n == 1 else 'ies'}: matching failures count as xfail); "
            f"--ledger FILE names another",
            file=sys.stderr,
        )
        return led
    return Ledger()


__all__ = ["DEFAULT_FILE", "ISSUE_RE", "Entry", "Ledger", "load_ledger"]
