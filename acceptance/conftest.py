"""What the acceptance checks must read before the first check runs.

logger_metrics reports the logger's pool reuse during this run: the difference between a reading of the
metrics taken here, at the start of the session, and its own reading after the benchmark. service_status
(which runs last) fails a unit that restarted during the run: it compares with the reading taken here.
"""

from __future__ import annotations

import pytest

from acceptance.plugin import check_id
from fixtures.context import RUN_KEY


@pytest.fixture(scope="session", autouse=True)
def logger_metrics_baseline(request: pytest.FixtureRequest) -> None:
    run = request.config.stash.get(RUN_KEY, None)
    if run is None or not any(check_id(item) == "logger_metrics" for item in request.session.items):
        return
    from acceptance import check_logger_metrics

    check_logger_metrics.take_baseline(request.config, run.target, run.hosts)


@pytest.fixture(scope="session", autouse=True)
def unit_baseline(request: pytest.FixtureRequest) -> None:
    run = request.config.stash.get(RUN_KEY, None)
    if run is None or not any(check_id(item) == "service_status" for item in request.session.items):
        return
    from acceptance import unit_history
    from evidence_writers.redaction import clip

    try:
        request.config.stash[unit_history.BASELINE_KEY] = unit_history.UnitReading.read(
            run.hosts.gateway, str(run.target.vars["gateway_service"]), run.run_id)
    except Exception as exc:  # noqa: BLE001 - never fails the run here: check 1 says what it could not read
        request.config.stash[unit_history.BASELINE_KEY] = clip(str(exc).splitlines()[0], 200) if str(exc) else type(exc).__name__
