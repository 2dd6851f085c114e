"""Fixtures that hand one check's facts to another, so each dependency is in the check's signature.

``runbook_calls``: the runbook's chat call (plain and streamed), made once per run when first asked: check 3
judges it, checks 4–5 look for its rows; run alone (``pytest -k db_rows``) a check still gets the calls.
``logger_metrics_baseline`` and ``unit_baseline`` are readings taken before the first check (autouse, and
only when the check that needs them was collected): logger_metrics reports the pool reuse during this run
as the difference with its own later reading; service_status (which runs last) fails a unit that restarted
during the run. Each is a parameter of the one check that uses it.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from acceptance.plugin import check_id
from fixtures.context import RUN_KEY, RunbookCalls, RunContext
from fixtures.lazy import Lazy


def _collected(request: pytest.FixtureRequest, cid: str) -> RunContext | None:
    run = request.config.stash.get(RUN_KEY, None)
    if run is None or not any(check_id(item) == cid for item in request.session.items):
        return None
    return run


def _each_gateway(run: RunContext, read: Callable[[str], object]) -> dict[str, object]:
    """``read(gateway)`` for every gateway host at once (independent hosts: one thread each)."""
    names = run.gateway_names
    if len(names) == 1:
        return {names[0]: read(names[0])}
    with ThreadPoolExecutor(max_workers=len(names), thread_name_prefix="poc1-gateway") as pool:
        return dict(zip(names, pool.map(read, names)))


@pytest.fixture()
def runbook_calls(run: RunContext, gateway: str, http: Lazy[httpx.Client]) -> RunbookCalls:
    """This gateway host's runbook calls; the first ask makes them on every gateway host at once."""
    from acceptance import check_chat_call

    if gateway not in run.calls:
        run.calls.update(_each_gateway(run, lambda g: check_chat_call.make_calls(run.view(g)[0], http)))
    return run.calls[gateway]


def _reason(exc: BaseException) -> str:
    from evidence_writers.redaction import clip

    return clip(str(exc).splitlines()[0], 200) if str(exc) else type(exc).__name__


@pytest.fixture(scope="session", autouse=True)
def logger_metrics_baselines(request: pytest.FixtureRequest) -> dict[str, object]:
    """Per gateway host: check_logger_metrics.Scrape at the run's start, or the one-line reason there is
    none ({}: the check was not collected)."""
    run = _collected(request, "logger_metrics")
    if run is None:
        return {}
    from acceptance import check_logger_metrics

    return _each_gateway(run, lambda g: check_logger_metrics.take_baseline(*run.view(g)))


@pytest.fixture()
def logger_metrics_baseline(logger_metrics_baselines: dict[str, object], gateway: str) -> object:
    return logger_metrics_baselines.get(gateway)


@pytest.fixture(scope="session", autouse=True)
def unit_baselines(request: pytest.FixtureRequest) -> dict[str, object]:
    """Per gateway host: unit_history.UnitReading at the run's start, or the one-line reason there is none."""
    run = _collected(request, "service_status")
    if run is None:
        return {}
    from acceptance import unit_history

    unit = str(run.target.vars["gateway_service"])

    def read(g: str) -> object:
        try:
            return unit_history.UnitReading.read(run.view(g)[1].gateway, unit, run.run_id)
        except Exception as exc:  # noqa: BLE001 - never fails the run here: check 1 says what it could not read
            return _reason(exc)

    return _each_gateway(run, read)


@pytest.fixture()
def unit_baseline(unit_baselines: dict[str, object], gateway: str) -> object:
    return unit_baselines.get(gateway)
