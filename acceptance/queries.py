"""The SQL of checks 4–5, built with SQLAlchemy from db_init's models (no second copy of the schema),
and of the db_tls check, on PostgreSQL's own statistics views.

``sql_text`` renders a statement for the artifacts exactly as PostgreSQL receives it (literal values),
so a reader can re-run the query by hand.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, Select, column, func, select, table, text, true
from sqlalchemy.dialects import postgresql

from db_init import Request, Response
from evidence_writers.writers import SqlResult

HEAD_ROWS = 5
REQUEST_COLUMNS = (Request.id, Request.created_at, Request.request_id, Request.call_id, Request.route,
                   Request.model, Request.status_code, Request.user_id, Request.api_key, Request.start_time,
                   Request.end_time, Request.payload)
RESPONSE_COLUMNS = (Response.id, Response.created_at, Response.request_id_fk, Response.latency_ms,
                    Response.prompt_tokens, Response.completion_tokens, Response.total_tokens, Response.cost,
                    Response.response_model, Response.content)


def sql_text(stmt: Select) -> str:
    return str(stmt.compile(dialect=postgresql.dialect(), compile_kwargs={"literal_binds": True}))


def result(conn: Connection, title: str, stmt: Select, note: str | None = None) -> SqlResult:
    res = conn.execute(stmt)
    return SqlResult(title=title, sql=sql_text(stmt), columns=list(res.keys()), rows=res.all(), note=note)


def newest_requests(limit: int = HEAD_ROWS) -> Select:
    return select(*REQUEST_COLUMNS).order_by(Request.id.desc()).limit(limit)


def newest_responses(limit: int = HEAD_ROWS) -> Select:
    return select(*RESPONSE_COLUMNS).order_by(Response.id.desc()).limit(limit)


def request_by_id(request_id: str) -> Select:
    """A call's request row, by the logger's own id of it (``x-poc1-request-id``: unique)."""
    return select(*REQUEST_COLUMNS).where(Request.request_id == request_id)


def requests_with_call_id(call_id: str) -> Select:
    """Every request row carrying a LiteLLM call id (a client may reuse one: not unique)."""
    return select(Request.id, Request.request_id, Request.status_code).where(Request.call_id == call_id)


def responses_of_request(request_id: str) -> Select:
    return (select(*RESPONSE_COLUMNS).join(Request, Response.request_id_fk == Request.id)
            .where(Request.request_id == request_id).order_by(Response.id))


def join_for_request(request_id: str) -> Select:
    return (select(Request.id.label("request_pk"), Request.request_id, Request.call_id, Request.model,
                   Request.status_code, Response.id.label("response_id"), Response.latency_ms,
                   Response.prompt_tokens, Response.completion_tokens, Response.total_tokens,
                   Response.response_model)
            .join(Response, Response.request_id_fk == Request.id)
            .where(Request.request_id == request_id))


def _log_tables(layout: str) -> tuple[Any, Any, Any]:
    """(requests, responses, the join condition) of the log's layout: on the partitioned one
    (db_init.PARTITIONED's tables) a response is looked for with its partition key too
    (``request_created_at`` = its request's ``created_at``), so PostgreSQL looks in one responses partition,
    not in each of them (check 5 took 1.8-2.1 s at 10 M rows daily without it)."""
    import db_init

    if layout == "partitioned":
        req, resp = db_init.PARTITIONED.tables["requests"], db_init.PARTITIONED.tables["responses"]
        return req, resp, (resp.c.request_id_fk == req.c.id) & (resp.c.request_created_at == req.c.created_at)
    req, resp = Request.__table__, Response.__table__
    return req, resp, resp.c.request_id_fk == req.c.id


def tally_of_requests(request_ids: list[str], layout: str = "plain", since: Any = None) -> Select:
    """For a set of calls (by their unique request_id, index look-ups only): how many have a request row,
    how many of those have no response, several responses, or (successful ones) a response without
    tokens. Every count can be non-zero: none is ruled out by a constraint.

    ``since``: the calls were all made after it (this run's), so their rows' created_at (the request's time
    on the partitioned layout, the write's on the plain one) is too: on the partitioned layout that keeps
    the look-ups in the run's partitions (by request_id alone PostgreSQL probed every partition: 1.5 s for
    check 6's ~1 000 ids at 10 M rows). A row with an older created_at counts as not found (fails closed)."""
    req, resp, linked = _log_tables(layout)
    n_responses = func.count(resp.c.id)
    tokenless = func.count(resp.c.id).filter((resp.c.total_tokens.is_(None)) | (resp.c.total_tokens == 0))
    per = (select(req.c.id, req.c.status_code, n_responses.label("n"), tokenless.label("tokenless"))
           .select_from(req).outerjoin(resp, linked)
           .where(req.c.request_id.in_(request_ids))
           .where(req.c.created_at >= since if since is not None else true())
           .group_by(req.c.id, req.c.status_code).subquery())
    return select(func.count().label("found"),
                  func.count().filter(per.c.n == 0).label("without_response"),
                  func.count().filter(per.c.n > 1).label("several_responses"),
                  func.count().filter((per.c.status_code < 400) & (per.c.tokenless > 0)).label("without_tokens"))


def window_counts(since: Any, layout: str = "plain") -> dict[str, Select]:
    """Counts over the rows written since ``since`` (bounded by the created_at indexes, so their cost does
    not grow with the table). A request and its response are written in one transaction, so a request
    without one, or with several, is a defect whoever made the call.

    On the partitioned layout the response is looked for with its partition key too (``_log_tables``)."""
    req, resp, linked = _log_tables(layout)
    several = (select(resp.c.request_id_fk).where(resp.c.created_at >= since)
               .group_by(resp.c.request_id_fk).having(func.count() > 1).subquery())
    return {
        "requests_in_window": select(func.count()).select_from(req).where(req.c.created_at >= since),
        "requests_without_response": (
            select(func.count()).select_from(req).where(req.c.created_at >= since)
            .where(~select(resp.c.id).where(linked).exists())),
        "requests_with_several_responses": select(func.count()).select_from(several),
    }


#: the constraints that rule out orphan responses and duplicate request_ids, looked up in pg_catalog
CONSTRAINTS_SQL = """SELECT
  EXISTS (SELECT 1 FROM pg_index i JOIN pg_class c ON c.oid = i.indrelid
          JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum = i.indkey[0]
          WHERE c.relname = 'requests' AND i.indisunique AND i.indnatts = 1 AND a.attname = 'request_id'
            AND i.indisvalid) AS unique_request_id,
  EXISTS (SELECT 1 FROM pg_constraint
          WHERE conrelid = 'responses'::regclass AND contype = 'f' AND confrelid = 'requests'::regclass
            AND confdeltype = 'c' AND convalidated) AS responses_fk_cascade"""


#: the same rules on the partitioned layout (db_init.py create --partition): PostgreSQL wants the partition
#: key in every unique key, so request_id is unique with created_at (the request's time, from its id: one
#: value per request), and each responses partition has its own cascading FK to its period's requests
#: partition (db_init.partition_fk: none on the parents). Counted: partitions of responses, and those
#: without such a validated FK (must be 0)
CONSTRAINTS_SQL_PARTITIONED = """SELECT
  EXISTS (SELECT 1 FROM pg_index i JOIN pg_class c ON c.oid = i.indrelid
          JOIN pg_attribute a0 ON a0.attrelid = c.oid AND a0.attnum = i.indkey[0]
          JOIN pg_attribute a1 ON a1.attrelid = c.oid AND a1.attnum = i.indkey[1]
          WHERE c.relname = 'requests' AND c.relkind = 'p' AND i.indisunique AND i.indnatts = 2
            AND a0.attname = 'request_id' AND a1.attname = 'created_at' AND i.indisvalid) AS unique_request_id,
  (SELECT count(*) FROM pg_inherits WHERE inhparent = 'responses'::regclass) AS response_partitions,
  (SELECT count(*) FROM pg_inherits h
   WHERE h.inhparent = 'responses'::regclass AND NOT EXISTS (
     SELECT 1 FROM pg_constraint k JOIN pg_inherits r ON r.inhrelid = k.confrelid
     WHERE k.conrelid = h.inhrelid AND k.contype = 'f' AND r.inhparent = 'requests'::regclass
       AND k.confdeltype = 'c' AND k.convalidated AND array_length(k.conkey, 1) = 2)) AS partitions_without_fk"""


def constraints_sql(conn: Connection) -> str:
    """The pg_catalog query of the log's layout (plain or partitioned: db_init.layout)."""
    import db_init

    return CONSTRAINTS_SQL_PARTITIONED if db_init.layout(conn) == "partitioned" else CONSTRAINTS_SQL


def integrity_constraints(conn: Connection) -> dict[str, bool]:
    """Each constraint that rules out duplicates and orphans, by name, and whether it is there."""
    sql = constraints_sql(conn)
    row = conn.execute(text(sql)).one()
    if sql is CONSTRAINTS_SQL:
        return {"unique index on requests(request_id)": bool(row.unique_request_id),
                "foreign key responses(request_id_fk) -> requests(id) ON DELETE CASCADE":
                    bool(row.responses_fk_cascade)}
    return {"unique index on requests(request_id, created_at) (partitioned)": bool(row.unique_request_id),
            f"foreign key (request_id_fk, request_created_at) -> its requests partition ON DELETE CASCADE, "
            f"on each of the {row.response_partitions} responses partitions":
                row.response_partitions > 0 and row.partitions_without_fk == 0}


@dataclass
class Found:
    request: Any | None
    responses: list[Any]
    waited_s: float
    polls: int


def wait_for_call(conn: Connection, request_id: str, timeout_s: float, interval_s: float = 0.2) -> Found:
    """Poll (bounded) until the call's request row and at least one linked response are visible.

    The logger writes after the answer has been sent, so the row may lag the HTTP response a little.
    Each poll is its own READ ONLY transaction, so it sees rows committed since the previous one.
    """
    start = time.monotonic()
    polls = 0
    while True:
        polls += 1
        request = conn.execute(request_by_id(request_id)).first()
        responses = conn.execute(responses_of_request(request_id)).all() if request is not None else []
        conn.rollback()
        waited = time.monotonic() - start
        if (request is not None and responses) or waited >= timeout_s:
            return Found(request, responses, round(waited, 3), polls)
        time.sleep(interval_s)


#: PostgreSQL's own views (not the log schema): only the columns the checks read
PG_STAT_ACTIVITY = table("pg_stat_activity", column("pid"), column("usename"), column("datname"),
                         column("client_addr"), column("application_name"), column("backend_start"))
PG_STAT_SSL = table("pg_stat_ssl", column("pid"), column("ssl"), column("version"), column("cipher"),
                    column("bits"))


def tls_of_sessions(user: str, database: str) -> Select:
    """Every session of ``user`` on ``database`` with its TLS state (pg_stat_ssl joined to pg_stat_activity).

    Other roles' rows show their address and TLS state only to a member of pg_read_all_stats."""
    a, s = PG_STAT_ACTIVITY, PG_STAT_SSL
    return (select(a.c.pid, func.host(a.c.client_addr).label("client_addr"), s.c.ssl, s.c.version, s.c.cipher,
                   s.c.bits, a.c.application_name, a.c.backend_start)
            .select_from(a.join(s, s.c.pid == a.c.pid))
            .where(a.c.usename == user, a.c.datname == database)
            .order_by(a.c.backend_start, a.c.pid))


def tls_of_this_session() -> Select:
    """The TLS state of the session running the query (the probe's own link)."""
    s = PG_STAT_SSL
    return select(s.c.ssl, s.c.version, s.c.cipher, s.c.bits).where(s.c.pid == func.pg_backend_pid())
