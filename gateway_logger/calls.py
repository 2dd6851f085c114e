"""What the callback keeps of a LiteLLM call (``capture``: references only, it runs on LiteLLM's event
loop), and the gateway's own id of each HTTP request (issued by the pre-call hook, signed per process)."""
from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from collections.abc import Mapping
from typing import Any

#: where the pre-call hook puts the gateway's own id of an HTTP request (LiteLLM carries the request's
#: metadata through retries and into every callback of that request)
REQUEST_ID_KEY = "poc1_gateway_request_id"
#: the response header that tells the client that id (the suite finds its own rows by it)
REQUEST_ID_HEADER = "x-poc1-request-id"
#: per process: signs the ids this process issued, so a client that puts a value under
#: REQUEST_ID_KEY in its own request metadata cannot make two calls one row
_ID_KEY = secrets.token_bytes(32)


def _id_tag(nonce: str) -> str:
    return hmac.new(_ID_KEY, nonce.encode(), hashlib.sha256).hexdigest()[:16]


def new_request_id() -> str:
    """``gw-<12 hex: ms since the epoch><20 hex random>-<16 hex tag>``: unique per HTTP request,
    unguessable (80 random bits), checkable here. The time is when the gateway took the request: every
    event of the request, and a replay of its record, carry it, so the partitioned layout's
    ``created_at`` (``bulk.request_time``) is the same for all of them."""
    nonce = f"{time.time_ns() // 1_000_000:012x}{secrets.token_hex(10)}"
    return f"gw-{nonce}-{_id_tag(nonce)}"


def request_id_time(value: Any) -> float | None:
    """The epoch seconds a ``new_request_id`` id carries (None if not of that shape; an id issued before
    the time was put in it gives a meaningless time: ``bulk.request_time`` checks it against the call)."""
    if not isinstance(value, str) or len(value) != 52 or not value.startswith("gw-"):
        return None
    try:
        return int(value[3:15], 16) / 1000.0
    except ValueError:
        return None


def issued_request_id(value: Any) -> str | None:
    """``value`` if this process issued it, else None (absent, or put there by a client)."""
    if not isinstance(value, str) or len(value) != 52 or not value.startswith("gw-"):
        return None
    nonce, tag = value[3:35], value[36:]
    return value if hmac.compare_digest(_id_tag(nonce), tag) else None


def _request_metadata(kwargs: Mapping[str, Any]) -> Mapping[str, Any]:
    md = (kwargs.get("litellm_params") or {}).get("metadata")
    return md if isinstance(md, Mapping) else {}


def _asked_upstream_usage(kwargs: Mapping[str, Any]) -> bool:
    """Whether the provider was asked for a usage chunk (LiteLLM asks on its own for chat streams)."""
    options = (kwargs.get("optional_params") or {}).get("stream_options")
    return isinstance(options, Mapping) and options.get("include_usage") is True


def capture(kwargs: Mapping[str, Any], failed: bool) -> dict[str, Any]:
    """What the callback keeps: references only (cheap: it runs on LiteLLM's event loop)."""
    litellm_params = kwargs.get("litellm_params") or {}
    server_request = litellm_params.get("proxy_server_request") or {}
    md = _request_metadata(kwargs)
    return {
        "slo": kwargs.get("standard_logging_object") or {},
        "body": server_request.get("body") if isinstance(server_request, Mapping) else None,
        "exception": kwargs.get("exception") if failed else None,
        "failed": failed,
        "call_id": kwargs.get("litellm_call_id"),
        "request_id": issued_request_id(md.get(REQUEST_ID_KEY)),
        "attempted_retries": md.get("attempted_retries"),
        "client_disconnected": md.get("client_disconnected") is True,
        "upstream_usage_asked": _asked_upstream_usage(kwargs),
        "model": kwargs.get("model"),
        "received": time.time(),
    }
