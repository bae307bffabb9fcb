"""Drive one property of one op against one implementation with Hypothesis.

Shared by the pytest plugin and `parity fuzz`: the strategy draws case descriptions, each is
built on the device and evaluated; a failure is shrunk by Hypothesis and reported with a
one-line command that reproduces it.
"""

from __future__ import annotations

import json
import shlex
import time
from collections.abc import Callable
from dataclasses import dataclass

import hypothesis
from hypothesis import HealthCheck, Phase, given, settings

from parity.properties.checks import evaluate
from parity.registry import OpSpec

_SUPPRESS = list(HealthCheck)

# no explain phase in pr/bisect: it re-runs a found failure many times only to annotate it
_NO_EXPLAIN = (Phase.explicit, Phase.reuse, Phase.generate, Phase.target, Phase.shrink)
settings.register_profile(
    "pr",
    max_examples=20,
    derandomize=True,
    deadline=None,
    database=None,
    print_blob=False,
    phases=_NO_EXPLAIN,
    suppress_health_check=_SUPPRESS,
)
settings.register_profile(
    "nightly",
    max_examples=1000,
    derandomize=False,
    deadline=None,
    suppress_health_check=_SUPPRESS,
)
settings.register_profile(
    "bisect",
    max_examples=30,
    derandomize=True,
    deadline=None,
    database=None,
    phases=_NO_EXPLAIN,
    suppress_health_check=_SUPPRESS,
)
PROFILES = ("pr", "nightly", "bisect")


class PropertyFailed(AssertionError):
    def __init__(self, meta: dict, message: str):
        super().__init__(message)
        self.meta = meta


@dataclass
class Stats:
    op: str
    impl: str
    prop: str
    device: str
    run: int = 0
    passed: int = 0
    failed: int = 0
    unsupported: int = 0
    not_applicable: int = 0
    seconds: float = 0.0
    failure: dict | None = None  # {"meta", "message", "worst", "ratio"} of the shrunk case
    last_unsupported: str = ""
    max_ratio: float = 0.0

    def record(self, status: str, meta: dict, verdict) -> None:
        if status == "unsupported":
            self.unsupported += 1
            self.last_unsupported = verdict.message if verdict else ""
            return
        if status == "n/a":
            self.not_applicable += 1
            return
        self.run += 1
        if verdict is not None and verdict.ratio == verdict.ratio:
            self.max_ratio = max(self.max_ratio, min(verdict.ratio, 1e300))
        if status == "pass":
            self.passed += 1
        else:
            self.failed += 1

    @property
    def tested(self) -> bool:
        return self.run > 0

    def verdict(self) -> str:
        if self.failure is not None or self.failed:
            return "FAIL"
        if not self.tested:
            return "NOT RUN"
        return "pass"

    def as_dict(self) -> dict:
        d = {k: getattr(self, k) for k in self.__dataclass_fields__}
        d["verdict"] = self.verdict()
        return d


def strategy_for(spec: OpSpec, prop: str, *, size: str, dtypes=None):
    if prop == "error_parity":
        return spec.invalid(size=size)
    if prop == "nan_policy":
        return spec.nan_strategy(size=size, dtypes=dtypes)
    return spec.strategy(size=size, dtypes=dtypes)


def repro_command(op: str, impl: str, prop: str, device: str, meta: dict) -> str:
    return (
        f"parity case --op {op} --impl {shlex.quote(impl)} --property {prop} "
        f"--device {device} --meta {shlex.quote(json.dumps(meta, sort_keys=True))}"
    )


def run_property(
    spec: OpSpec,
    prop: str,
    fn: Callable,
    *,
    impl_name: str,
    device: str = "cpu",
    size: str | None = None,
    dtypes=None,
    profile: str = "pr",
    max_examples: int | None = None,
    seed: int | None = None,
    on_example: Callable[[Stats], None] | None = None,
    on_failure: Callable[[dict, object], None] | None = None,
    shrink: bool = True,
) -> Stats:
    """Run `prop` for `fn`; returns the counts and the shrunk failure (if any)."""
    size = size or ("small" if device == "cpu" else "full")
    stats = Stats(spec.name, impl_name, prop, device)
    overrides = {}
    if max_examples is not None:
        overrides["max_examples"] = max_examples
    base = settings.get_profile(profile)
    if not shrink:  # detection only (the witness tests): a found failure is not minimised
        overrides["phases"] = tuple(
            p for p in base.phases if p not in (Phase.shrink, Phase.explain)
        )
    s = settings(base, **overrides)
    targeted = profile == "nightly"
    strat = strategy_for(spec, prop, size=size, dtypes=dtypes)
    last_fail: dict = {}

    @s
    @given(strat)
    def body(meta):
        case = spec.build(meta, device)
        status, v = evaluate(spec, prop, fn, case)
        stats.record(status, meta, v)
        if on_example:
            on_example(stats)
        if targeted and v is not None and v.ratio == v.ratio:
            hypothesis.target(min(float(v.ratio), 1e12), label="error/tolerance")
        if status == "fail":
            last_fail.update(meta=meta, verdict=v)
            if on_failure:
                on_failure(meta, v)
            raise PropertyFailed(meta, v.message)

    if seed is not None:
        body = hypothesis.seed(seed)(body)
    t0 = time.perf_counter()
    try:
        body()
    except PropertyFailed as e:
        _set_failure(stats, e.meta, last_fail.get("verdict"), e)
    except Exception as e:  # Hypothesis' Flaky and friends: keep the last failing case
        if not last_fail:
            raise
        _set_failure(stats, last_fail["meta"], last_fail["verdict"], e)
    finally:
        stats.seconds = time.perf_counter() - t0
    return stats


def _set_failure(stats: Stats, meta: dict, verdict, exc: BaseException) -> None:
    msg = verdict.message if verdict is not None else str(exc)
    stats.failure = {
        "meta": meta,
        "message": msg,
        "ratio": getattr(verdict, "ratio", float("inf")),
        "worst": [list(map(_jsonable, w)) for w in getattr(verdict, "worst", [])],
        "repro": repro_command(stats.op, stats.impl, stats.prop, stats.device, meta),
    }


def _jsonable(x):
    if isinstance(x, tuple):
        return list(x)
    return x


__all__ = ["PROFILES", "Stats", "repro_command", "run_property", "strategy_for"]
