"""The database side of the writer that holds no state: where the URL comes from, how a failed write is
told apart (the rows' fault, or an outage), and the SQL of one batch transaction."""
from __future__ import annotations

import contextlib
import os
import sys
import time
from typing import Any

from sqlalchemy import Connection, Engine, delete
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.exc import DBAPIError, StatementError

import db_init
from gateway_logger import bulk, copying
from gateway_logger.rows import FAILED_FROM, Written, outcome_per_call, succeeded, utc_datetime

Request, Response = db_init.Request, db_init.Response


class Outage(Exception):
    """The database cannot take writes now (down, frozen, refusing): these rows must wait."""

    def __init__(self, rows: list[dict[str, Any]]) -> None:
        super().__init__(f"{len(rows)} row(s) not written")
        self.rows = rows


_ROW_ERROR_CLASSES = ("22", "23")  # SQLSTATE classes that belong to one row's data


def is_row_error(exc: BaseException) -> bool:
    if isinstance(exc, DBAPIError):
        if exc.connection_invalidated:
            return False
        code = getattr(exc.orig, "pgcode", None) or ""
        return code[:2] in _ROW_ERROR_CLASSES
    if isinstance(exc, StatementError):  # raised before the server saw it (encoding, JSON)
        return True
    return isinstance(exc, (ValueError, TypeError, UnicodeError))


def resolve_db_url() -> str | None:
    """``general_settings.gateway_logger_db_url`` of the running proxy, else ``$POC1_DB_URL``."""
    proxy = sys.modules.get("litellm.proxy.proxy_server")
    value = ((getattr(proxy, "general_settings", None) or {}).get("gateway_logger_db_url")
             if proxy is not None else None)
    if isinstance(value, str) and value.startswith("os.environ/"):
        value = os.environ.get(value.split("/", 1)[1])
    return value or os.environ.get(db_init.URL_ENV) or None


#: libpq keepalives: a vanished host (not a frozen process: its kernel still ACKs) is noticed in ~25 s
KEEPALIVES = {"keepalives": 1, "keepalives_idle": 10, "keepalives_interval": 5, "keepalives_count": 3,
              "tcp_user_timeout": 20_000}


def insert_batch(engine: Engine, records: list[dict[str, Any]], test_delay_ms: int = 0,
                 conn: Connection | None = None) -> Written:
    """Both tables in one statement and one round trip (``bulk``), or with COPY for a batch of at least
    ``copying.COPY_FROM`` calls that meets no row already logged; records of calls already logged that
    would upgrade a failure to a success, the INSERT path's way (``insert_rows``). ``conn``: a connection
    the caller keeps for the one statement (the writer's, ``Batches._connection``), else one from the pool.
    ``test_delay_ms``: TEST ONLY (``POC1_LOGGER_TEST_DELAY_MS``), a sleep before the write."""
    chosen = outcome_per_call(records)
    if len(chosen) >= copying.COPY_FROM:  # a backlog: the rows cost more than the round trips
        try:
            copied = _copy(engine, records, chosen, test_delay_ms)
        except DBAPIError as exc:
            if not copying.is_duplicate(exc):
                raise
        else:
            if copied is not None:
                return copied
    with contextlib.nullcontext(conn) if conn is not None else engine.connect() as used:
        inserted = None
        if bulk.usable(used):
            if not bulk.autocommit(used):  # the logger's engine is; a tool's may not be
                used = used.execution_options(isolation_level="AUTOCOMMIT")
            _test_delay(test_delay_ms)
            inserted = bulk.write_batch(used, chosen)
    if inserted is None:
        return insert_rows(engine, records, chosen, test_delay_ms)
    upgrades = {rid: r for rid, r in chosen.items() if rid not in inserted and succeeded(r["request"])}
    if not upgrades:
        return Written(len(inserted), 0, len(records) - len(inserted))
    more = insert_rows(engine, list(upgrades.values()), upgrades)
    done = len(inserted) + more.inserted + more.replaced
    return Written(len(inserted) + more.inserted, more.replaced, len(records) - done)


def _copy(engine: Engine, records: list[dict[str, Any]], chosen: dict[str, dict[str, Any]],
          test_delay_ms: int) -> Written | None:
    """``copying.copy_batch`` in a transaction (of its own, also on the logger's autocommit engine); None
    if the driver cannot COPY."""
    with engine.connect() as conn:
        if not bulk.usable(conn):
            return None
        conn.execution_options(isolation_level="READ COMMITTED")  # back to the engine's at check-in
        with conn.begin():
            _test_delay(test_delay_ms)
            inserted = copying.copy_batch(conn, chosen)
    return Written(inserted, 0, len(records) - inserted)


def _test_delay(test_delay_ms: int) -> None:
    if test_delay_ms:  # TEST ONLY (see the settings). Before the first statement,
        # so the transaction (and created_at = now()) starts after it: the lag is visible in the rows.
        time.sleep(test_delay_ms / 1000.0)


def insert_rows(engine: Engine, records: list[dict[str, Any]], chosen: dict[str, dict[str, Any]],
                test_delay_ms: int = 0) -> Written:
    """One transaction: multi-row INSERT of requests (ON CONFLICT DO NOTHING, RETURNING id), then
    the upgrade of earlier failures by later successes of the same calls, then the responses. In a
    transaction of its own even on an autocommit engine (the logger's)."""
    req_params = []
    for r in chosen.values():
        p = dict(r["request"])
        p.setdefault("call_id", p["request_id"])  # spooled before migration 0002: request_id = call id
        p["start_time"], p["end_time"] = utc_datetime(p.get("start_time")), utc_datetime(p.get("end_time"))
        req_params.append(p)
    with engine.connect() as conn:
        conn.execution_options(isolation_level="READ COMMITTED")  # back to the engine's at check-in
        with conn.begin():
            part = bulk.partitioned(conn)  # the partitioned layout: the request's time is part of the keys
            requests, responses = bulk.tables(part)
            if part:
                for p, r in zip(req_params, chosen.values()):
                    p[bulk.CREATED_AT] = bulk.request_time(r)
            at = {p["request_id"]: {bulk.REQUEST_CREATED_AT: p[bulk.CREATED_AT]} if part else {} for p in req_params}
            stmt = (pg_insert(requests).on_conflict_do_nothing(index_elements=bulk.conflict_key(part))
                    .returning(requests.c.id, requests.c.request_id))
            _test_delay(test_delay_ms)
            ids = {rid: pk for pk, rid in conn.execute(stmt, req_params).all()}
            # rare path: a call already logged; a success replaces a failure logged for it before
            successes = [p for p in req_params if p["request_id"] not in ids and succeeded(p)]
            replaced = replace_failures(conn, successes, part) if successes else {}
            resp_params = [dict(chosen[rid]["response"], request_id_fk=pk, **at[rid])
                           for rid, pk in (*ids.items(), *replaced.items())]
            if resp_params:
                conn.execute(pg_insert(responses), resp_params)
    return Written(len(ids), len(replaced), len(records) - len(ids) - len(replaced))


def replace_failures(conn: Any, successes: list[dict[str, Any]], partitioned: bool = False) -> dict[str, int]:
    """LiteLLM retries inside one call: the failed attempt's event can come first, under the same
    call id, then the success the client got. Upgrade such rows (request_id -> id) and drop the
    failure's response row; a row already logged as a success is left as it is."""
    requests, responses = bulk.tables(partitioned)
    key = bulk.conflict_key(partitioned)
    stmt = pg_insert(requests)
    columns = [c for c in successes[0] if c not in key]
    stmt = (stmt.on_conflict_do_update(
        index_elements=key, set_={c: stmt.excluded[c] for c in columns},
        where=(requests.c.status_code >= FAILED_FROM) & (stmt.excluded.status_code < FAILED_FROM))
        .returning(requests.c.id, requests.c.request_id))
    replaced = {rid: pk for pk, rid in conn.execute(stmt, successes).all()}
    if replaced:
        conn.execute(delete(responses).where(responses.c.request_id_fk.in_(list(replaced.values()))))
    return replaced
