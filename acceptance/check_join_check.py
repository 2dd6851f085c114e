"""Check 5: the request→response link of this run's call, and the integrity of the two tables.

Artifact join_check.txt: the join for each of this run's calls (plain and streamed), then counts over
the whole tables: orphan responses, requests without a response, duplicate request_ids, requests with
several responses. Pass = each call's request joins exactly one response, no orphan responses and no
duplicate request_ids (requests without a response are reported, not failed: a call still being
written is one).
"""
from __future__ import annotations

import pytest

from acceptance import queries
from evidence_writers.writers import SqlResult
from fixtures.context import CheckEvidence, RunContext
from fixtures.database import ReaderDb
from fixtures.errors import CheckFailure
from fixtures.inventory import Target

pytestmark = pytest.mark.check("join_check")


def test_join_check(target: Target, db: ReaderDb, run: RunContext, evidence: CheckEvidence) -> None:
    doc = evidence.sql("join_check.txt")
    calls = run.require_calls()
    wait_s = float(target.vars.get("db_row_wait_s", 10.0))
    doc.add("# this run's calls: " + ", ".join(f"{c.kind} request_id = {c.request_id}" for c in calls)
            + f"; {db.label}")
    counts: dict[str, int] = {}
    problems = []
    linked: dict[str, int] = {}
    with db.read("join and integrity counts") as conn:
        for call in calls:
            request_id = call.request_id or ""
            queries.wait_for_call(conn, request_id, wait_s)  # normally immediate: check 4 waited already
            joined = queries.result(conn, f"this run's {call.kind} request joined to its response",
                                    queries.join_for_request(request_id))
            doc.add(joined)
            linked[call.kind] = len(joined.rows)
            if len(joined.rows) != 1:
                problems.append(f"the {call.kind} call's request joins {len(joined.rows)} responses, "
                                "expected exactly 1")
        rows, sqls = [], []
        for name, stmt in queries.integrity_counts().items():
            counts[name] = int(conn.execute(stmt).scalar_one())
            rows.append((name, counts[name]))
            sqls.append(f"{name}: {queries.sql_text(stmt)}")
        doc.add(SqlResult(title="integrity counts over requests and responses", sql="\n".join(sqls),
                          columns=["check", "count"], rows=rows, truncate=False))
    evidence.details.update(request_ids={c.kind: c.request_id for c in calls}, linked_rows=linked, **counts)
    if counts["orphan_responses"]:
        problems.append(f"{counts['orphan_responses']} orphan response(s)")
    if counts["duplicate_request_ids"]:
        problems.append(f"{counts['duplicate_request_ids']} duplicate request_id(s)")
    if problems:
        raise CheckFailure("; ".join(problems))
