"""Documents (a request's payload, a response's content) made storable: JSON types only, clean text,
secrets masked, LiteLLM's own keys removed, embedding vectors replaced by their digest, and a document too
big for a row cut to its head, its size and its sha256."""
from __future__ import annotations

import base64
import hashlib
import json
import math
import re
import struct
from collections.abc import Mapping
from datetime import datetime
from typing import Any

#: keys LiteLLM injects into the request body (``metadata`` carries headers and key details)
INJECTED_BODY_KEYS = frozenset({"metadata", "litellm_metadata", "litellm_call_id", "litellm_trace_id",
                                "proxy_server_request", "secret_fields"})
#: keys whose values are credentials wherever they appear in a payload
SECRET_KEYS = frozenset({"authorization", "proxy-authorization", "api_key", "api-key", "x-api-key",
                         "apikey", "password", "client_secret", "secret", "access_token",
                         "refresh_token", "azure_ad_token", "aws_secret_access_key", "cookie",
                         "x-litellm-api-key"})
MAX_DEPTH = 40


def clean_text(s: str) -> str:
    """PostgreSQL rejects NUL in text and JSONB, and psycopg2 cannot encode lone surrogates."""
    if s.isascii():
        return s.replace("\x00", "\ufffd") if "\x00" in s else s
    if "\x00" in s:
        s = s.replace("\x00", "\ufffd")
    try:
        s.encode("utf-8")
    except UnicodeEncodeError:
        s = s.encode("utf-8", "replace").decode("utf-8")
    return s


def jsonable(obj: Any, depth: int = 0, size: list[int] | None = None) -> Any:
    """A storable copy: JSON types only, clean strings, no NaN/inf (JSONB rejects them), secrets masked.

    ``size`` (a one-item list) accumulates about how many bytes the copy takes as JSON: the byte budgets
    need it, and counting while copying is cheaper than serializing again."""
    if obj is None or isinstance(obj, (bool, int, float)):
        if size is not None:
            size[0] += 8
        if isinstance(obj, float) and not math.isfinite(obj):
            return str(obj)
        return obj
    if isinstance(obj, str):
        text = clean_text(obj)
        if size is not None:
            size[0] += 2 + (len(text) if text.isascii() else len(text.encode("utf-8")))
        return text
    if depth >= MAX_DEPTH:
        return jsonable(str(obj)[:200], depth, size)
    if isinstance(obj, Mapping):
        out = {}
        for k, v in list(obj.items()):
            key = jsonable(str(k), depth, size)
            out[key] = "***" if key.lower() in SECRET_KEYS and v else jsonable(v, depth + 1, size)
        return out
    if isinstance(obj, (list, tuple, set, frozenset)):
        if size is not None:
            size[0] += 2 + len(obj)
        return [jsonable(v, depth + 1, size) for v in list(obj)]
    if isinstance(obj, datetime):
        return jsonable(obj.isoformat(), depth, size)
    dump = getattr(obj, "model_dump", None)
    if callable(dump):
        try:
            return jsonable(dump(), depth + 1, size)
        except Exception:
            pass
    return jsonable(str(obj), depth, size)


#: compact JSON text of a storable document (NaN refused): the check in ``storable`` and the writers' text
compact_json = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode
#: a key of SECRET_KEYS anywhere in a document's JSON text (on the lowered text when it is not ASCII:
#: ``str.lower`` folds a few non-ASCII letters to ASCII ones, as ``jsonable``'s comparison does)
_SECRET_KEY_RE = re.compile("\"(?:" + "|".join(re.escape(k) for k in sorted(SECRET_KEYS)) + ')"\\s*:', re.IGNORECASE)


def storable(obj: Any, size: list[int]) -> Any:
    """``jsonable``'s result, cheaply: a document that already is JSON-native (what LiteLLM hands over, nearly
    always) is returned as it is, after one pass of the C JSON encoder proved it needs no copy — no NaN or
    infinity, no type JSON lacks, no NUL, no lone surrogate, no secret key — and gave its size. Anything else
    takes the copying walk. Why: the walk cost ~50 µs of the gateway's CPU per call (cProfile, issue 14); the
    encoder pass costs a few. The caller must not change the returned document (it may be LiteLLM's own)."""
    try:
        text = compact_json(obj)
    except (TypeError, ValueError, RecursionError):
        return jsonable(obj, size=size)
    if text.isascii():
        if "\\u0000" in text or _SECRET_KEY_RE.search(text):
            return jsonable(obj, size=size)
        size[0] += len(text)
        return obj
    if "\\u0000" in text or _SECRET_KEY_RE.search(text.lower()):
        return jsonable(obj, size=size)
    try:
        size[0] += len(text.encode("utf-8"))
    except UnicodeEncodeError:  # a lone surrogate
        return jsonable(obj, size=size)
    return obj


#: LiteLLM's flag on a chat stream whose client asked for no usage: LiteLLM then asks the provider itself
#: (sets ``stream_options.include_usage``) and strips the usage chunk from what the client gets
STRIP_USAGE_KEY = "_litellm_strip_stream_usage"


def client_body(body: Mapping[str, Any]) -> dict[str, Any]:
    """The body as the client sent it: without LiteLLM's own keys, and without the usage request LiteLLM
    added to it (the log must not say the client asked for usage it never got). A client's explicit
    ``include_usage: false`` is not told apart from its absence."""
    out = {k: v for k, v in body.items() if k not in INJECTED_BODY_KEYS}
    options = out.get("stream_options")
    if out.pop(STRIP_USAGE_KEY, None) is True and isinstance(options, Mapping):
        options = {k: v for k, v in options.items() if k != "include_usage"}
        if options:
            out["stream_options"] = options
        else:
            del out["stream_options"]
    return out


def _float32_bytes(vector: Any) -> bytes | None:
    """An embedding as little-endian float32 bytes, from a float list or its base64 form."""
    try:
        if isinstance(vector, str):
            raw = base64.b64decode(vector, validate=True)
            return raw if len(raw) % 4 == 0 else None
        if isinstance(vector, list) and all(isinstance(v, (int, float)) for v in vector):
            return struct.pack(f"<{len(vector)}f", *vector)
    except (ValueError, OverflowError, struct.error):
        pass
    return None


def summarize_embeddings(response: Any) -> Any:
    """An embedding answer without its vectors: each becomes its ``dimensions`` and ``float32_sha256``
    (sha256 of the vector as little-endian float32: the same for a float list and its base64 form).
    Whole vectors are kilobytes per input (1536 floats at OpenAI) and thousands of inputs per call: too
    big for every row and for the spool; the digest still tells which vector the client got."""
    data = response.get("data") if isinstance(response, Mapping) else None
    if not isinstance(data, list) or response.get("object") != "list":
        return response
    items = []
    for item in data:
        raw = _float32_bytes(item.get("embedding")) if isinstance(item, Mapping) else None
        if raw is None:
            items.append(item)
            continue
        items.append({**{k: v for k, v in item.items() if k != "embedding"}, "dimensions": len(raw) // 4,
                      "float32_sha256": hashlib.sha256(raw).hexdigest()})
    return {**response, "data": items}


#: the key of the logger's own facts in a response's content document (no column fits them)
NOTES_KEY = "gateway_logger"
#: room left in a cut document for its marker, so that it stays within the limit
CUT_OVERHEAD = 1024
#: marks a document stored cut: {"gateway_logger": {"document_cut": {...}}, "head": "<its first bytes>"}
CUT_KEY = "document_cut"


def is_cut(doc: Any) -> bool:
    return isinstance(doc, dict) and isinstance(doc.get(NOTES_KEY), dict) and CUT_KEY in doc[NOTES_KEY]


def cut_document(doc: Any, limit: int) -> Any:
    """A document too big for a row (a prompt full of base64 images, say): its head, its size and the sha256
    of the whole, all of its compact JSON (UTF-8), so the row keeps what was sent as a fingerprint instead of
    megabytes that would swell every batch past the statement timeout and every spool segment."""
    raw = json.dumps(doc, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
    if len(raw) <= limit:  # the estimate was high: it fits
        return doc
    head = raw[:max(0, limit - CUT_OVERHEAD)].decode("utf-8", "ignore")
    notes = doc.get(NOTES_KEY) if isinstance(doc, dict) and isinstance(doc.get(NOTES_KEY), dict) else {}
    cut = {"original_bytes": len(raw), "sha256": hashlib.sha256(raw).hexdigest(),
           "kept_bytes": len(head.encode())}
    return {NOTES_KEY: {**notes, CUT_KEY: cut}, "head": head}
