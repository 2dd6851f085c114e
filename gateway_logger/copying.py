"""A large batch written with PostgreSQL's COPY (``database.insert_batch`` takes it from ``COPY_FROM`` rows).

Why: for a backlog (a burst, a spool replayed after an outage) the rows dominate, not the round trips.
Measured on this machine (500-row batches, loopback): COPY in text format ~35 µs of the gateway's CPU and
~85 µs of wall time per call, against ~48 and ~135 for the one statement of ``bulk`` (whose VALUES list
the server plans and casts row by row). COPY needs a transaction (BEGIN, ``nextval`` for the ids of both
tables, two COPYs, COMMIT): five round trips, which is why small batches do not use it.

COPY has no ``ON CONFLICT``: a batch that meets a row already logged (a replayed spool segment, a retried
call's success after its failure) fails with ``unique_violation``, and ``insert_batch`` writes it with
the one statement instead, which skips duplicates (and hands upgrades to ``insert_rows``).
"""
from __future__ import annotations

import io
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Connection
from sqlalchemy.exc import DBAPIError

import db_init
from gateway_logger.bulk import (
    CREATED_AT,
    DOCUMENTS,
    REQUEST_CREATED_AT,
    TIMES,
    _dbapi,
    driver_error,
    partitioned,
    request_time,
)
from gateway_logger.documents import compact_json

Request, Response = db_init.Request, db_init.Response

#: batches of at least this many calls are copied
COPY_FROM = 64
#: the columns COPY fills (the table's own defaults fill ``id`` of responses and ``created_at``; on the
#: partitioned layout requests.created_at and responses.request_created_at too: ``PARTITIONED_FORMATS``)
REQUEST_COLUMNS = ("id", "request_id", "call_id", "route", "model", "payload", "status_code", "user_id",
                   "api_key", "start_time", "end_time")
RESPONSE_COLUMNS = ("request_id_fk", "latency_ms", "content", "prompt_tokens", "completion_tokens",
                    "total_tokens", "cost", "response_model")
#: SQLSTATE unique_violation: the batch meets rows already logged
UNIQUE_VIOLATION = "23505"
NULL = "\\N"


def _text(value: str) -> str:
    """COPY text format escapes: backslash first, then the three characters that end a field or row."""
    if "\\" in value:
        value = value.replace("\\", "\\\\")
    if "\t" in value or "\n" in value or "\r" in value:
        value = value.replace("\t", "\\t").replace("\n", "\\n").replace("\r", "\\r")
    return value


def _document(value: Any) -> str:
    return _text(compact_json(value))  # JSON null for None, as SQLAlchemy's JSON type stores it


def _time(value: Any) -> str:
    """Epoch seconds, as the INSERT path's ``rows.utc_datetime`` takes them; anything else is NULL."""
    if type(value) is float or type(value) is int:
        return datetime.fromtimestamp(value, UTC).isoformat()
    return NULL


def _scalar(value: Any) -> str:
    kind = type(value)
    if kind is str:
        return _text(value)
    if value is None:
        return NULL
    if kind is int or kind is float:
        return str(value)
    if kind is bool:
        return "t" if value else "f"
    return _text(str(value))


def _formats(columns: tuple[str, ...]) -> tuple[tuple[str, Callable[[Any], str]], ...]:
    return tuple((c, _document if c in DOCUMENTS else _time if c in TIMES else _scalar) for c in columns)


def _stream(rows: Iterable[dict[str, Any]], formats: tuple[tuple[str, Callable[[Any], str]], ...]) -> io.StringIO:
    lines = ["\t".join([fmt(row.get(c)) for c, fmt in formats]) for row in rows]
    return io.StringIO("\n".join(lines) + "\n" if lines else "")


REQUEST_FORMATS, RESPONSE_FORMATS = _formats(REQUEST_COLUMNS), _formats(RESPONSE_COLUMNS)
#: the partitioned layout: the request's time (``bulk.request_time``) in both tables, as its partition key
PARTITIONED_FORMATS = (_formats((*REQUEST_COLUMNS, CREATED_AT)), _formats((*RESPONSE_COLUMNS, REQUEST_CREATED_AT)))


def copy_batch(conn: Connection, chosen: dict[str, dict[str, Any]]) -> int:
    """Copy one record per request id (``rows.outcome_per_call``) into both tables, inside the caller's
    transaction; returns the rows inserted. Raises ``DBAPIError`` (``IntegrityError`` with SQLSTATE 23505
    when a row is already logged: the caller then takes the one-statement path)."""
    records = list(chosen.values())
    if not records:
        return 0
    raw = _dbapi(conn)
    sql = "SELECT nextval(pg_get_serial_sequence(%s, 'id')) FROM generate_series(1, %s)"
    part = partitioned(conn)
    request_formats, response_formats = PARTITIONED_FORMATS if part else (REQUEST_FORMATS, RESPONSE_FORMATS)
    try:
        with raw.cursor() as cur:
            cur.execute(sql, (Request.__tablename__, len(records)))
            ids = [pk for (pk,) in cur.fetchall()]
            requests = [dict(r["request"], id=pk) for r, pk in zip(records, ids)]
            for req in requests:
                req.setdefault("call_id", req["request_id"])  # spooled before migration 0002
            responses = [dict(r["response"], request_id_fk=pk) for r, pk in zip(records, ids)]
            if part:
                for r, req, resp in zip(records, requests, responses):
                    req[CREATED_AT] = resp[REQUEST_CREATED_AT] = request_time(r).isoformat()
            for table, formats, rows in ((Request.__tablename__, request_formats, requests),
                                         (Response.__tablename__, response_formats, responses)):
                sql = f"COPY {table} ({', '.join(c for c, _ in formats)}) FROM STDIN"
                cur.copy_expert(sql, _stream(rows, formats), size=1 << 20)
    except DBAPIError:
        raise
    except Exception as exc:
        error = driver_error(conn, exc, "COPY")
        if error is exc:
            raise
        raise error from exc
    return len(records)


def is_duplicate(exc: BaseException) -> bool:
    return getattr(getattr(exc, "orig", None), "pgcode", None) == UNIQUE_VIOLATION
