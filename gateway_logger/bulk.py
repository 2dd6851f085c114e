"""A batch written in one statement and one round trip: the fast path of ``database.insert_batch``.

Why (issue 14; profiles in POC-1/FINDINGS.md §3): group commit makes batches small when the gateway is
not saturated — often one call — so what a *transaction* costs the gateway's process matters as much as
what a row costs. The INSERT path through SQLAlchemy took ~110 µs of CPU per row (parameters compiled
per row, JSON serialised, then quoted) plus five round trips per batch (pre-ping, BEGIN, two INSERTs,
COMMIT); on a saturated gateway every round trip also waits for the GIL, up
to the interpreter's 5 ms switch interval, behind LiteLLM's event loop. Here a batch is one statement,
sent in autocommit (a single statement is atomic by itself): the rows as one ``VALUES`` list quoted by
psycopg2's C code, inserted into ``requests`` with ``ON CONFLICT (request_id) DO NOTHING``, and the
responses of exactly the rows inserted, joined on the request id, by the same statement (a data-modifying
CTE). So a replay never duplicates, a request row never exists without its response row, and the batch
costs one round trip (the logger's engine has no pre-ping: ``Batches._insert``).

Calls already logged that this batch's records would upgrade (a retried call's success after its failure)
are left to ``database.insert_rows``, which does that in a transaction of its own; ``insert_batch`` calls
it only for such records. Driver errors are raised as SQLAlchemy's ``DBAPIError`` kinds (a broken
connection invalidated and said so), so the writer tells a bad row from an outage as for its own
statements.
"""
from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Connection
from sqlalchemy.exc import DBAPIError

import db_init
from gateway_logger.calls import request_id_time
from gateway_logger.documents import compact_json
from gateway_logger.rows import utc_datetime

Request, Response = db_init.Request, db_init.Response

#: the columns the logger fills, and the SQL type of each value in the VALUES list
REQUEST_COLUMNS = {"request_id": "text", "call_id": "text", "route": "text", "model": "text", "payload": "jsonb",
                   "status_code": "integer", "user_id": "text", "api_key": "text",
                   "start_time": "timestamptz", "end_time": "timestamptz"}
RESPONSE_COLUMNS = {"latency_ms": "integer", "content": "jsonb", "prompt_tokens": "integer",
                    "completion_tokens": "integer", "total_tokens": "integer", "cost": "text",
                    "response_model": "text"}
DOCUMENTS = frozenset({"payload", "content"})
TIMES = frozenset({"start_time", "end_time"})  # epoch seconds in the record, timestamptz in the table


def _statement(partitioned: bool = False) -> str:
    """The batch's statement; on the partitioned layout (``db_init.PARTITIONED``) the request's time is a
    value of the batch (``created_at``, part of the unique key a replay meets) and the responses carry it."""
    req, resp = Request.__tablename__, Response.__tablename__
    req_columns = [*REQUEST_COLUMNS, *([CREATED_AT] if partitioned else [])]
    columns = [*REQUEST_COLUMNS, *RESPONSE_COLUMNS, *([CREATED_AT] if partitioned else [])]
    key = ", ".join(conflict_key(partitioned))
    returned, fk, fk_values = (("id, request_id, created_at", f"request_id_fk, {REQUEST_CREATED_AT}",
                                "ins.id, ins.created_at") if partitioned else
                               ("id, request_id", "request_id_fk", "ins.id"))
    return (
        f"WITH v ({', '.join(columns)}) AS (VALUES %s), "
        f"ins AS (INSERT INTO {req} ({', '.join(req_columns)}) "
        f"SELECT {', '.join(f'v.{c}' for c in req_columns)} FROM v "
        f"ON CONFLICT ({key}) DO NOTHING RETURNING {returned}), "
        f"resp AS (INSERT INTO {resp} ({fk}, {', '.join(RESPONSE_COLUMNS)}) "
        f"SELECT {fk_values}, {', '.join(f'v.{c}' for c in RESPONSE_COLUMNS)} "
        f"FROM ins JOIN v ON v.request_id = ins.request_id) "
        # a data-modifying CTE runs to completion whether or not the query reads it
        f"SELECT request_id FROM ins")


#: the partition keys of the partitioned layout (db_init.PARTITION_KEY)
CREATED_AT, REQUEST_CREATED_AT = db_init.PARTITION_KEY["requests"], db_init.PARTITION_KEY["responses"]


def conflict_key(partitioned: bool) -> list[str]:
    """The unique key a replayed row meets: ``request_id``; with the partition key on that layout."""
    return ["request_id", CREATED_AT] if partitioned else ["request_id"]


def tables(partitioned: bool) -> tuple[Any, Any]:
    """The requests and responses tables of the live layout (for statements built with SQLAlchemy)."""
    if partitioned:
        return db_init.PARTITIONED.tables[Request.__tablename__], db_init.PARTITIONED.tables[Response.__tablename__]
    return Request.__table__, Response.__table__


#: a call lasts at most this long (its id's time is before its end by less); the clocks may differ this much
CALL_MAX_S, CLOCK_SLACK_S = 86_400.0, 300.0


def request_time(record: dict[str, Any]) -> datetime:
    """The partitioned layout's ``created_at`` of a record: the time in its request id (when the gateway
    took the request: the same for each event of it and for a replay). An id without a time that fits the
    call (issued before the time was put in it, or not the logger's) falls back to the record's own end,
    else start: still the same on a replay of the same record."""
    req = record["request"]
    end, start = req.get("end_time"), req.get("start_time")
    anchor = next((t for t in (end, start) if isinstance(t, (int, float))), None)
    issued = request_id_time(req.get("request_id"))
    if issued is not None and (anchor is None or anchor - CALL_MAX_S <= issued <= anchor + CLOCK_SLACK_S):
        return datetime.fromtimestamp(issued, UTC)
    return datetime.fromtimestamp(anchor if anchor is not None else time.time(), UTC)


#: where a connection's layout is kept (``Connection.connection.info``: lives as long as the DBAPI connection)
LAYOUT_INFO = "poc1_partitioned"


def partitioned(conn: Connection) -> bool:
    """Whether the log tables are partitioned, asked once per DBAPI connection (``db_init.layout``; not
    kept while there are no tables yet, so a connection made before ``create`` asks again)."""
    info = conn.connection.info
    if LAYOUT_INFO not in info:
        found = db_init.layout(conn)
        if found not in ("plain", "partitioned"):
            return False
        info[LAYOUT_INFO] = found == "partitioned"
    return bool(info[LAYOUT_INFO])


#: the statement, split where the VALUES list goes (built once: it does not depend on the batch)
STATEMENT = _statement()
STATEMENT_HEAD, STATEMENT_TAIL = (part.encode() for part in STATEMENT.split("%s"))
#: one row of the VALUES list: typed placeholders (a column of NULLs would otherwise be text)
TEMPLATE = "(" + ", ".join(f"%s::{t}" for t in (*REQUEST_COLUMNS.values(), *RESPONSE_COLUMNS.values())) + ")"
#: the same on the partitioned layout: the request's time last
PARTITIONED_STATEMENT = _statement(partitioned=True)
PARTITIONED_HEAD, PARTITIONED_TAIL = (part.encode() for part in PARTITIONED_STATEMENT.split("%s"))
PARTITIONED_TEMPLATE = TEMPLATE[:-1] + ", %s::timestamptz)"


def _row(record: dict[str, Any], partitioned: bool = False) -> tuple[Any, ...]:
    req, resp = record["request"], record["response"]
    values: list[Any] = []
    for part, columns in ((req, REQUEST_COLUMNS), (resp, RESPONSE_COLUMNS)):
        for c in columns:
            v = part.get(c)
            if c in DOCUMENTS:
                v = compact_json(v)  # JSON null for None, as SQLAlchemy's JSON type stores it
            elif c in TIMES:
                v = utc_datetime(v)  # as the INSERT path: the same microsecond as Python rounds it
            values.append(v)
    if values[1] is None:
        values[1] = values[0]  # spooled before migration 0002: request_id = call id
    if partitioned:
        values.append(request_time(record))
    return tuple(values)


def usable(conn: Connection) -> bool:
    """The fast paths (this one statement, and COPY in ``copying``) need psycopg2, the project's driver;
    another driver takes the INSERT path."""
    return type(_dbapi(conn)).__module__.split(".")[0] == "psycopg2"


def autocommit(conn: Connection) -> bool:
    return bool(getattr(_dbapi(conn), "autocommit", False))


def _dbapi(conn: Connection) -> Any:
    return conn.connection.dbapi_connection


def write_batch(conn: Connection, chosen: dict[str, dict[str, Any]]) -> set[str]:
    """Insert one record per request id (``rows.outcome_per_call``) into both tables, on a connection in
    autocommit; returns the request ids inserted (the others were logged already). Raises ``DBAPIError``."""
    records = list(chosen.values())
    if not records:
        return set()
    raw = _dbapi(conn)
    part = partitioned(conn)
    template, head, tail = ((PARTITIONED_TEMPLATE, PARTITIONED_HEAD, PARTITIONED_TAIL) if part
                            else (TEMPLATE, STATEMENT_HEAD, STATEMENT_TAIL))
    try:
        with raw.cursor() as cur:
            values = b",".join([cur.mogrify(template, _row(r, part)) for r in records])  # psycopg2's C quoting
            cur.execute(head + values + tail)
            return {rid for (rid,) in cur.fetchall()}
    except DBAPIError:
        raise
    except Exception as exc:
        error = driver_error(conn, exc, STATEMENT)
        if error is exc:
            raise
        raise error from exc


def driver_error(conn: Connection, exc: Exception, statement: str) -> Exception:
    """The driver's error as SQLAlchemy raises it for its own statements: its ``DBAPIError`` kind, and a
    broken connection invalidated and said so, so the writer takes it for an outage (spool, reconnect),
    never for a bad row. An error that is not the driver's (a value that cannot be sent) stays as it is:
    the writer treats it as a row error."""
    raw = _dbapi(conn)
    if type(exc).__module__.split(".")[0] != type(raw).__module__.split(".")[0]:
        return exc
    gone = bool(conn.dialect.is_disconnect(exc, raw, None))
    if gone:
        conn.invalidate(exc)
    return DBAPIError.instance(statement, None, exc, _base_error(exc), connection_invalidated=gone,
                               dialect=conn.dialect)


def _base_error(exc: BaseException) -> type[BaseException]:
    """The driver's DB-API ``Error`` class, from the exception's own class hierarchy."""
    for cls in type(exc).__mro__:
        if cls.__name__ == "Error" and cls.__module__.split(".")[0] == type(exc).__module__.split(".")[0]:
            return cls
    return Exception
