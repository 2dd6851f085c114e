"""Command-line options of check 6 (a pytest plugin, listed in the root conftest's ``pytest_plugins``).

Why options and not constants: the pass limits are part of what is signed off, so they are stated on
the command line of the run (and recorded in overhead_benchmark.json), not buried in code.
"""
from __future__ import annotations

import pytest

from acceptance.overhead_probe import Plan
from acceptance.overhead_stats import Limits


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("poc1-overhead", "POC-1 check 6: DB-logging overhead")
    group.addoption("--overhead-threshold-ms", type=float, default=Limits.overhead_ms, metavar="MS",
                    help="pass when the added p95 latency (logging on minus off) is below MS "
                         f"(default {Limits.overhead_ms:g})")
    group.addoption("--durability-lag-threshold-ms", type=float, default=Limits.durability_lag_ms,
                    metavar="MS", help="pass when p95 of response-to-row time is below MS "
                                       f"(default {Limits.durability_lag_ms:g})")
    group.addoption("--overhead-pairs", type=int, default=Plan.pairs, metavar="N",
                    help=f"measured requests per arm, after warm-up (default {Plan.pairs})")


def limits(config: pytest.Config) -> Limits:
    return Limits(overhead_ms=float(config.getoption("overhead_threshold_ms")),
                  durability_lag_ms=float(config.getoption("durability_lag_threshold_ms")))


def plan(config: pytest.Config) -> Plan:
    pairs = int(config.getoption("overhead_pairs"))
    if pairs < 20:
        raise pytest.UsageError(f"--overhead-pairs {pairs}: need at least 20 for a p95 to mean anything")
    return Plan(pairs=pairs)
