"""Benchmarks of the gateway logger: run separately with ``pytest tests/benchmarks`` (~1 min).

Every benchmark puts its figures in ``bench_results``; they are printed as one table at the end and,
if ``POC1_BENCH_JSON`` names a file, written there as JSON.
"""
from __future__ import annotations

import json
import os
from typing import Any

import pytest

RESULTS: dict[str, dict[str, Any]] = {}


@pytest.fixture(scope="session")
def bench_results() -> dict[str, dict[str, Any]]:
    return RESULTS


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if not RESULTS:
        return
    terminalreporter.section("gateway logger benchmarks")
    for name, figures in RESULTS.items():
        terminalreporter.write_line(f"{name}:")
        for key, value in figures.items():
            terminalreporter.write_line(f"  {key:<38} {value}")
    target = os.environ.get("POC1_BENCH_JSON")
    if target:
        with open(target, "w") as f:
            json.dump(RESULTS, f, indent=2)
