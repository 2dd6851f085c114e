"""Check 6's durability lag on the partitioned layout: the time a row was *written*, not the request's own
time. On that layout ``requests.created_at`` is the partition key, set by the logger to the time in the
request id (db_init, gateway_logger.bulk.request_time); reading it as the write time made every lag ~0
however late the row came (a GO that could not see a slow writer). The probe reads the response row's
``created_at`` (now() of the transaction that wrote both rows) on both layouts."""
from __future__ import annotations

import secrets
import time
import uuid

import pytest

import db_init
import gateway_logger
from acceptance import overhead_probe as probe
from gateway_logger.calls import _id_tag
from gateway_logger.database import insert_batch
from tests.support.gateway import litellm_call

LATE_S = 30.0


def _issued_ago(seconds: float) -> str:
    """A request id the gateway would have issued ``seconds`` ago (the logger's own form)."""
    nonce = f"{int((time.time() - seconds) * 1000):012x}{secrets.token_hex(10)}"
    return f"gw-{nonce}-{_id_tag(nonce)}"


@pytest.mark.parametrize("layout", ["plain", "daily"])
def test_the_lag_probe_sees_when_a_row_was_written(fresh_db: str, layout: str) -> None:
    db_init.create(fresh_db, None if layout == "plain" else layout)
    rid = _issued_ago(LATE_S)  # taken 30 s ago, written now: a writer 30 s behind
    record = gateway_logger.normalize(gateway_logger.capture(
        litellm_call(f"c-{uuid.uuid4()}", request_id=rid), failed=False))
    engine = db_init.make_engine(fresh_db)
    try:
        before = time.time()
        insert_batch(engine, [record])
        written = probe.written_at(probe.logged_rows(engine, [rid]))
    finally:
        engine.dispose()
    assert set(written) == {rid}
    assert written[rid] >= before - 1.0, (layout, before - written[rid])  # now, not the request's time


@pytest.mark.parametrize("layout", ["plain", "daily"])
def test_a_request_whose_response_was_lost_is_found_without_a_write_time(fresh_db: str, layout: str) -> None:
    """A request row without its response is a defect check 5 must judge: the probe reports it (0 responses,
    no lag), it does not drop it as "not found" (then check 5 never saw it: the CI run of stop 22)."""
    db_init.create(fresh_db, None if layout == "plain" else layout)
    kept, lost = _issued_ago(1.0), _issued_ago(1.0)
    records = [gateway_logger.normalize(gateway_logger.capture(
        litellm_call(f"c-{uuid.uuid4()}", request_id=rid), failed=False)) for rid in (kept, lost)]
    engine = db_init.make_engine(fresh_db)
    try:
        insert_batch(engine, records)
        with engine.begin() as conn:
            conn.exec_driver_sql("DELETE FROM responses WHERE request_id_fk = "
                                 "(SELECT id FROM requests WHERE request_id = %s)", (lost,))
        rows = probe.wait_for_rows(engine, [kept, lost, "gw-never-sent"], timeout_s=0.0)
    finally:
        engine.dispose()
    assert set(rows) == {kept, lost}
    assert rows[kept].responses == 1 and rows[kept].written is not None
    assert rows[lost] == probe.LoggedRow(responses=0, written=None)
    assert set(probe.written_at(rows)) == {kept}
