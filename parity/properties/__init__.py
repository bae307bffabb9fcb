"""The property engine: strategies, tolerance models, checks and the Hypothesis runner."""

from parity.properties.case import Case, Gen
from parity.properties.checks import PROPERTIES, evaluate
from parity.properties.runner import PROFILES, Stats, run_property
from parity.properties.tolerance import Verdict

__all__ = ["PROFILES", "PROPERTIES", "Case", "Gen", "Stats", "Verdict", "evaluate", "run_property"]
