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

from typing import Any

from sqlalchemy import Connection
from sqlalchemy.exc import DBAPIError

import db_init
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


def _statement() -> str:
    req, resp = Request.__tablename__, Response.__tablename__
    columns = [*REQUEST_COLUMNS, *RESPONSE_COLUMNS]
    return (
        f"WITH v ({', '.join(columns)}) AS (VALUES %s), "
        f"ins AS (INSERT INTO {req} ({', '.join(REQUEST_COLUMNS)}) "
        f"SELECT {', '.join(f'v.{c}' for c in REQUEST_COLUMNS)} FROM v "
        f"ON CONFLICT (request_id) DO NOTHING RETURNING id, request_id), "
        f"resp AS (INSERT INTO {resp} (request_id_fk, {', '.join(RESPONSE_COLUMNS)}) "
        f"SELECT ins.id, {', '.join(f'v.{c}' for c in RESPONSE_COLUMNS)} "
        f"FROM ins JOIN v ON v.request_id = ins.request_id) "
        # a data-modifying CTE runs to completion whether or not the query reads it
        f"SELECT request_id FROM ins")


#: the statement, split where the VALUES list goes (built once: it does not depend on the batch)
STATEMENT = _statement()
STATEMENT_HEAD, STATEMENT_TAIL = (part.encode() for part in STATEMENT.split("%s"))
#: one row of the VALUES list: typed placeholders (a column of NULLs would otherwise be text)
TEMPLATE = "(" + ", ".join(f"%s::{t}" for t in (*REQUEST_COLUMNS.values(), *RESPONSE_COLUMNS.values())) + ")"


def _row(record: dict[str, Any]) -> tuple[Any, ...]:
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
    try:
        with raw.cursor() as cur:
            values = b",".join([cur.mogrify(TEMPLATE, _row(r)) for r in records])  # psycopg2's C quoting
            cur.execute(STATEMENT_HEAD + values + STATEMENT_TAIL)
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
