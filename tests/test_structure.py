"""Whole-repo rules: every op has a spec and a reference, every property has a witness, the
references import without any GPU backend."""

import importlib
import re
import subprocess
import sys
from pathlib import Path

from parity.catalog import listing, specs
from parity.registry import OP_NAMES
from tests.witnesses import load


def test_every_op_has_a_spec_with_a_reference():
    s = specs()
    assert sorted(s) == sorted(OP_NAMES)
    rows = [r for r in listing() if r["reference"]]
    assert sorted(r["op"] for r in rows) == sorted(OP_NAMES)
    assert all(r["available"] for r in rows)


def test_every_property_has_a_witness():
    have = {(w.op, w.prop) for w in load()}
    missing = [
        (name, prop)
        for name, spec in specs().items()
        for prop in spec.all_properties()
        if (name, prop) not in have
    ]
    assert not missing, f"properties without a witness: {missing}"


def test_every_spec_states_its_tolerance():
    for name, spec in specs().items():
        assert spec.tolerance.strip(), name


def test_references_import_without_gpu_backends():
    code = (
        "import sys\n"
        "for m in ('triton', 'tilelang', 'flashinfer'): sys.modules[m] = None\n"
        "import parity.reference, parity.catalog\n"
        "parity.catalog.load_all()\n"
        "print(len(parity.catalog.listing()))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert int(out.stdout.strip()) >= len(OP_NAMES)


SPECS_DIR = Path(__file__).resolve().parents[1] / "parity" / "properties" / "specs"


def _spec_modules() -> list[str]:
    """The op spec files: every module of specs/ except __init__ and the _family helpers."""
    return sorted(p.stem for p in SPECS_DIR.glob("*.py") if not p.stem.startswith("_"))


def test_one_spec_file_per_op():
    assert _spec_modules() == sorted(OP_NAMES)
    for name in _spec_modules():
        mod = importlib.import_module(f"parity.properties.specs.{name}")
        missing = [n for n in ("strategy", "build", "compare", "SPEC") if not hasattr(mod, n)]
        assert not missing, f"specs/{name}.py lacks {missing}"
        spec = mod.SPEC
        assert spec.name == name, f"specs/{name}.py registers {spec.name!r}"
        assert specs()[name] is spec, f"specs/{name}.py: SPEC is not the registered spec"
        assert (spec.strategy, spec.build, spec.compare) == (mod.strategy, mod.build, mod.compare)


def test_no_spec_wires_invalid_or_nan_strategies_by_hand():
    # OpSpec derives them from `mutations`, `nan` and the case strategy
    bad = [
        f"{p.name}:{i}"
        for p in sorted(SPECS_DIR.glob("*.py"))
        for i, line in enumerate(p.read_text().splitlines(), 1)
        if re.search(r"\b(invalid_cases|with_nan)\(", line)
    ]
    assert not bad, f"hand-wired invalid/NaN strategies: {bad}"


def test_derived_properties_follow_the_declarations():
    for name, spec in specs().items():
        assert ("error_parity" in spec.properties) == bool(spec.mutations), name
        assert ("nan_policy" in spec.properties) == spec.nan, name


# --- import graph (added by the lead) -------------------------------------------------------
