"""Check 4: this run's calls are in the log database — the plain call and the streamed one, each with
its request row and one linked response.

Artifacts requests_head.txt / responses_head.txt: each call's row(s), found by the logger's own request
id (``x-poc1-request-id``) within a bounded poll, the rows carrying the same LiteLLM call id, then the
newest rows of each table. Pass, for every call: the request row exists with status 200, exactly one
linked response with prompt/completion/total token counts; for the streamed call the response also
says it was streamed and its tokens equal the usage chunk the client received.
"""
from __future__ import annotations

from typing import Any

from acceptance import queries
from acceptance.spec import CheckSpec
from evidence_writers.result import CheckResult
from fixtures.context import CallRecord, RunbookCalls
from fixtures.database import ReaderDb
from fixtures.errors import CheckFailure
from fixtures.inventory import Target

CHECK = CheckSpec("db_rows", "This run's requests (plain and streamed) and their responses are logged",
                  order=4, artifacts=("requests_head.txt", "responses_head.txt"))
pytestmark = CHECK.mark

DEFAULT_WAIT_S = 10.0
TOKENS = ("prompt_tokens", "completion_tokens", "total_tokens")


def judge(call: CallRecord, found: queries.Found, same_call_id: list[Any], wait_s: float) -> str | None:
    """The first reason this call's rows do not sign off, or None."""
    label = f"{call.kind} call {call.request_id}"
    if found.request is None:
        return f"{label}: no row in requests after {wait_s:g} s"
    if found.request.status_code != 200:
        return (f"{label}: requests row {found.request.id} has status_code {found.request.status_code}, "
                "expected 200")
    if call.call_id and found.request.call_id != call.call_id:
        return (f"{label}: requests row {found.request.id} has call_id {found.request.call_id}, "
                f"the answer said {call.call_id}")
    if len(same_call_id) != 1:
        return f"{label}: {len(same_call_id)} requests rows carry its call id {call.call_id}, expected 1"
    if not found.responses:
        return f"{label}: requests row {found.request.id} has no linked row in responses after {wait_s:g} s"
    if len(found.responses) != 1:
        return f"{label}: requests row {found.request.id} has {len(found.responses)} responses, expected 1"
    resp = found.responses[0]
    missing = [n for n in TOKENS if not getattr(resp, n)]
    if missing:
        return f"{label}: responses row {resp.id} has no {', '.join(missing)}"
    if call.kind == "stream":
        notes = (resp.content or {}).get("gateway_logger") if isinstance(resp.content, dict) else None
        if not (isinstance(notes, dict) and notes.get("stream") is True):
            return (f"{label}: responses row {resp.id} does not say the call was streamed "
                    "(content.gateway_logger)")
        usage = call.usage or {}
        differ = [f"{n} {getattr(resp, n)} != {usage.get(n)}" for n in TOKENS
                  if getattr(resp, n) != usage.get(n)]
        if differ:
            return f"{label}: responses row {resp.id} tokens differ from the usage chunk: {', '.join(differ)}"
    return None


def test_db_rows(target: Target, db: ReaderDb, runbook_calls: RunbookCalls, evidence: CheckResult) -> None:
    req_doc, resp_doc = evidence.sql("requests_head.txt"), evidence.sql("responses_head.txt")
    calls = runbook_calls.require()
    wait_s = float(target.vars.get("db_row_wait_s", DEFAULT_WAIT_S))
    causes: list[str] = []
    with db.read("requests/responses") as conn:
        for call in calls:
            for doc in (req_doc, resp_doc):
                doc.add(f"# this run's {call.kind} call: request_id = {call.request_id} "
                        f"(x-poc1-request-id), call_id = {call.call_id} (x-litellm-call-id), "
                        f"sent {call.sent_at}; {db.label}")
            found = queries.wait_for_call(conn, call.request_id or "", wait_s)
            note = f"(found after {found.waited_s} s, {found.polls} poll(s), limit {wait_s:g} s)"
            req_doc.add(queries.result(conn, f"this run's {call.kind} request", queries.request_by_id(
                call.request_id or ""), note=note))
            same = queries.result(conn, f"requests rows with its call id {call.call_id}",
                                  queries.requests_with_call_id(call.call_id or ""))
            req_doc.add(same)
            resp_doc.add(queries.result(conn, f"this run's {call.kind} response(s)",
                                        queries.responses_of_request(call.request_id or ""), note=note))
            cause = judge(call, found, same.rows, wait_s)
            if cause:
                causes.append(cause)
            evidence.details[call.kind] = {
                "request_id": call.request_id, "call_id": call.call_id, "waited_s": found.waited_s,
                "polls": found.polls, "request_pk": found.request.id if found.request else None,
                "responses": len(found.responses),
                "total_tokens": found.responses[0].total_tokens if found.responses else None}
        req_doc.add(queries.result(conn, f"newest {queries.HEAD_ROWS} requests", queries.newest_requests()))
        resp_doc.add(queries.result(conn, f"newest {queries.HEAD_ROWS} responses", queries.newest_responses()))
    if causes:
        raise CheckFailure("; ".join(causes))
