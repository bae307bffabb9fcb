"""The campaign engine (see `parity.campaign.engine`): evaluators, the Hypothesis driver,
stats and reports; `repro` (repro files), `ledger` (known failures), `wire` (plain-data
conversions), `worker` (the isolated process), `text` (what the CLI prints)."""

from parity.campaign.engine import (
    FAILING,
    PROFILES,
    InProcess,
    Isolated,
    ParityError,
    PropertyFailed,
    Report,
    Stats,
    drive,
    evaluator_for,
    exit_code,
    merge_stats,
    run_campaign,
    run_parallel,
    run_property,
    strategy_for,
)
from parity.campaign.repro import repro_command

__all__ = [
    "FAILING",
    "PROFILES",
    "InProcess",
    "Isolated",
    "ParityError",
    "PropertyFailed",
    "Report",
    "Stats",
    "drive",
    "evaluator_for",
    "exit_code",
    "merge_stats",
    "repro_command",
    "run_campaign",
    "run_parallel",
    "run_property",
    "strategy_for",
]
