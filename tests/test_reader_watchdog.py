"""The suite's database reader against a server that stops answering mid-session (SIGSTOP: the kernel
still ACKs, so no timeout of the server's or TCP's notices): the statement is cut after the watchdog's
bound and the failure says why, in one line. A real PostgreSQL of its own, frozen and thawed."""
from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
from sqlalchemy import text

import db_init
from fixtures.database import Watchdog
from tests.support import pgserver
from tests.support.pgserver import PgServer


@pytest.fixture()
def frozen_able() -> Iterator[PgServer]:
    with pgserver.running() as server:  # its own cluster: freezing the shared one would stall other tests
        yield server


def test_a_query_to_a_frozen_server_is_cut_after_the_bound(frozen_able: PgServer) -> None:
    engine = db_init.make_engine(frozen_able.url(), pool_pre_ping=False)
    watchdog = Watchdog(bound=2.0)
    watchdog.attach(engine)
    try:
        with engine.connect() as conn:
            assert conn.execute(text("SELECT 1")).scalar_one() == 1
            assert not watchdog.fired.is_set()
            frozen_able.freeze()
            try:
                t0 = time.monotonic()
                with pytest.raises(Exception) as err:
                    conn.execute(text("SELECT 2"))
                waited = time.monotonic() - t0
            finally:
                frozen_able.thaw()
    finally:
        engine.dispose()
    assert watchdog.fired.is_set()
    assert 1.5 <= waited < 10, waited  # cut by the watchdog, not by anything else
    assert "closed" in str(err.value).lower() or "terminat" in str(err.value).lower(), err.value


def test_a_statement_that_answers_in_time_is_left_alone(frozen_able: PgServer) -> None:
    engine = db_init.make_engine(frozen_able.url())
    watchdog = Watchdog(bound=2.0)
    watchdog.attach(engine)
    try:
        with engine.connect() as conn:
            assert conn.execute(text("SELECT pg_sleep(0.5), 3")).one()[1] == 3
    finally:
        engine.dispose()
    time.sleep(2.2)  # past the bound: a timer left armed would fire now
    assert not watchdog.fired.is_set()
