"""Check 4: this run's call is in the log database — its request row and a linked response.

Artifacts requests_head.txt / responses_head.txt: this run's row(s) found by the chat call's id within a
bounded poll, then the newest rows of each table. Pass = the request row exists with status 200 and
has a linked response with prompt/completion/total token counts.
"""
from __future__ import annotations

import pytest

from acceptance import queries
from fixtures.context import CheckEvidence, RunContext
from fixtures.database import ReaderDb
from fixtures.errors import CheckFailure
from fixtures.inventory import Target

pytestmark = pytest.mark.check("db_rows")

DEFAULT_WAIT_S = 10.0


def test_db_rows(target: Target, db: ReaderDb, run: RunContext, evidence: CheckEvidence) -> None:
    req_doc, resp_doc = evidence.sql("requests_head.txt"), evidence.sql("responses_head.txt")
    call = run.require_call()
    wait_s = float(target.vars.get("db_row_wait_s", DEFAULT_WAIT_S))
    for doc in (req_doc, resp_doc):
        doc.add(f"# this run's call: request_id = {call.call_id} (x-litellm-call-id, sent {call.sent_at}); "
                f"{db.label}")
    with db.read("requests/responses") as conn:
        found = queries.wait_for_call(conn, call.call_id, wait_s)
        poll_note = f"(found after {found.waited_s} s, {found.polls} poll(s), limit {wait_s:g} s)"
        req_doc.add(queries.result(conn, "this run's request", queries.request_by_call_id(call.call_id),
                                   note=poll_note))
        resp_doc.add(queries.result(conn, "this run's response(s)", queries.responses_of_call(call.call_id),
                                    note=poll_note))
        req_doc.add(queries.result(conn, f"newest {queries.HEAD_ROWS} requests", queries.newest_requests()))
        resp_doc.add(queries.result(conn, f"newest {queries.HEAD_ROWS} responses", queries.newest_responses()))
    evidence.details.update(call_id=call.call_id, waited_s=found.waited_s, polls=found.polls)

    if found.request is None:
        raise CheckFailure(f"no row in requests with request_id {call.call_id} after {wait_s:g} s")
    if found.request.status_code != 200:
        raise CheckFailure(f"requests row {found.request.id} for this call has status_code "
                           f"{found.request.status_code}, expected 200")
    if not found.responses:
        raise CheckFailure(f"requests row {found.request.id} has no linked row in responses after {wait_s:g} s")
    resp = found.responses[0]
    missing = [n for n in ("prompt_tokens", "completion_tokens", "total_tokens") if getattr(resp, n) is None]
    if missing:
        raise CheckFailure(f"responses row {resp.id} for this call has no {', '.join(missing)}")
    evidence.details.update(request_pk=found.request.id, response_id=resp.id, total_tokens=resp.total_tokens)
