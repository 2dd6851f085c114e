"""What the acceptance checks must read before the first check runs.

logger_metrics reports the logger's pool reuse during this run: the difference between a reading of the
metrics taken here, at the start of the session, and its own reading after the benchmark.
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
