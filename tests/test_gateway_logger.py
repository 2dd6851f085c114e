"""The gateway_logger package through a real ``litellm --config config.yaml`` proxy into a real PostgreSQL.

Every answer the gateway gives (200, no-key 401, unknown-model 400, upstream-down 5xx) must become one
``requests`` row with one linked ``responses`` row; the raw key never lands anywhere; the journal line
at start names the database with the password masked. Plus writer-level checks of the sanitizing.
"""
from __future__ import annotations

import base64
import hashlib
import json
import struct
import time
import uuid
from collections.abc import Iterator

import httpx
import pytest
from sqlalchemy import String, cast, func, or_, select

import db_init
import gateway_logger
from tests.support.gateway import (FAIL_ONCE, MODEL, Gateway, litellm_call, logged_rows, rows_with_marker,
                                   wait_for_rows)
from tests.support.pgserver import PgServer


@pytest.fixture(scope="module")
def log_db(pg: PgServer) -> str:
    url = pg.create_database(f"gwlog_{uuid.uuid4().hex[:8]}")
    db_init.create(url)
    return url


@pytest.fixture(scope="module")
def gateway(log_db: str) -> Iterator[Gateway]:
    gw = Gateway(log_db).start()
    try:
        yield gw
    finally:
        gw.cleanup()


@pytest.fixture()
def client() -> Iterator[httpx.Client]:
    with httpx.Client(timeout=30) as c:
        yield c


def _marker() -> str:
    return f"marker-{uuid.uuid4().hex}"


def test_success_is_logged_within_2s_under_the_call_id(gateway: Gateway, log_db: str,
                                                       client: httpx.Client) -> None:
    marker = _marker()
    answer = gateway.chat(client, f"hello {marker}", user="alice")
    assert answer.status_code == 200, answer.text
    call_id = answer.headers["x-poc1-request-id"]
    rows = wait_for_rows(log_db, [call_id], timeout=2.0)
    assert call_id in rows, "no requests row with the response's x-poc1-request-id within 2 s"
    req = rows[call_id]
    assert len(req["responses"]) == 1
    resp = req["responses"][0]
    assert req["status_code"] == 200
    assert req["route"] == "/v1/chat/completions"
    assert req["model"] == "gpt-4o-mini"
    assert req["user_id"] == "alice"
    assert req["api_key"] == "litellm_proxy_master_key"  # LiteLLM's hash marker for the master key
    assert req["payload"]["messages"][0]["content"] == f"hello {marker}"
    assert "metadata" not in req["payload"] and "litellm_call_id" not in req["payload"]
    assert req["start_time"].tzinfo is not None and req["start_time"] <= req["end_time"]
    usage = answer.json()["usage"]
    assert (resp["prompt_tokens"], resp["completion_tokens"], resp["total_tokens"]) == (
        usage["prompt_tokens"], usage["completion_tokens"], usage["total_tokens"])
    assert resp["total_tokens"] > 0
    assert float(resp["cost"]) > 0
    assert resp["response_model"] == "gpt-4o-mini"
    answer_text = answer.json()["choices"][0]["message"]["content"]
    assert resp["content"]["choices"][0]["message"]["content"] == answer_text
    assert 0 <= resp["latency_ms"] < 10_000


def test_no_key_401_is_logged(gateway: Gateway, log_db: str, client: httpx.Client) -> None:
    marker = _marker()
    answer = gateway.chat(client, marker, key=None)
    assert answer.status_code == 401
    rows = rows_with_marker(log_db, marker)
    assert len(rows) == 1, "the 401 was not logged exactly once"
    assert rows[0]["status_code"] == 401
    assert rows[0]["api_key"] == gateway_logger.NO_KEY
    assert len(rows[0]["responses"]) == 1
    assert "No api key" in rows[0]["responses"][0]["content"]["error"]["message"]


def test_unknown_model_400_is_logged(gateway: Gateway, log_db: str, client: httpx.Client) -> None:
    answer = gateway.chat(client, _marker(), model="no-such-model")
    assert answer.status_code == 400
    call_id = answer.headers["x-poc1-request-id"]
    rows = wait_for_rows(log_db, [call_id], timeout=5.0)
    assert rows[call_id]["status_code"] == 400
    assert rows[call_id]["model"] == "no-such-model"
    assert rows[call_id]["responses"][0]["content"]["error"]["code"] == "400"


def test_random_key_is_marked_not_hashed(gateway: Gateway, log_db: str, client: httpx.Client) -> None:
    marker = _marker()
    answer = gateway.chat(client, marker, key="sk-" + uuid.uuid4().hex)
    assert answer.status_code in (400, 401)
    rows = rows_with_marker(log_db, marker)
    assert [r["status_code"] for r in rows] == [answer.status_code]
    assert rows[0]["api_key"] == gateway_logger.INVALID_KEY


def test_nul_character_request_is_logged(gateway: Gateway, log_db: str, client: httpx.Client) -> None:
    marker = _marker()
    answer = gateway.chat(client, f"before\u0000after {marker}")
    assert answer.status_code == 200
    call_id = answer.headers["x-poc1-request-id"]
    rows = wait_for_rows(log_db, [call_id], timeout=5.0)
    assert call_id in rows, "a request with \\u0000 was not logged"
    assert rows[call_id]["payload"]["messages"][0]["content"] == f"before\ufffdafter {marker}"


def test_no_log_in_the_body_cannot_keep_a_call_out_of_the_log(gateway: Gateway, log_db: str,
                                                               client: httpx.Client) -> None:
    """config.yaml sets global_disable_no_log_param: a caller's "no-log": true is ignored."""
    answer = gateway.chat(client, _marker(), **{"no-log": True})
    assert answer.status_code == 200
    request_id = answer.headers["x-poc1-request-id"]
    rows = wait_for_rows(log_db, [request_id], timeout=5.0)
    assert request_id in rows and rows[request_id]["status_code"] == 200


def test_no_secret_lands_in_the_database_or_the_journal(gateway: Gateway, log_db: str, pg: PgServer,
                                                        client: httpx.Client) -> None:
    answer = gateway.chat(client, _marker(), api_key="sk-client-body-secret-123")
    assert answer.status_code in (200, 400, 401)
    time.sleep(1.0)
    secrets = [gateway.master_key, gateway.upstream_key, pg.password, "sk-client-body-secret-123"]
    engine = db_init.make_engine(log_db)
    try:
        with engine.connect() as conn:
            n_rows = conn.execute(select(func.count()).select_from(db_init.Request)).scalar_one()
            assert n_rows > 0
            for secret in secrets:
                joined = select(func.count()).select_from(db_init.Request).join(db_init.Response)
                hits = conn.execute(joined.where(or_(
                    cast(db_init.Request.payload, String).contains(secret),
                    cast(db_init.Response.content, String).contains(secret),
                    db_init.Request.api_key.contains(secret)))).scalar_one()
                assert hits == 0, "a secret was written to the log database"
    finally:
        engine.dispose()
    journal = gateway.log_text()
    for secret in secrets[:3]:
        assert secret not in journal


def test_start_line_names_the_database_with_password_masked(gateway: Gateway, log_db: str,
                                                            pg: PgServer) -> None:
    line = gateway.wait_for_log("gateway_logger: database connection established:")
    assert db_init.mask_url(log_db) in line
    assert f"server=PostgreSQL {pg.psql('SHOW server_version').split()[0]}" in line
    assert f"db={log_db.rsplit('/', 1)[1]}" in line and "user=postgres" in line and "host=127.0.0.1" in line
    assert pg.password not in gateway.log_text()


def test_metrics_are_served_on_loopback(gateway: Gateway, log_db: str, client: httpx.Client) -> None:
    call_id = gateway.chat(client, _marker()).headers["x-poc1-request-id"]
    assert call_id in wait_for_rows(log_db, [call_id], timeout=5.0)
    text = client.get(f"http://127.0.0.1:{gateway.metrics_port}/metrics").text
    values = {line.split()[0]: float(line.split()[1]) for line in text.splitlines()
              if line.startswith("gateway_logger_") and " " in line}
    assert values["gateway_logger_rows_written_total"] >= 1
    assert values["gateway_logger_connected"] == 1
    assert values["gateway_logger_rows_dropped_total"] == 0
    assert "gateway_logger_queue_depth" in values
    assert values["gateway_logger_batch_write_seconds_count"] >= 1
    assert values['gateway_logger_batch_write_seconds_bucket{le="+Inf"}'] == values[
        "gateway_logger_batch_write_seconds_count"]
    assert 1 <= values["gateway_logger_pool_connects_total"] <= values["gateway_logger_pool_checkouts_total"]


def test_upstream_down_5xx_is_logged(gateway: Gateway, log_db: str, client: httpx.Client) -> None:
    gateway.stop_standin()
    try:
        answer = gateway.chat(client, _marker())
    finally:
        gateway.start_standin()
    assert 500 <= answer.status_code <= 599, answer.text
    call_id = answer.headers["x-poc1-request-id"]
    rows = wait_for_rows(log_db, [call_id], timeout=5.0)
    assert rows[call_id]["status_code"] == answer.status_code
    assert rows[call_id]["responses"][0]["content"]["error"]["message"]


def test_call_retried_inside_the_gateway_is_logged_as_its_answer(gateway: Gateway, log_db: str,
                                                                  client: httpx.Client) -> None:
    """The stand-in fails the first attempt; LiteLLM retries under the same call id and answers 200.
    The logger gets a failure event and then a success event for that id: the row must say 200."""
    answer = gateway.chat(client, f"{FAIL_ONCE} {_marker()}")
    assert answer.status_code == 200, answer.text
    assert answer.headers.get("x-litellm-attempted-retries") == "1"  # the failure really happened
    call_id = answer.headers["x-poc1-request-id"]
    rows = wait_for_rows(log_db, [call_id], timeout=5.0)
    time.sleep(0.5)  # a late event for the same id must not change it either
    req = logged_rows(log_db, [call_id])[call_id]
    assert req["status_code"] == 200 and len(req["responses"]) == 1, rows
    usage = answer.json()["usage"]
    assert req["responses"][0]["total_tokens"] == usage["total_tokens"] > 0
    assert "choices" in req["responses"][0]["content"]


# --------------------------------------------------------------------------------------------------
# writer level: two events for one call id (LiteLLM's internal retries), against the real PostgreSQL


@pytest.fixture()
def writer(fresh_db: str, tmp_path) -> Iterator[gateway_logger.Writer]:
    db_init.create(fresh_db)
    w = gateway_logger.Writer(gateway_logger.Settings(
        queue_max=100, batch_max=50, flush_interval_ms=20, spool_dir=str(tmp_path), metrics_port=None),
        url=fresh_db).start()
    try:
        yield w
    finally:
        w.stop(timeout=5)


#: one gateway request id per call id in these tests: the events of one HTTP request (its attempts)
_REQUEST_IDS: dict[str, str] = {}


def _rid(call_id: str) -> str:
    return _REQUEST_IDS.setdefault(call_id, gateway_logger.new_request_id())


def _event(call_id: str, failed: bool) -> dict:
    call = litellm_call(call_id, failed=failed, status=500 if failed else None, request_id=_rid(call_id))
    return gateway_logger.capture(call, failed)


def _outcome(db_url: str, call_id: str) -> tuple[int, list[int | None]]:
    row = logged_rows(db_url, [_rid(call_id)])[_rid(call_id)]
    assert row["call_id"] == call_id
    return row["status_code"], [r["total_tokens"] for r in row["responses"]]


@pytest.mark.parametrize("same_batch", [False, True])
def test_later_success_replaces_an_earlier_failure(writer: gateway_logger.Writer, fresh_db: str,
                                                   same_batch: bool) -> None:
    call_id = f"retry-{uuid.uuid4()}"
    writer.submit(_event(call_id, failed=True))
    if not same_batch:
        assert writer.flush(10)
        assert _outcome(fresh_db, call_id) == (500, [0])  # the failure alone is stored as such
    writer.submit(_event(call_id, failed=False))
    assert writer.flush(10)
    assert _outcome(fresh_db, call_id) == (200, [11])
    snap = writer.stats.snapshot()
    assert (snap["rows_written"], snap["rows_replaced"], snap["rows_duplicate"]) == (
        (1, 1, 0) if not same_batch else (1, 0, 1))


def test_replays_of_an_outcome_do_not_duplicate_and_a_late_failure_changes_nothing(
        writer: gateway_logger.Writer, fresh_db: str) -> None:
    ok_id, failed_id = f"ok-{uuid.uuid4()}", f"failed-{uuid.uuid4()}"
    for events in ([(ok_id, False), (failed_id, True)], [(ok_id, False), (failed_id, True)],
                   [(ok_id, True)]):  # then the same again (a spool replay), then a failure after the success
        for call_id, failed in events:
            writer.submit(_event(call_id, failed))
        assert writer.flush(10)
    assert _outcome(fresh_db, ok_id) == (200, [11])
    assert _outcome(fresh_db, failed_id) == (500, [0])
    snap = writer.stats.snapshot()
    assert (snap["rows_written"], snap["rows_replaced"], snap["rows_duplicate"]) == (2, 0, 3)


# --------------------------------------------------------------------------------------------------
# writer level: what is stored for awkward input


def test_sanitizing_keeps_structure_and_removes_what_postgres_rejects() -> None:
    doc = gateway_logger.jsonable({"a\x00": ["x\x00y", float("nan"), {"api_key": "sk-1", "ok": "\ud800z"}],
                                   "Authorization": "Bearer sk-2", "max_tokens": 5})
    assert doc == {"a\ufffd": ["x\ufffdy", "nan", {"api_key": "***", "ok": "?z"}],
                   "Authorization": "***", "max_tokens": 5}
    json.dumps(doc).encode("utf-8")  # storable as JSONB text


def test_normalized_record_carries_no_upstream_key_and_fits_the_columns() -> None:
    call = litellm_call("c" * 300, "x\x00")
    call["standard_logging_object"]["model_group"] = "m" * 1000
    record = gateway_logger.normalize(gateway_logger.capture(call, failed=False))
    assert "sk-upstream-never-log" not in json.dumps(record)
    assert gateway_logger.issued_request_id(record["request"]["request_id"])  # no hook ran: a fresh own id
    assert len(record["request"]["call_id"]) == db_init.Request.__table__.c.call_id.type.length
    other = gateway_logger.normalize(gateway_logger.capture(litellm_call("c" * 299 + "d"), failed=False))
    assert other["request"]["call_id"] != record["request"]["call_id"]  # over-long ids never collide
    assert len(record["request"]["model"]) == db_init.Request.__table__.c.model.type.length
    assert record["request"]["payload"]["messages"][0]["content"] == "x\ufffd"


def test_payload_is_the_body_the_client_sent() -> None:
    """LiteLLM adds include_usage and its strip flag to a chat stream that asked for no usage."""
    injected = {"model": MODEL, "stream": True, "_litellm_strip_stream_usage": True,
                "stream_options": {"include_usage": True}, "metadata": {}}
    assert gateway_logger.client_body(injected) == {"model": MODEL, "stream": True}
    more = {**injected, "stream_options": {"include_usage": True, "continuous_usage_stats": True}}
    assert gateway_logger.client_body(more)["stream_options"] == {"continuous_usage_stats": True}
    asked = {**injected, "_litellm_strip_stream_usage": False}  # the client's own include_usage stays
    assert gateway_logger.client_body(asked)["stream_options"] == {"include_usage": True}


def test_embedding_vectors_are_summarized_not_stored() -> None:
    vector = [0.5, -0.25]
    raw = struct.pack("<2f", *vector)
    answer = {"object": "list", "model": "m", "data": [
        {"object": "embedding", "index": 0, "embedding": vector},
        {"object": "embedding", "index": 1, "embedding": base64.b64encode(raw).decode()},
        {"object": "embedding", "index": 2, "embedding": "not base64!"}]}
    digest = hashlib.sha256(raw).hexdigest()
    data = gateway_logger.summarize_embeddings(answer)["data"]
    assert data[:2] == [{"object": "embedding", "index": i, "dimensions": 2, "float32_sha256": digest}
                        for i in (0, 1)]  # the same digest for a float list and its base64 form
    assert data[2] == answer["data"][2]  # not a vector it can read: kept as it came
    chat = {"object": "chat.completion", "choices": []}
    assert gateway_logger.summarize_embeddings(chat) is chat


@pytest.mark.parametrize(("exc", "error_code", "key_hash", "expected"), [
    (None, "", "h", 200),
    (type("E", (Exception,), {"status_code": 429})(), "", "h", 429),
    (type("E", (Exception,), {"code": "400"})(), "", "h", 400),
    (Exception("No api key passed in."), "", None, 401),
    (Exception("boom"), "503", "h", 503),
    (Exception("boom"), "", "h", 500),
])
def test_status_code_follows_litellm(exc, error_code, key_hash, expected) -> None:
    captured = {"failed": exc is not None, "exception": exc,
                "slo": {"error_information": {"error_code": error_code},
                        "metadata": {"user_api_key_hash": key_hash}}}
    assert gateway_logger.status_of(captured) == expected


def test_malformed_setting_keeps_default_and_says_so(capsys: pytest.CaptureFixture[str]) -> None:
    settings = gateway_logger.Settings.from_env({"POC1_LOGGER_QUEUE_MAX": "lots",
                                                 "POC1_LOGGER_BATCH_MAX": "7",
                                                 "POC1_LOGGER_METRICS_PORT": ""})
    assert settings.queue_max == gateway_logger.Settings().queue_max and settings.batch_max == 7
    assert settings.metrics_port is None
    assert "POC1_LOGGER_QUEUE_MAX='lots' is not a valid number" in capsys.readouterr().err


def test_journal_lines_survive_logging_reconfiguration(capsys: pytest.CaptureFixture[str]) -> None:
    import logging
    import logging.config

    root = logging.getLogger()
    saved_root = (root.level, list(root.handlers))
    saved_disabled = {name: lg.disabled for name, lg in logging.Logger.manager.loggerDict.items()
                      if isinstance(lg, logging.Logger)}
    try:  # what a framework that takes over logging does
        logging.config.dictConfig({"version": 1, "disable_existing_loggers": True,
                                   "root": {"level": "CRITICAL", "handlers": []}})
        gateway_logger.say("database connection lost: test line")
    finally:  # put the rest of the session's logging back
        root.setLevel(saved_root[0])
        root.handlers[:] = saved_root[1]
        for name, disabled in saved_disabled.items():
            logging.getLogger(name).disabled = disabled
    assert "gateway_logger: database connection lost: test line" in capsys.readouterr().err
    assert logging.getLogger("gateway_logger").propagate is False
