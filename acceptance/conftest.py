"""Fixtures that hand one check's facts to another, so each dependency is in the check's signature.

``runbook_calls``: the runbook's chat call (plain and streamed), made once per run when first asked: check 3
judges it, checks 4–5 look for its rows; run alone (``pytest -k db_rows``) a check still gets the calls.
``logger_metrics_baseline`` and ``unit_baseline`` are readings taken before the first check (autouse, and
only when the check that needs them was collected): logger_metrics reports the pool reuse during this run
as the difference with its own later reading; service_status (which runs last) fails a unit that restarted
during the run. Each is a parameter of the one check that uses it.
"""

from __future__ import annotations

import httpx
import pytest

from acceptance.plugin import check_id
from fixtures.context import RUN_KEY, RunbookCalls, RunContext
from fixtures.inventory import Target
from fixtures.lazy import Lazy


def _collected(request: pytest.FixtureRequest, cid: str) -> RunContext | None:
    run = request.config.stash.get(RUN_KEY, None)
    if run is None or not any(check_id(item) == cid for item in request.session.items):
        return None
    return run


@pytest.fixture(scope="session")
def runbook_calls(target: Target, http: Lazy[httpx.Client]) -> RunbookCalls:
    from acceptance import check_chat_call

    return check_chat_call.make_calls(target, http)


@pytest.fixture(scope="session", autouse=True)
def logger_metrics_baseline(request: pytest.FixtureRequest) -> object:
    """check_logger_metrics.Scrape at the run's start, or the one-line reason there is none (None: not
    collected)."""
    run = _collected(request, "logger_metrics")
    if run is None:
        return None
    from acceptance import check_logger_metrics

    return check_logger_metrics.take_baseline(run.target, run.hosts)


@pytest.fixture(scope="session", autouse=True)
def unit_baseline(request: pytest.FixtureRequest) -> object:
    """unit_history.UnitReading at the run's start, or the one-line reason there is none."""
    run = _collected(request, "service_status")
    if run is None:
        return None
    from acceptance import unit_history
    from evidence_writers.redaction import clip

    try:
        return unit_history.UnitReading.read(run.hosts.gateway, str(run.target.vars["gateway_service"]),
                                             run.run_id)
    except Exception as exc:  # noqa: BLE001 - never fails the run here: check 1 says what it could not read
        return clip(str(exc).splitlines()[0], 200) if str(exc) else type(exc).__name__
