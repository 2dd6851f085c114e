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
    group.addoption("--overhead-groups", type=int, default=Plan.groups, metavar="N",
                    help=f"ABBA groups of saturated blocks per capacity round (default {Plan.groups}; fewer "
                         "widen the capacity interval, so a sign-off keeps the default)")


def limits(config: pytest.Config) -> Limits:
    return Limits(overhead_ms=float(config.getoption("overhead_threshold_ms")),
                  durability_lag_ms=float(config.getoption("durability_lag_threshold_ms")))


def plan(config: pytest.Config) -> Plan:
    pairs = int(config.getoption("overhead_pairs"))
    if pairs < 20:
        raise pytest.UsageError(f"--overhead-pairs {pairs}: need at least 20 for a p95 to mean anything")
    groups = int(config.getoption("overhead_groups"))
    if groups < 2:
        raise pytest.UsageError(f"--overhead-groups {groups}: need at least 2 for a capacity interval")
    return Plan(pairs=pairs, groups=groups)
