"""Check 3: the runbook's curl call, made with httpx, returns HTTP 200 with a completion.

Artifact chat_call.json: the request (Authorization redacted), the equivalent curl line (the key as
``${ENV_NAME}``, so it can be pasted without the secret ever being written), status, headers
(``x-litellm-call-id`` is the id checks 4–5 look for), body and latency.
"""
from __future__ import annotations

import json
import shlex
import time
from datetime import datetime, timezone

import httpx
import pytest

from fixtures.context import CallRecord, CheckEvidence, RunContext
from fixtures.errors import CheckFailure, failing_as, one_line
from fixtures.inventory import Target
from fixtures.lazy import Lazy

pytestmark = pytest.mark.check("chat_call")

CALL_ID_HEADER = "x-litellm-call-id"
MAX_BODY_CHARS = 20_000


def runbook_body(target: Target) -> dict:
    return {"model": str(target.vars.get("chat_model", "gpt-4o-mini")),
            "messages": [{"role": "user", "content": "hello"}]}


def curl_line(url: str, body: str, key_env: str) -> str:
    return (f"curl -sS -X POST {shlex.quote(url)} -H 'Content-Type: application/json' "
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
    return raw[:200]


def test_chat_call(target: Target, http: Lazy[httpx.Client], run: RunContext, evidence: CheckEvidence) -> None:
    doc = evidence.json("chat_call.json")
    url = str(target.vars["gateway_url"]).rstrip("/") + "/v1/chat/completions"
    body = json.dumps(runbook_body(target), separators=(",", ":"))
    key_env = str(target.vars["master_key_env"])
    sent_at = datetime.now(timezone.utc).isoformat(timespec="milliseconds")
    doc["request"] = {"method": "POST", "url": url, "sent_at": sent_at,
                      "headers": {"Content-Type": "application/json", "Authorization": "Bearer ***"},
                      "body": json.loads(body)}
    doc["curl"] = curl_line(url, body, key_env)
    run.call = CallRecord(passed=False, call_id=None, status=None, sent_at=sent_at, cause="request not sent")

    client = http.get()
    t0 = time.perf_counter()
    try:
        with failing_as(f"POST {url}"):
            resp = client.post(url, content=body, headers={"Content-Type": "application/json",
                                                          "Authorization": f"Bearer {target.master_key}"})
    except CheckFailure as exc:
        run.call.cause = str(exc)
        doc["error"] = str(exc)
        doc["latency_ms"] = round((time.perf_counter() - t0) * 1000, 1)
        raise
    latency_ms = round((time.perf_counter() - t0) * 1000, 1)
    raw = resp.text
    try:
        payload: object = resp.json()
    except ValueError:
        payload = raw[:MAX_BODY_CHARS]
    call_id = resp.headers.get(CALL_ID_HEADER)
    doc["response"] = {"status": resp.status_code, "reason": resp.reason_phrase,
                       "headers": dict(resp.headers), "body": payload}
    doc["latency_ms"] = latency_ms
    doc["call_id"] = call_id
    evidence.details.update(status=resp.status_code, call_id=call_id, latency_ms=latency_ms,
                            overhead_ms_reported=resp.headers.get("x-litellm-overhead-duration-ms"))

    cause = None
    if resp.status_code != 200:
        message = error_text(payload, raw)
        hint = ""
        if resp.status_code in (401, 403) or (resp.status_code == 400 and "No connected db" in message):
            # LiteLLM without its own key database answers a key other than the master key with 400
            hint = f" (the gateway refused the key from {key_env}: is it the gateway's master key?)"
        cause = one_line(f"POST {url}: HTTP {resp.status_code}: {message}{hint}")
    elif completion_text(payload) is None:
        cause = f"POST {url}: HTTP 200 but the body has no completion (choices[0].message.content)"
    elif not call_id:
        cause = f"POST {url}: HTTP 200 but no {CALL_ID_HEADER} header (nothing to find in the database)"
    run.call = CallRecord(passed=cause is None, call_id=call_id, status=resp.status_code, sent_at=sent_at,
                          cause=cause)
    if cause:
        raise CheckFailure(cause)
