"""From a captured call to one storable record ``{"request": {...}, "response": {...}}`` (the columns of
db_init's ``Request`` and ``Response``): what is queued, spooled and written. Also the few rules about
rows the writer needs: which of two records of one request wins, a row without its documents."""
from __future__ import annotations

import hashlib
import math
import sys
from collections.abc import Iterable, Mapping
from datetime import datetime, timezone
from typing import Any, NamedTuple

import db_init
from gateway_logger.calls import new_request_id
from gateway_logger.documents import (
    NOTES_KEY,
    clean_text,
    client_body,
    cut_document,
    jsonable,
    storable,
    summarize_embeddings,
)

Request, Response = db_init.Request, db_init.Response

NO_KEY, INVALID_KEY = "none", "invalid"
#: LiteLLM's (nginx's) status for a request whose client went away before the answer was complete
CLIENT_CLOSED = 499


def _limits(model: type) -> dict[str, int]:
    return {c.name: c.type.length for c in model.__table__.columns if getattr(c.type, "length", None)}


LIMITS = {"request": _limits(Request), "response": _limits(Response)}


def _int(value: Any) -> int | None:
    try:
        n = int(value)
    except (TypeError, ValueError):
        return None
    return n if -(2**31) <= n < 2**31 else None


def _epoch(value: Any) -> float | None:
    if isinstance(value, (int, float)) and math.isfinite(value):
        return float(value)
    if isinstance(value, datetime):
        return value.timestamp()
    return None


def _cost(value: Any) -> str | None:
    if not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return f"{value:.12f}".rstrip("0").rstrip(".") or "0"


def status_of(captured: Mapping[str, Any]) -> int:
    """The HTTP status the client got, as LiteLLM maps it (uncoded auth failures answer 401; a client that
    left a stream midway is LiteLLM's 499, whichever event reports it)."""
    slo = captured.get("slo") or {}
    if captured.get("client_disconnected") or \
            _int((slo.get("error_information") or {}).get("error_code")) == CLIENT_CLOSED:
        return CLIENT_CLOSED
    if not captured.get("failed"):
        return 200
    exc = captured.get("exception")
    for attr in ("status_code", "code"):
        code = _int(getattr(exc, attr, None))
        if code and 100 <= code <= 599:
            return code
    code = _int((slo.get("error_information") or {}).get("error_code"))
    if code and 100 <= code <= 599:
        return code
    if not (slo.get("metadata") or {}).get("user_api_key_hash"):
        return 401  # never authenticated: LiteLLM turns such a bare exception into 401
    return 500


def _api_key_marker(captured: Mapping[str, Any], status: int) -> str:
    """LiteLLM's key hash for an authenticated call; a fixed marker otherwise (never the raw key)."""
    key_hash = ((captured.get("slo") or {}).get("metadata") or {}).get("user_api_key_hash")
    if not key_hash:
        return NO_KEY
    exc_type = getattr(captured.get("exception"), "type", "") or ""
    exc_type = str(getattr(exc_type, "value", exc_type))  # ProxyErrorTypes is an enum
    if status in (401, 403) or exc_type in ("auth_error", "no_db_connection"):
        return INVALID_KEY
    return str(key_hash)


def _payload(captured: Mapping[str, Any], size: list[int]) -> Any:
    body = captured.get("body")
    if isinstance(body, Mapping):
        return storable(client_body(body), size)
    slo = captured.get("slo") or {}  # auth failures come without the body: rebuild it from the payload
    rebuilt: dict[str, Any] = {"model": slo.get("model_group") or captured.get("model") or slo.get("model")}
    if slo.get("messages") is not None:
        rebuilt["messages"] = slo.get("messages")
    rebuilt.update(slo.get("model_parameters") or {})
    return storable(rebuilt, size)


def _content(captured: Mapping[str, Any], size: list[int]) -> Any:
    slo = captured.get("slo") or {}
    if not captured.get("failed"):
        doc = storable(summarize_embeddings(slo.get("response")), size)
    else:
        info = slo.get("error_information") or {}
        exc = captured.get("exception")
        doc = jsonable(size=size, obj={"error": {
            "message": slo.get("error_str") or info.get("error_message") or (str(exc) if exc else None),
            "class": info.get("error_class") or (type(exc).__name__ if exc else None),
            "code": info.get("error_code") or None,
            "type": getattr(getattr(exc, "type", None), "value", getattr(exc, "type", None)),
            "llm_provider": info.get("llm_provider") or None,
        }})
    notes = call_notes(captured)
    if notes and isinstance(doc, dict):
        doc = {**doc, NOTES_KEY: notes}  # a copy: the document may be LiteLLM's own (``storable``)
    elif notes:
        doc = {"response": doc, NOTES_KEY: notes}
    return doc


def call_notes(captured: Mapping[str, Any]) -> dict[str, Any]:
    """Facts about how the call went that the seed's columns cannot hold: a stream's time to first
    token and where its usage came from, the attempts LiteLLM made, a client that left midway."""
    slo = captured.get("slo") or {}
    notes: dict[str, Any] = {}
    if slo.get("stream") is True or (captured.get("body") or {}).get("stream") is True:
        start, first = _epoch(slo.get("startTime")), _epoch(slo.get("completionStartTime"))
        notes["stream"] = True
        if start is not None and first is not None and not captured.get("failed"):
            notes["time_to_first_token_ms"] = round((first - start) * 1000, 1)
        if not captured.get("failed"):
            # the provider's usage chunk arrives last: a stream that ran to its end, asked for it, had it
            complete = captured.get("upstream_usage_asked") and not captured.get("client_disconnected")
            notes["usage_source"] = "provider" if complete else "counted"
    retries = _int(captured.get("attempted_retries"))
    if retries:
        notes["attempts"] = retries + 1
    if captured.get("client_disconnected"):
        notes["client_disconnected"] = True
    return notes


def _scalar(value: Any) -> Any:
    kind = type(value)
    if kind is str:
        return clean_text(value)
    if value is None or kind is int or kind is bool:
        return value
    return jsonable(value)


def _scalars(values: dict[str, Any]) -> dict[str, Any]:
    """Column values made storable one by one (a column named api_key is not a secret to mask)."""
    return {k: _scalar(v) for k, v in values.items()}


def _truncate(values: dict[str, Any], table: str, cleaned: bool = False) -> dict[str, Any]:
    """Strings cut to their column's length (made clean text first unless ``cleaned``)."""
    for name, limit in LIMITS[table].items():
        v = values.get(name)
        if isinstance(v, str) and (not cleaned or len(v) > limit):
            values[name] = (v if cleaned else clean_text(v))[:limit]
    return values


def normalize(captured: Mapping[str, Any]) -> dict[str, Any]:
    """A captured call as one JSON-safe record {request, response}: what is queued, spooled, written."""
    return normalize_sized(captured)[0]


#: bytes a row takes beyond its two documents (columns, keys), for the byte budgets
ROW_OVERHEAD = 512


def normalize_sized(captured: Mapping[str, Any],
                    document_max: int | None = None) -> tuple[dict[str, Any], int]:
    """``normalize`` plus the record's approximate size in bytes; a document (payload or content) larger
    than ``document_max`` is stored cut (``cut_document``)."""
    slo = captured.get("slo") or {}
    md = slo.get("metadata") or {}
    body = captured.get("body") if isinstance(captured.get("body"), Mapping) else {}
    status = status_of(captured)
    start, end = _epoch(slo.get("startTime")), _epoch(slo.get("endTime"))
    response = slo.get("response") if isinstance(slo.get("response"), Mapping) else {}
    call_id = slo.get("litellm_call_id") or captured.get("call_id") or ""
    req = _scalars({
        # one row per HTTP request: the id the pre-call hook gave it; a call that failed before the hook
        # (authentication) is one event, so a fresh id is as good
        "request_id": captured.get("request_id") or new_request_id(),
        "call_id": storable_call_id(str(call_id)),
        "route": md.get("user_api_key_request_route"),
        "model": slo.get("model_group") or body.get("model") or captured.get("model") or slo.get("model"),
        "status_code": status,
        "user_id": slo.get("end_user") or md.get("user_api_key_user_id"),
        "api_key": _api_key_marker(captured, status),
        "start_time": start,
        "end_time": end if end is not None else captured.get("received"),
    })
    payload_size, content_size = [0], [0]
    req["payload"] = _payload(captured, payload_size)
    tokens = {name: _int(slo.get(name)) for name in ("prompt_tokens", "completion_tokens", "total_tokens")}
    cost = slo.get("response_cost")
    if not tokens["total_tokens"] and (counted := count_stream_usage(captured)) is not None:
        tokens, cost = counted
    resp = _scalars({
        "latency_ms": _int(round((end - start) * 1000)) if start is not None and end is not None else None,
        **tokens,
        "cost": _cost(cost),
        "response_model": response.get("model") or slo.get("model"),
    })
    resp["content"] = _content(captured, content_size)
    for part, key, size in ((req, "payload", payload_size), (resp, "content", content_size)):
        if document_max is not None and size[0] > document_max:
            part[key] = cut_document(part[key], document_max)
            size[0] = min(size[0], document_max)
    record = {"request": _truncate(req, "request", cleaned=True),
              "response": _truncate(resp, "response", cleaned=True)}
    return record, payload_size[0] + content_size[0] + ROW_OVERHEAD


def _answer_text(response: Any) -> str:
    """The text of an answer's choices (a chat message's content or a completion's text)."""
    choices = response.get("choices") if isinstance(response, Mapping) else None
    texts = []
    for choice in choices if isinstance(choices, list) else []:
        message = choice.get("message") if isinstance(choice, Mapping) else None
        text = message.get("content") if isinstance(message, Mapping) else None
        text = choice.get("text") if text is None and isinstance(choice, Mapping) else text
        texts.append(text if isinstance(text, str) else "")
    return "".join(texts)


def count_stream_usage(captured: Mapping[str, Any]) -> tuple[dict[str, int], float | None] | None:
    """Tokens and cost of a finished stream that LiteLLM reports as zero tokens: a text-completion stream
    whose client asked for no usage (LiteLLM asks the provider only for chat streams, and does not count
    these). Counted with LiteLLM's tokenizer, as LiteLLM counts a chat stream cut short; None if not such
    a stream, or LiteLLM (already loaded in the gateway; never imported here) is not there."""
    slo = captured.get("slo") or {}
    body = captured.get("body") if isinstance(captured.get("body"), Mapping) else {}
    litellm = sys.modules.get("litellm")
    streamed = slo.get("stream") is True or body.get("stream") is True
    if captured.get("failed") or litellm is None or not streamed:
        return None
    model = str(slo.get("model") or body.get("model") or "")
    prompt = body.get("prompt")
    try:
        if isinstance(prompt, str) or (isinstance(prompt, list) and all(isinstance(p, str) for p in prompt)):
            prompt_tokens = int(litellm.token_counter(model=model, text=prompt))
        elif isinstance(body.get("messages"), list):
            prompt_tokens = int(litellm.token_counter(model=model, messages=body["messages"]))
        else:
            return None
        completion_tokens = int(litellm.token_counter(model=model, text=_answer_text(slo.get("response")),
                                                      count_response_tokens=True))
    except Exception:
        return None
    try:
        cost: float | None = sum(litellm.cost_per_token(model=model, prompt_tokens=prompt_tokens,
                                                        completion_tokens=completion_tokens))
    except Exception:  # a model without a price: tokens, but no cost
        cost = None
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}, cost


def storable_call_id(call_id: str) -> str:
    """The call id as the column takes it. LiteLLM accepts client ids up to the column's length; a longer
    one (never seen) keeps its head and gets its sha256 appended, so two such ids never become one."""
    if len(call_id) <= db_init.CALL_ID_MAX:
        return call_id
    digest = hashlib.sha256(call_id.encode("utf-8", "replace")).hexdigest()
    return f"{call_id[:db_init.CALL_ID_MAX - 72]}...sha256:{digest}"


def degrade(record: Mapping[str, Any], cause: str) -> dict[str, Any]:
    """The same row with the documents replaced: keeps the fact of the call when its body cannot be stored."""
    marker = {"gateway_logger": f"document not storable: {clean_text(cause)[:300]}"}
    req = {k: (clean_text(v) if isinstance(v, str) else v) for k, v in record["request"].items()}
    resp = {k: (clean_text(v) if isinstance(v, str) else v) for k, v in record["response"].items()}
    req["payload"], resp["content"] = marker, marker
    for name in ("status_code", "latency_ms", "prompt_tokens", "completion_tokens", "total_tokens"):
        for part in (req, resp):
            if name in part:
                part[name] = _int(part[name]) if name != "status_code" else (_int(part[name]) or 0)
    return {"request": _truncate(req, "request"), "response": _truncate(resp, "response")}


def utc_datetime(epoch: Any) -> datetime | None:
    return datetime.fromtimestamp(epoch, timezone.utc) if isinstance(epoch, (int, float)) else None


#: HTTP statuses from here on are failures (a 4xx/5xx answer, or 0 for a row rebuilt after an error)
FAILED_FROM = 400


def succeeded(request: Mapping[str, Any]) -> bool:
    status = request.get("status_code")
    return isinstance(status, int) and 0 < status < FAILED_FROM


def outcome_per_call(records: Iterable[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """One record per call id: the first, unless a later one is the success of a call first logged as
    failed (a retried attempt). Two records for one id in one INSERT would link two responses to it."""
    chosen: dict[str, dict[str, Any]] = {}
    for r in records:
        rid = r["request"]["request_id"]
        kept = chosen.get(rid)
        if kept is None or (succeeded(r["request"]) and not succeeded(kept["request"])):
            chosen[rid] = r
    return chosen


class Written(NamedTuple):
    """What one transaction did with its records."""

    inserted: int
    replaced: int  #: failures of earlier events replaced by this success
    duplicate: int  #: already logged with this outcome (a replay), or repeated within the batch
