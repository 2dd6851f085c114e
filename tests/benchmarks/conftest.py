"""Benchmarks of the gateway logger: run separately with ``pytest tests/benchmarks`` (~1 min).

Every benchmark puts its figures in ``bench_results`` and its goals in ``bench_goals`` (figure, measured,
goal, met); both are printed at the end — the goals as one table — and, if ``POC1_BENCH_JSON`` names a
file, written there as JSON.
"""
from __future__ import annotations

import json
import os
from typing import Any

import pytest

RESULTS: dict[str, dict[str, Any]] = {}
GOALS: list[tuple[str, str, str, bool | str]] = []


@pytest.fixture(scope="module")
def bench_db(pg: Any) -> str:
    """A log database with the schema, one per benchmark module (on the session's ``pg``)."""
    import uuid

    import db_init

    url = pg.create_database(f"bench_{uuid.uuid4().hex[:8]}")
    db_init.create(url)
    return url


@pytest.fixture(scope="session")
def bench_results() -> dict[str, dict[str, Any]]:
    return RESULTS


@pytest.fixture(scope="session")
def bench_goals() -> list[tuple[str, str, str, bool | str]]:
    return GOALS


def goals_table(goals: list[tuple[str, str, str, bool | str]]) -> list[str]:
    """The goals as one Markdown table (what FINDINGS.md and a closing note quote)."""
    lines = ["| figure | measured | goal | met |", "|---|---|---|---|"]
    for figure, measured, goal, met in goals:
        lines.append(f"| {figure} | {measured} | {goal} | {met if isinstance(met, str) else 'yes' if met else 'NO'} |")
    return lines


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if not RESULTS and not GOALS:
        return
    terminalreporter.section("gateway logger benchmarks")
    for name, figures in RESULTS.items():
        terminalreporter.write_line(f"{name}:")
        for key, value in figures.items():
            terminalreporter.write_line(f"  {key:<44} {value}")
    if GOALS:
        terminalreporter.section("goals (issue 14), this run")
        for line in goals_table(GOALS):
            terminalreporter.write_line(line)
    target = os.environ.get("POC1_BENCH_JSON")
    if target:
        with open(target, "w") as f:
            json.dump({"results": RESULTS, "goals": GOALS}, f, indent=2)
