"""Named variants: judge outputs against the reference computed under documented conventions of
real kernels (`OpSpec.variants`), and explain a mismatch by the variants that account for it.

Pure functions (no I/O, no printing): the campaign engine calls

- `judge_under(spec, case, outs, accept, prop=...)` for `--accept NAME` (`accept=()` is the
  contract itself), and
- `relations_voided(spec, accept)` (relations not run under a variant) and
  `compare_pair_under(spec, case, a, b, accept)` for the inexact relations under `--accept`,
- `diagnose(spec, case, outs, prop=...)` when `matches_reference` or `nan_policy` fails on a
  (shrunk) case: the variant sets under which `outs` matches the reference, single variants
  first, then pairs of which neither explains it alone; `[]` means "no known variant explains
  it". `describe(spec, found)` gives the line to print. `diagnose_relation` does the same for a
  failing inexact relation (token_permutation and the like): the sets under which it holds.

The outputs must already have passed the structure check (a tuple of tensors as the contract
wants); the judges never raise on wrong values, only on unknown variant names.
"""

from __future__ import annotations

import itertools

import torch

from parity.properties.case import Case, as_tuple
from parity.properties.tolerance import Verdict, nan_mask_equal
from parity.registry import OpSpec

PROPS = ("matches_reference", "nan_policy")


def names(spec: OpSpec) -> tuple[str, ...]:
    """The op's variant names, in declaration order."""
    return tuple(v.name for v in spec.variants)


def validate(spec: OpSpec, accept) -> frozenset[str]:
    """`accept` as a set of the op's variant names; ValueError naming the op's variants."""
    if isinstance(accept, str):
        accept = (accept,)
    known = names(spec)
    bad = sorted({a for a in accept if a not in known})
    if bad:
        have = ", ".join(known) if known else "none"
        raise ValueError(f"{spec.name}: unknown variant {', '.join(bad)} (its variants: {have})")
    return frozenset(accept)


def judge_under(
    spec: OpSpec, case: Case, outs: tuple, accept=(), *, prop: str = "matches_reference"
) -> Verdict:
    """The verdict of `prop` with the reference computed under the variants `accept`.

    matches_reference: `spec.compare_variants` (`spec.compare` for no variant). nan_policy: NaN
    exactly where the reference under `accept` has NaN, in every float or 1-byte output (as the
    engine's strict check does with the plain reference).
    """
    if prop not in PROPS:
        raise ValueError(f"judge_under: prop: expected one of {', '.join(PROPS)}, got {prop!r}")
    chosen = validate(spec, accept)
    outs = as_tuple(outs)
    if prop == "matches_reference":
        if not chosen:
            return spec.compare(case, outs)
        return spec.compare_variants(case, outs, chosen)
    if chosen:
        refs = as_tuple(spec.reference_under(case, chosen))
    else:
        c = case.clone()
        refs = as_tuple(spec.reference(*c.args, **c.kwargs))
    if spec.canonical is not None:
        outs, refs = as_tuple(spec.canonical(case, outs)), as_tuple(spec.canonical(case, refs))
    for i, (o, r) in enumerate(zip(outs, refs)):
        if not (r.is_floating_point() or r.dtype.itemsize == 1) or r.dtype == torch.uint8:
            continue  # integers carry no NaN; packed codes carry the policy through their scales
        v = nan_mask_equal(f"output {i}", o, r.to(o.device))
        if not v:
            return v
    return Verdict.passed()


def relations_voided(spec: OpSpec, accept) -> dict[str, str]:
    """{relation: the accepted variant under which it does not hold}: the engine reports those
    relations as not run under `--accept` (e.g. fp8_quant's pow2_scaling under ue8m0_log2: a
    float32 log2 rounds differently a binade away)."""
    chosen = validate(spec, accept)
    return {r: v.name for v in spec.variants if v.name in chosen for r in v.breaks}


def compare_pair_under(spec: OpSpec, case: Case, a: tuple, b: tuple, accept) -> Verdict:
    """An inexact relation (`Relation.exact` False) under `--accept`: the derived outputs `a`
    (mapped back) and the base outputs `b` each match the reference under `accept` on `case`
    (the strict `spec.compare_pair` bounds them by the contract's model). No variant: the
    spec's own `compare_pair`."""
    chosen = validate(spec, accept)
    if not chosen:
        return spec.compare_pair(case, a, b)
    for name, outs in (("derived", a), ("base", b)):
        v = judge_under(spec, case, outs, chosen)
        if not v:
            return Verdict(False, f"{name}: {v.message}", v.ratio, v.worst)
    return Verdict.passed()


def _explains(spec: OpSpec, case: Case, outs: tuple, chosen, prop: str) -> bool:
    # An explanation is a full match: the values under the variants, and for a NaN-policy
    # failure the NaN positions too (a mask alone would explain away a kernel that only
    # happens to put NaN in the same places).
    if not judge_under(spec, case, outs, chosen, prop="matches_reference"):
        return False
    return prop != "nan_policy" or bool(judge_under(spec, case, outs, chosen, prop="nan_policy"))


def _explaining_sets(known, explains) -> list[tuple[str, ...]]:
    """Each single variant of `known` that `explains`, then each pair that does of which
    neither member does alone."""
    singles = [(n,) for n in known if explains((n,))]
    alone = {s[0] for s in singles}
    pairs = [p for p in itertools.combinations(known, 2) if not (set(p) & alone) and explains(p)]
    return singles + pairs


def diagnose(
    spec: OpSpec, case: Case, outs: tuple, *, prop: str = "matches_reference"
) -> list[tuple[str, ...]]:
    """The variant sets under which `outs` matches the reference on `case`: each single variant
    that does, then each pair that does of which neither member does alone. [] where no declared
    variant (or pair) explains it, and for an op that declares none."""
    if prop not in PROPS:
        raise ValueError(f"diagnose: prop: expected one of {', '.join(PROPS)}, got {prop!r}")
    outs = as_tuple(outs)
    return _explaining_sets(names(spec), lambda c: _explains(spec, case, outs, c, prop))


def diagnose_relation(
    spec: OpSpec, case: Case, derived: tuple, base: tuple, *, relation: str
) -> list[tuple[str, ...]]:
    """For a failing inexact relation: the variant sets under which it holds (the derived
    outputs, mapped back, and the base outputs each match the reference under them:
    `compare_pair_under`), single variants first, then pairs as `diagnose` does. A variant
    under which the relation is void (`Variant.breaks`) explains nothing here."""

    def explains(chosen) -> bool:
        return relation not in relations_voided(spec, chosen) and bool(
            compare_pair_under(spec, case, derived, base, chosen)
        )

    return _explaining_sets(names(spec), explains)


def describe(spec: OpSpec, found: list[tuple[str, ...]]) -> str:
    """The diagnosis line: what the engine prints under a failing matches_reference/nan_policy."""
    if not found:
        return "no known variant explains it"
    text = "; ".join(" + ".join(s) for s in found)
    return f"this output matches the reference under: {text}"


__all__ = [
    "compare_pair_under",
    "describe",
    "diagnose",
    "diagnose_relation",
    "judge_under",
    "names",
    "relations_voided",
    "validate",
]
