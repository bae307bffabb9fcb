"""Kept for the callers of the first layout: the Hypothesis runner is `parity.campaign`."""

from parity.campaign.engine import PROFILES, PropertyFailed, Stats, run_property, strategy_for
from parity.campaign.repro import repro_command

__all__ = ["PROFILES", "PropertyFailed", "Stats", "repro_command", "run_property", "strategy_for"]
