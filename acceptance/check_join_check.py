"""Check 5: every call this run made is logged whole — one request row joined to exactly one response
row with tokens — and the tables hold no half-written call in this run's time window.

It runs after check 6 (acceptance/registry.py: RUN_ORDER), so "this run's calls" are check 3's plain and
streamed calls and every logged request of check 6's benchmark.

Why not counts over the whole tables: on a production database they scan millions of rows (16 s at
10 M rows, past the statement timeout), and two of the old counts could never be non-zero (orphan
responses and duplicate request_ids are impossible under the schema's foreign key and unique index).
Instead: the run's calls are looked up by their ids (index), the window counts are bounded by
``created_at`` (index) to the run's own time, every statement has its own timeout, and the
constraints that make orphans and duplicates impossible are themselves checked in pg_catalog.

Artifact join_check.txt: the join of the plain and the streamed call, the per-call tally of all of the
run's calls, the window counts, the constraints, each with its SQL.
"""
from __future__ import annotations

import time
from datetime import datetime, timedelta

from sqlalchemy import text

import db_init
from acceptance import queries
from acceptance.spec import CheckSpec
from evidence_writers.result import CheckResult
from evidence_writers.writers import SqlResult
from fixtures.context import LoggedRequests, RunbookCalls, RunContext
from fixtures.database import ReaderDb
from fixtures.errors import CheckFailure
from fixtures.inventory import Target

CHECK = CheckSpec("join_check", "Request-to-response join and table integrity",
                  order=5, artifacts=("join_check.txt",), run_last=0)
pytestmark = CHECK.mark

#: every statement of this check gets this much, whatever the table size (the tests fill 10 M rows)
STATEMENT_TIMEOUT_MS = 2000
#: rows of the window are the run's: from its start (minus the clock offset a run can have) to now
WINDOW_MARGIN = timedelta(seconds=30)


def test_join_check(target: Target, db: ReaderDb, run: RunContext, runbook_calls: RunbookCalls,
                    logged_requests: LoggedRequests, evidence: CheckResult) -> None:
    doc = evidence.sql("join_check.txt")
    calls = runbook_calls.require()
    overhead_ids = logged_requests.of("overhead")
    wait_s = float(target.vars.get("db_row_wait_s", 10.0))
    ids = [c.request_id for c in calls if c.request_id] + overhead_ids
    since = datetime.fromisoformat(run.started) - WINDOW_MARGIN
    doc.add("# this run's calls: " + ", ".join(f"{c.kind} request_id = {c.request_id}" for c in calls)
            + (f", and check 6's {len(overhead_ids)} logged requests" if overhead_ids
               else " (check 6 did not run: its requests are not judged)") + f"; {db.label}")
    problems: list[str] = []
    linked: dict[str, int] = {}
    with db.read("join and integrity counts") as conn:
        conn.execute(text(f"SET LOCAL statement_timeout = {STATEMENT_TIMEOUT_MS}"))
        for call in calls:
            request_id = call.request_id or ""
            queries.wait_for_call(conn, request_id, wait_s)  # normally immediate: check 4 waited already
            conn.execute(text(f"SET LOCAL statement_timeout = {STATEMENT_TIMEOUT_MS}"))
            joined = queries.result(conn, f"this run's {call.kind} request joined to its response",
                                    queries.join_for_request(request_id))
            doc.add(joined)
            linked[call.kind] = len(joined.rows)
            if len(joined.rows) != 1:
                problems.append(f"the {call.kind} call's request joins {len(joined.rows)} responses, "
                                "expected exactly 1")
        layout = db_init.layout(conn)
        tally_stmt = queries.tally_of_requests(ids, layout, since)
        t0 = time.monotonic()
        tally = dict(conn.execute(tally_stmt).one()._mapping)
        timings = {"tally_ms": round((time.monotonic() - t0) * 1000, 1)}
        tally["calls"] = len(set(ids))
        shown = queries.sql_text(queries.tally_of_requests(ids[:3], layout, since))  # the whole id list would be KBs
        doc.add(SqlResult(title=f"this run's {len(set(ids))} calls, one by one",
                          sql=shown + (f"\n-- (the first 3 of the {len(ids)} ids shown)" if len(ids) > 3 else ""),
                          columns=list(tally), rows=[tuple(tally.values())], truncate=False))
        counts = queries.window_counts(since, layout)
        window = {}
        for name, stmt in counts.items():
            t0 = time.monotonic()
            window[name] = int(conn.execute(stmt).scalar_one())
            timings[f"{name}_ms"] = round((time.monotonic() - t0) * 1000, 1)
        doc.add(SqlResult(title=f"rows written since {since.isoformat(timespec='seconds')} (this run's window)",
                          sql="\n".join(f"{n}: {queries.sql_text(stmt)}" for n, stmt in counts.items()),
                          columns=["count", "value"], rows=list(window.items()), truncate=False))
        constraints = queries.integrity_constraints(conn)
        doc.add(SqlResult(title="constraints that rule out orphan responses and duplicate request_ids",
                          sql=queries.constraints_sql(conn), columns=["constraint", "present"],
                          rows=list(constraints.items()), truncate=False))
    evidence.details.update(request_ids={c.kind: c.request_id for c in calls}, linked_rows=linked,
                            run_calls=tally, window=window, constraints=constraints, layout=layout,
                            query_ms=timings)

    missing = tally["calls"] - tally["found"]
    if missing:
        problems.append(f"{missing} of this run's {tally['calls']} calls have no request row")
    if tally["without_response"]:
        problems.append(f"{tally['without_response']} of this run's calls have no response row")
    if tally["several_responses"]:
        problems.append(f"{tally['several_responses']} of this run's calls have several response rows")
    if tally["without_tokens"]:
        problems.append(f"{tally['without_tokens']} of this run's successful calls have a response without tokens")
    if window["requests_without_response"]:
        problems.append(f"{window['requests_without_response']} request(s) written in this run's window "
                        "have no response row")
    if window["requests_with_several_responses"]:
        problems.append(f"{window['requests_with_several_responses']} request(s) written in this run's "
                        "window have several response rows")
    absent = [name for name, present in constraints.items() if not present]
    if absent:
        problems.append(f"constraint(s) missing: {', '.join(absent)} (db_init.py validate)")
    if problems:
        raise CheckFailure("; ".join(problems))
