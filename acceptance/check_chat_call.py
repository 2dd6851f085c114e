"""Check 3: the runbook's curl call, made with httpx, returns HTTP 200 with a completion — and the same
call streamed, as most real clients (the openai SDK with ``stream=True``) make it.

Artifacts: chat_call.json — the request (Authorization redacted), the equivalent curl line (the key as
``${ENV_NAME}``, so it can be pasted without the secret ever being written), status, headers, body and
latency; chat_stream.json — the streamed call: every SSE event as received, the assembled completion,
the usage chunk, time to first token and total time. ``x-poc1-request-id`` (the logger's own id of the
request) of each is what checks 4–5 look for.
"""
from __future__ import annotations

import json
import shlex
import time
from datetime import datetime, timezone
from typing import Any

import httpx

from acceptance.spec import CheckSpec
from evidence_writers.redaction import clip
from evidence_writers.result import CheckResult
from evidence_writers.writers import Document
from fixtures.context import CallRecord, RunbookCalls
from fixtures.errors import CheckFailure, failing_as, one_line
from fixtures.inventory import Target
from fixtures.lazy import Lazy

CHECK = CheckSpec("chat_call", "Runbook chat call returns HTTP 200 with a completion, plain and streamed",
                  order=3, artifacts=("chat_call.json", "chat_stream.json"))
pytestmark = CHECK.mark

CALL_ID_HEADER = "x-litellm-call-id"
REQUEST_ID_HEADER = "x-poc1-request-id"
MAX_BODY_CHARS = 20_000
MAX_EVENTS_KEPT = 200


def runbook_body(target: Target) -> dict:
    return {"model": str(target.vars.get("chat_model", "gpt-4o-mini")),
            "messages": [{"role": "user", "content": "hello"}]}


def stream_body(target: Target) -> dict:
    return {**runbook_body(target), "stream": True, "stream_options": {"include_usage": True}}


def curl_line(url: str, body: str, key_env: str, stream: bool = False) -> str:
    return (f"curl -sS{'N' if stream else ''} -X POST {shlex.quote(url)} -H 'Content-Type: application/json' "
            f"-H \"Authorization: Bearer ${{{key_env}}}\" -d {shlex.quote(body)}")


def completion_text(payload: object) -> str | None:
    try:
        content = payload["choices"][0]["message"]["content"]  # type: ignore[index]
    except (KeyError, IndexError, TypeError):
        return None
    return content if isinstance(content, str) and content.strip() else None


def error_text(payload: object, raw: str) -> str:
    if isinstance(payload, dict) and isinstance(payload.get("error"), dict):
        return str(payload["error"].get("message") or payload["error"])
    if isinstance(payload, dict) and "detail" in payload:
        return str(payload["detail"])
    return clip(raw, 200)


def _refusal_hint(status: int, message: str, key_env: str) -> str:
    if status in (401, 403) or (status == 400 and "No connected db" in message):
        # LiteLLM without its own key database answers a key other than the master key with 400
        return f" (the gateway refused the key from {key_env}: is it the gateway's master key?)"
    return ""


def _request_doc(url: str, body: str, key_env: str, sent_at: str, stream: bool = False) -> dict[str, Any]:
    return {"method": "POST", "url": url, "sent_at": sent_at,
            "headers": {"Content-Type": "application/json", "Authorization": "Bearer ***"},
            "body": json.loads(body), "curl": curl_line(url, body, key_env, stream)}


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


def plain_call(target: Target, client: httpx.Client, doc: Any) -> CallRecord:
    url = str(target.vars["gateway_url"]).rstrip("/") + "/v1/chat/completions"
    body = json.dumps(runbook_body(target), separators=(",", ":"))
    key_env = str(target.vars["master_key_env"])
    sent_at = _now()
    request = _request_doc(url, body, key_env, sent_at)
    doc["curl"] = request.pop("curl")
    doc["request"] = request
    record = CallRecord(passed=False, call_id=None, status=None, sent_at=sent_at, cause="request not sent")
    t0 = time.perf_counter()
    try:
        with failing_as(f"POST {url}"):
            resp = client.post(url, content=body, headers={"Content-Type": "application/json",
                                                          "Authorization": f"Bearer {target.master_key}"})
    except CheckFailure as exc:
        record.cause = doc["error"] = str(exc)
        doc["latency_ms"] = round((time.perf_counter() - t0) * 1000, 1)
        return record
    latency_ms = round((time.perf_counter() - t0) * 1000, 1)
    raw = resp.text
    try:
        payload: object = resp.json()
    except ValueError:
        payload = clip(raw, MAX_BODY_CHARS)
    record.call_id, record.request_id = resp.headers.get(CALL_ID_HEADER), resp.headers.get(REQUEST_ID_HEADER)
    record.status = resp.status_code
    doc["response"] = {"status": resp.status_code, "reason": resp.reason_phrase,
                       "headers": dict(resp.headers), "body": payload}
    doc.data.update(latency_ms=latency_ms, call_id=record.call_id, request_id=record.request_id)
    if isinstance(payload, dict) and isinstance(payload.get("usage"), dict):
        record.usage = payload["usage"]
    record.cause = None
    if resp.status_code != 200:
        message = error_text(payload, raw)
        record.cause = one_line(f"POST {url}: HTTP {resp.status_code}: {message}"
                                f"{_refusal_hint(resp.status_code, message, key_env)}")
    elif completion_text(payload) is None:
        record.cause = f"POST {url}: HTTP 200 but the body has no completion (choices[0].message.content)"
    elif not record.request_id:
        record.cause = (f"POST {url}: HTTP 200 but no {REQUEST_ID_HEADER} header: the gateway's logger is "
                        "not this repository's, or its pre-call hook did not run (nothing to find in the "
                        "database)")
    record.passed = record.cause is None
    return record


def read_events(resp: httpx.Response, t0: float) -> tuple[list[dict[str, Any]], float | None]:
    """The SSE ``data:`` events as they arrived, each with its time since the request was sent, and the
    time to the first content delta."""
    events: list[dict[str, Any]] = []
    first_token_ms: float | None = None
    for line in resp.iter_lines():
        if not line.startswith("data:"):
            continue
        data = line[5:].strip()
        at_ms = round((time.perf_counter() - t0) * 1000, 1)
        try:
            parsed: object = json.loads(data) if data != "[DONE]" else "[DONE]"
        except ValueError:
            parsed = clip(data, 500)
        choices = parsed.get("choices") or [] if isinstance(parsed, dict) else []
        if first_token_ms is None and any(
                isinstance(c, dict) and (c.get("delta") or {}).get("content") for c in choices):
            first_token_ms = at_ms
        events.append({"at_ms": at_ms, "data": parsed})
    return events, first_token_ms


def assemble(events: list[dict[str, Any]]) -> tuple[str, dict[str, Any] | None, str | None]:
    """(completion text, usage chunk, finish reason) of a chat completion stream."""
    text, usage, finish = [], None, None
    for event in events:
        chunk = event["data"]
        if not isinstance(chunk, dict):
            continue
        if isinstance(chunk.get("usage"), dict):
            usage = chunk["usage"]
        for choice in chunk.get("choices") or []:
            if isinstance(choice, dict):
                text.append(str((choice.get("delta") or {}).get("content") or ""))
                finish = choice.get("finish_reason") or finish
    return "".join(text), usage, finish


def streamed_call(target: Target, client: httpx.Client, doc: Any) -> CallRecord:
    url = str(target.vars["gateway_url"]).rstrip("/") + "/v1/chat/completions"
    body = json.dumps(stream_body(target), separators=(",", ":"))
    key_env = str(target.vars["master_key_env"])
    sent_at = _now()
    doc["request"] = _request_doc(url, body, key_env, sent_at, stream=True)
    record = CallRecord(passed=False, call_id=None, status=None, sent_at=sent_at, cause="request not sent",
                        kind="stream")
    t0 = time.perf_counter()
    try:
        with failing_as(f"POST {url} (stream)"):
            headers = {"Content-Type": "application/json", "Authorization": f"Bearer {target.master_key}"}
            with client.stream("POST", url, content=body, headers=headers) as resp:
                if resp.status_code != 200:
                    resp.read()
                    events, first_ms = [], None
                else:
                    events, first_ms = read_events(resp, t0)
    except CheckFailure as exc:
        record.cause = doc["error"] = str(exc)
        return record
    total_ms = round((time.perf_counter() - t0) * 1000, 1)
    record.status = resp.status_code
    record.call_id, record.request_id = resp.headers.get(CALL_ID_HEADER), resp.headers.get(REQUEST_ID_HEADER)
    text, usage, finish = assemble(events)
    record.usage = dict(usage or {}, completion=text) if usage else None
    done = bool(events) and events[-1]["data"] == "[DONE]"
    doc["response"] = {"status": resp.status_code, "headers": dict(resp.headers),
                       "events": events[:MAX_EVENTS_KEPT], "events_received": len(events)}
    if resp.status_code != 200:
        doc["response"]["body"] = clip(resp.text, MAX_BODY_CHARS)
    doc.data.update(call_id=record.call_id, request_id=record.request_id, completion=text, usage=usage,
               finish_reason=finish, done_marker=done, time_to_first_token_ms=first_ms, total_ms=total_ms)
    record.cause = None
    content_type = resp.headers.get("content-type", "")
    if resp.status_code != 200:
        try:
            message = error_text(json.loads(resp.text), resp.text)
        except ValueError:
            message = clip(resp.text, 200)
        record.cause = one_line(f"POST {url} (stream): HTTP {resp.status_code}: {message}"
                                f"{_refusal_hint(resp.status_code, message, key_env)}")
    elif not content_type.startswith("text/event-stream"):
        record.cause = f"POST {url} (stream): HTTP 200, content-type {content_type!r}, not text/event-stream"
    elif errors := [e["data"]["error"] for e in events
                    if isinstance(e["data"], dict) and "error" in e["data"]]:
        record.cause = one_line(f"POST {url} (stream): the stream carried an error: {errors[0]}")
    elif not text.strip():
        record.cause = f"POST {url} (stream): {len(events)} event(s) but no content delta (empty completion)"
    elif not done:
        record.cause = f"POST {url} (stream): the stream ended without data: [DONE] ({len(events)} events)"
    elif not usage or not usage.get("total_tokens"):
        record.cause = (f"POST {url} (stream): no usage chunk although stream_options.include_usage was sent")
    elif not record.request_id:
        record.cause = f"POST {url} (stream): no {REQUEST_ID_HEADER} header (nothing to find in the database)"
    record.passed = record.cause is None
    return record


def make_calls(target: Target, http: Lazy[httpx.Client]) -> RunbookCalls:
    """The runbook call, plain then streamed (session fixture ``runbook_calls``, acceptance/conftest.py)."""
    plain_doc, stream_doc = (Document(name, "json", CHECK.id) for name in CHECK.artifacts)
    client = http.get()
    calls = {"plain": plain_call(target, client, plain_doc),
             "stream": streamed_call(target, client, stream_doc)}
    return RunbookCalls(calls, [plain_doc, stream_doc])


def test_chat_call(runbook_calls: RunbookCalls, evidence: CheckResult) -> None:
    plain_doc, stream_doc = runbook_calls.documents
    for doc in runbook_calls.documents:
        evidence.adopt(doc)
    plain, stream = runbook_calls.calls["plain"], runbook_calls.calls["stream"]
    evidence.details.update(
        status=plain.status, call_id=plain.call_id, request_id=plain.request_id,
        latency_ms=plain_doc.data.get("latency_ms"),
        overhead_ms_reported=((plain_doc.data.get("response") or {}).get("headers") or {}).get(
            "x-litellm-overhead-duration-ms"),
        stream_status=stream.status, stream_request_id=stream.request_id,
        stream_time_to_first_token_ms=stream_doc.data.get("time_to_first_token_ms"),
        stream_events=stream_doc.data.get("response", {}).get("events_received"))
    causes = [c.cause for c in (plain, stream) if c.cause]
    if causes:
        raise CheckFailure("; ".join(causes))
