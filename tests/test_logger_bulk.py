"""The logger's one-statement write (gateway_logger/bulk.py) against real PostgreSQL: what it stores is
what the INSERT path stores, awkward text survives, a batch meeting rows already logged writes no
duplicate and a success still replaces a failure, and a driver error is raised as SQLAlchemy's kind so the
writer tells a bad row from an outage. And ``documents.storable``: the
cheap check gives ``jsonable``'s answer."""
from __future__ import annotations

import json
import uuid
from typing import Any

import pytest
from sqlalchemy import select
from sqlalchemy.exc import DataError, DBAPIError

import db_init
import gateway_logger
from gateway_logger import bulk, copying
from gateway_logger.database import insert_batch, insert_rows, is_row_error
from gateway_logger.documents import jsonable, storable
from gateway_logger.rows import outcome_per_call
from tests.support.gateway import litellm_call

NASTY = "tab\there, newline\nhere, cr\rhere, backslash \\ and \\N and \\t, quote \" and é ☃"


def _record(content: str = "hello", *, failed: bool = False, request_id: str | None = None) -> dict[str, Any]:
    call = litellm_call(f"c-{uuid.uuid4()}", content, failed=failed,
                        request_id=request_id or gateway_logger.calls.new_request_id())
    return gateway_logger.normalize(gateway_logger.capture(call, failed=failed))


def _stored(db_url: str, request_ids: list[str]) -> dict[str, tuple]:
    engine = db_init.make_engine(db_url)
    req, resp = db_init.Request, db_init.Response
    cols = (req.request_id, req.call_id, req.route, req.model, req.payload, req.status_code, req.user_id,
            req.api_key, req.start_time, req.end_time, resp.latency_ms, resp.content, resp.prompt_tokens,
            resp.completion_tokens, resp.total_tokens, resp.cost, resp.response_model)
    try:
        with engine.connect() as conn:
            rows = conn.execute(select(*cols).join(resp, resp.request_id_fk == req.id)
                                .where(req.request_id.in_(request_ids))).all()
    finally:
        engine.dispose()
    return {r[0]: tuple(r) for r in rows}


@pytest.fixture()
def log_url(fresh_db: str) -> str:
    db_init.create(fresh_db)
    return fresh_db


@pytest.mark.parametrize("size", [3, copying.COPY_FROM], ids=["one statement", "COPY"])
def test_the_fast_paths_store_exactly_what_the_insert_path_stores(log_url: str, size: int) -> None:
    engine = db_init.make_engine(log_url)
    try:
        copied = [_record(NASTY), _record("plain"), _record(failed=True)] + [_record(f"r{n}") for n in range(size - 3)]
        copied[1]["request"]["user_id"] = NASTY
        copied[1]["request"]["start_time"] = None
        copied[1]["response"]["content"] = None
        inserted = [{"request": dict(r["request"], request_id=r["request"]["request_id"] + "-i"),
                     "response": dict(r["response"])} for r in copied]
        with engine.begin() as conn:
            assert bulk.usable(conn)
        assert insert_batch(engine, copied).inserted == size
        assert insert_rows(engine, inserted, outcome_per_call(inserted)).inserted == size
    finally:
        engine.dispose()
    a = _stored(log_url, [r["request"]["request_id"] for r in copied])
    b = _stored(log_url, [r["request"]["request_id"] for r in inserted])
    assert len(a) == len(b) == size
    for r in copied:
        rid = r["request"]["request_id"]
        assert a[rid][1:] == b[rid + "-i"][1:], rid
    nasty = a[copied[0]["request"]["request_id"]]
    assert nasty[4]["messages"][0]["content"] == NASTY and nasty[11]["choices"][0]["message"]["content"] == "hi " + NASTY
    assert a[copied[1]["request"]["request_id"]][6] == NASTY  # a text column
    assert a[copied[1]["request"]["request_id"]][8] is None and a[copied[1]["request"]["request_id"]][11] is None


@pytest.mark.parametrize("size", [3, copying.COPY_FROM], ids=["one statement", "COPY"])
def test_a_batch_meeting_rows_already_logged_writes_no_duplicate_and_upgrades_a_failure(
        log_url: str, size: int) -> None:
    engine = db_init.make_engine(log_url, isolation_level="AUTOCOMMIT", pool_pre_ping=False)  # the logger's
    try:
        failed_first = _record(failed=True)
        rid = failed_first["request"]["request_id"]
        success = _record("retried", request_id=rid)
        batch = [_record(f"b{n}") for n in range(size - 1)]
        assert insert_batch(engine, batch + [failed_first]).inserted == size
        # a replay of the whole batch (a segment written, then the process killed before it was deleted)
        assert insert_batch(engine, batch + [failed_first]) == (0, 0, size)
        # the success of the retried call replaces its failure; the new rows of the same batch are written
        fresh = [_record(f"c{n}") for n in range(size - 1)]
        assert insert_batch(engine, [success, *fresh]) == (size - 1, 1, 0)
    finally:
        engine.dispose()
    ids = [rid, *(r["request"]["request_id"] for r in fresh + batch)]
    stored = _stored(log_url, ids)
    assert len(stored) == 2 * size - 1 and stored[rid][5] == 200  # one response row per request


def test_a_value_postgresql_rejects_is_a_row_error_not_an_outage(log_url: str) -> None:
    engine = db_init.make_engine(log_url)
    try:
        bad = _record()
        bad["request"]["status_code"] = "not a number"
        with pytest.raises(DataError) as caught:
            insert_batch(engine, [bad])
        assert is_row_error(caught.value) and getattr(caught.value.orig, "pgcode", "")[:2] == "22"
        good = _record()
        assert insert_batch(engine, [good]).inserted == 1  # the connection is usable after the failure
    finally:
        engine.dispose()


@pytest.mark.parametrize("doc", [
    {"messages": [{"role": "user", "content": "hi"}], "temperature": 0.2, "n": 1, "stream": False},
    {"x": float("nan")}, {"x": [1.0, float("inf")]}, {"text": "nul \x00 inside"}, {"text": "lone \ud800"},
    {"Authorization": "Bearer sk-1"}, {"deep": {"list": [{"API_KEY": "k"}]}}, {"api_\u212aey": "v"},
    {"when": __import__("datetime").datetime(2026, 1, 1)}, {"set": {1, 2}}, {1: "int key"}, "a string",
    {"é": "ünïcode ☃"}, None, [], {"password": ""},
])
def test_storable_gives_jsonables_answer(doc: Any) -> None:
    size: list[int] = [0]
    got = storable(doc, size)
    expected = jsonable(doc)
    assert _same(got, expected), (got, expected)
    assert size[0] > 0


def _same(a: Any, b: Any) -> bool:
    """Equal as stored JSON (a tuple and a list are one JSON array, an int key is its string)."""
    return json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)


def test_storable_returns_a_json_native_document_itself_and_never_lets_a_secret_through() -> None:
    doc = {"messages": [{"role": "user", "content": "hi"}]}
    assert storable(doc, [0]) is doc
    masked = storable({"x": {"X-Api-Key": "sk-secret"}}, [0])
    assert masked == {"x": {"X-Api-Key": "***"}}


@pytest.mark.parametrize("path", ["one statement", "COPY"])
def test_a_connection_killed_under_the_write_is_an_outage_not_a_bad_row(log_url: str, path: str) -> None:
    """PostgreSQL ends the session mid-batch (a restart, a failover): the error must say the connection is
    gone (the writer then spools and reconnects); taken for a row error, the batch would be split and its
    rows stored without their documents."""
    engine, killer = db_init.make_engine(log_url), db_init.make_engine(log_url)
    try:
        raised: list[DBAPIError] = []
        with pytest.raises(DBAPIError), engine.connect() as conn:
            victim = conn.connection.dbapi_connection.info.backend_pid
            with killer.begin() as other:
                other.exec_driver_sql(f"SELECT pg_terminate_backend({victim})")
            try:
                if path == "COPY":
                    with conn.begin():
                        copying.copy_batch(conn, outcome_per_call([_record()]))
                else:
                    bulk.write_batch(conn.execution_options(isolation_level="AUTOCOMMIT"),
                                     outcome_per_call([_record()]))
            except DBAPIError as exc:  # what copy_batch itself raises (the rollback's error would follow it)
                raised.append(exc)
                raise
        assert raised and raised[0].connection_invalidated, repr(raised)
        assert not is_row_error(raised[0])
        assert insert_batch(engine, [_record()]).inserted == 1  # the pool gives a new connection
    finally:
        engine.dispose()
        killer.dispose()


def test_the_upgrade_path_is_one_transaction_even_on_an_autocommit_engine(log_url: str) -> None:
    """The logger's engine is in autocommit (a batch is one statement); ``insert_rows`` writes two tables in
    several statements and must still leave no request row without its response row when one fails."""
    engine = db_init.make_engine(log_url, isolation_level="AUTOCOMMIT")
    try:
        bad = _record()
        bad["response"]["latency_ms"] = "not a number"  # the responses INSERT fails, after the requests one
        with pytest.raises(DBAPIError):
            insert_rows(engine, [bad], outcome_per_call([bad]))
    finally:
        engine.dispose()
    assert _stored(log_url, [bad["request"]["request_id"]]) == {}
    reader = db_init.make_engine(log_url)
    with reader.connect() as conn:
        assert conn.execute(select(db_init.Request.id).where(
            db_init.Request.request_id == bad["request"]["request_id"])).first() is None
    reader.dispose()


def test_a_pooled_connection_the_server_closed_is_replaced_without_spooling(log_url: str, tmp_path) -> None:
    """No pre-ping: the first write on a connection the server ended meanwhile (a restart) fails as a
    broken connection, and the writer sends the batch again on a new one — no outage said, nothing spooled."""
    w = gateway_logger.Writer(gateway_logger.Settings(spool_dir=str(tmp_path), metrics_port=None), url=log_url).start()
    killer = db_init.make_engine(log_url)
    try:
        first = gateway_logger.capture(litellm_call(f"c-{uuid.uuid4()}", "one",
                                                    request_id=gateway_logger.calls.new_request_id()), failed=False)
        w.submit(first)
        assert w.flush(10)
        with killer.begin() as conn:
            ended = conn.exec_driver_sql("SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                                         "WHERE application_name = 'gateway_logger'").scalar_one()
        assert ended >= 1
        second = gateway_logger.capture(litellm_call(f"c-{uuid.uuid4()}", "two",
                                                     request_id=gateway_logger.calls.new_request_id()), failed=False)
        w.submit(second)
        assert w.flush(10)
        snap = w.stats.snapshot()
    finally:
        w.stop()
        killer.dispose()
    assert len(_stored(log_url, [first["request_id"], second["request_id"]])) == 2
    assert (snap["rows_spooled"], snap["connection_losses"], snap["rows_written"]) == (0, 0, 2), snap


def _sessions(killer: Any) -> list[int]:
    with killer.connect() as conn:
        return list(conn.exec_driver_sql("SELECT pid FROM pg_stat_activity WHERE application_name = "
                                         "'gateway_logger' ORDER BY pid").scalars())


def test_the_writer_writes_its_batches_on_one_kept_connection_and_gives_it_back_at_stop(
        log_url: str, tmp_path) -> None:  # noqa: ANN001
    """Ten batches, one at a time: no pool checkout after the first (the engine's own event counts them),
    every batch counted as a use of a connection (the metrics' reuse), one server session; after stop the
    writer holds no session."""
    from sqlalchemy import event

    w = gateway_logger.Writer(gateway_logger.Settings(spool_dir=str(tmp_path), metrics_port=None), url=log_url).start()
    killer = db_init.make_engine(log_url)
    ids = []
    try:
        def one(tag: str) -> None:
            rec = gateway_logger.capture(litellm_call(f"c-{uuid.uuid4()}", tag,
                                                      request_id=gateway_logger.calls.new_request_id()), failed=False)
            ids.append(rec["request_id"])
            w.submit(rec)
            assert w.flush(10)

        one("first")  # the probe's connection is back in the pool; this batch takes one and keeps it
        checkouts: list[int] = []
        event.listen(w.engine, "checkout", lambda *a: checkouts.append(1))
        before = w.stats.snapshot()
        for n in range(10):
            one(f"b{n}")
        after = w.stats.snapshot()
        held = _sessions(killer)
    finally:
        w.stop()
    try:
        assert checkouts == [], "the writer took a connection from the pool for a batch"
        assert after["batches"] - before["batches"] == 10
        assert after["pool_checkouts"] - before["pool_checkouts"] == 10 and after["pool_connects"] == before["pool_connects"]
        assert len(held) >= 1 and len(_stored(log_url, ids)) == 11
        assert _sessions(killer) == [], "the writer's connections outlived its stop"
    finally:
        killer.dispose()

